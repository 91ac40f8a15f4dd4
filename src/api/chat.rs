//! `/conversations`: create, list, and chat with cited answers.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, parse_id};
use crate::auth::AuthUser;
use crate::db::chat;
use crate::events::EventType;

const MAX_CONTENT_CHARS: usize = 16_000;
const PASSAGES: i64 = 5;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    #[serde(default)]
    title: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The body is optional: an empty one means no title.
    let body: NewConversation = if body.iter().all(u8::is_ascii_whitespace) {
        NewConversation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?
    };
    let client = state.pool.get().await?;
    let conv = chat::create_conversation(&client, user.user_id, body.title.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(conv).expect("serialises")),
    ))
}

pub async fn list(State(state): State<AppState>, user: AuthUser) -> Result<Json<Value>, ApiError> {
    let client = state.pool.get().await?;
    let convs = chat::list_conversations(&client, user.user_id).await?;
    Ok(Json(json!({ "conversations": convs })))
}

async fn owned(state: &AppState, user: uuid::Uuid, id: &str) -> Result<uuid::Uuid, ApiError> {
    let id = parse_id(id, "conversation")?;
    let client = state.pool.get().await?;
    if chat::conversation_exists(&client, user, id).await? {
        Ok(id)
    } else {
        Err(ApiError::not_found("conversation"))
    }
}

pub async fn messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = owned(&state, user.user_id, &id).await?;
    let client = state.pool.get().await?;
    let msgs = chat::messages(&client, user.user_id, id).await?;
    Ok(Json(json!({ "messages": msgs })))
}

#[derive(Deserialize)]
pub struct NewMessage {
    content: String,
}

/// Stores the question, creates the assistant's `pending` message, answers
/// from the caller's ingested chunks, and completes it (or marks `error`).
pub async fn post_message(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Json<NewMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let content = body.content.trim();
    if content.is_empty() {
        return Err(ApiError::bad_request("`content` must not be empty"));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(ApiError::bad_request(format!(
            "`content` is longer than {MAX_CONTENT_CHARS} characters"
        )));
    }
    let conv = owned(&state, user.user_id, &id).await?;
    let uid = user.user_id;

    let client = state.pool.get().await?;
    let question = chat::insert_message(&client, uid, conv, "user", content, "completed").await?;
    state
        .events
        .emit(uid, EventType::MessageCreated, question.created_payload())
        .await;
    let pending = chat::insert_message(&client, uid, conv, "assistant", "", "pending").await?;
    state
        .events
        .emit(uid, EventType::MessageCreated, pending.created_payload())
        .await;

    let answered = match chat::search(&client, uid, content, PASSAGES).await {
        Ok(passages) => crate::rag::answer(content, &passages, state.llm.as_ref())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let done = match answered {
        Ok(a) => {
            chat::finish_message(
                &client,
                pending.id,
                "completed",
                &a.content,
                &a.sources_json(),
                None,
            )
            .await?
        }
        Err(e) => {
            tracing::warn!(error = %e, "answering failed");
            chat::finish_message(
                &client,
                pending.id,
                "error",
                "Sorry, I could not answer that.",
                &json!([]),
                Some(&e),
            )
            .await?
        }
    };
    drop(client);
    state
        .events
        .emit(uid, EventType::MessageStatusUpdated, done.status_payload())
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_message": question, "assistant_message": done })),
    ))
}
