//! Conversations and messages (retrieval over chunks is `lexical`).
//! Everything a request names is scoped by `user_id`; `finish_message` acts
//! by message id, on the pending answer the same request has just inserted
//! for its user.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use super::page::Keyset;
use super::status::{MessageRole, MessageStatus};

#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: Uuid,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub role: MessageRole,
    pub content: String,
    pub status: MessageStatus,
    pub sources: Value,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const MESSAGE_COLUMNS: &str = "id, conversation_id, user_id, role, content, status, sources, \
                               error_message, created_at, updated_at";

impl Message {
    pub(crate) fn from_row(r: &Row) -> Message {
        Message {
            id: r.get("id"),
            conversation_id: r.get("conversation_id"),
            user_id: r.get("user_id"),
            role: r.get("role"),
            content: r.get("content"),
            status: r.get("status"),
            sources: r.get("sources"),
            error_message: r.get("error_message"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

pub async fn create_conversation(
    client: &impl GenericClient,
    user_id: Uuid,
    title: Option<&str>,
) -> Result<Conversation, DbError> {
    let row = client
        .query_one(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, $3)
             RETURNING id, title, created_at",
            &[&Uuid::new_v4(), &user_id, &title],
        )
        .await?;
    Ok(Conversation {
        id: row.get(0),
        title: row.get(1),
        created_at: row.get(2),
    })
}

/// One page of the user's conversations, newest first unless `page` says
/// otherwise.
pub async fn list_conversations(
    client: &impl GenericClient,
    user_id: Uuid,
    page: &Keyset,
) -> Result<Vec<Conversation>, DbError> {
    super::query_all(
        client,
        &format!(
            "SELECT id, title, created_at FROM conversations WHERE user_id = $1 {}",
            page.clause(2)
        ),
        &page.params(vec![&user_id]),
        |row| Conversation {
            id: row.get(0),
            title: row.get(1),
            created_at: row.get(2),
        },
    )
    .await
}

pub async fn conversation_exists(
    client: &impl GenericClient,
    user_id: Uuid,
    id: Uuid,
) -> Result<bool, DbError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2",
            &[&id, &user_id],
        )
        .await?;
    Ok(row.is_some())
}

pub async fn insert_message(
    client: &impl GenericClient,
    user_id: Uuid,
    conversation_id: Uuid,
    role: MessageRole,
    content: &str,
    status: MessageStatus,
) -> Result<Message, DbError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp(), clock_timestamp())
                 RETURNING {MESSAGE_COLUMNS}"
            ),
            &[&Uuid::new_v4(), &conversation_id, &user_id, &role, &content, &status],
        )
        .await?;
    Ok(Message::from_row(&row))
}

pub async fn finish_message(
    client: &impl GenericClient,
    id: Uuid,
    status: MessageStatus,
    content: &str,
    sources: &Value,
    error_message: Option<&str>,
) -> Result<Message, DbError> {
    let row = client
        .query_one(
            &format!(
                "UPDATE messages SET status = $2, content = $3, sources = $4, error_message = $5,
                    updated_at = clock_timestamp()
                 WHERE id = $1 RETURNING {MESSAGE_COLUMNS}"
            ),
            &[&id, &status, &content, sources, &error_message],
        )
        .await?;
    Ok(Message::from_row(&row))
}

/// One page of a conversation's messages, oldest first unless `page` says
/// otherwise.
pub async fn messages(
    client: &impl GenericClient,
    user_id: Uuid,
    conversation_id: Uuid,
    page: &Keyset,
) -> Result<Vec<Message>, DbError> {
    super::query_all(
        client,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND user_id = $2 {}",
            page.clause(3)
        ),
        &page.params(vec![&conversation_id, &user_id]),
        Message::from_row,
    )
    .await
}
