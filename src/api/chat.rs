//! `/conversations`: create, list, and chat with cited answers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::pages::{List, PageParams, PageRequest};
use super::request::parse_id;
use super::shares::SearchPermit;
use super::state::AppState;
use crate::auth::AuthUser;
use crate::db::status::{MessageRole, MessageStatus};
use crate::db::{Aftermath, DbError, chat};
use crate::events::{MessageCreated, MessageStatusUpdated};

const MAX_CONTENT_CHARS: usize = 16_000;
const MAX_TITLE_CHARS: usize = 200;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    #[serde(default)]
    title: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    // The body is optional: an empty one means no title.
    let body: NewConversation = if body.iter().all(u8::is_ascii_whitespace) {
        NewConversation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?
    };
    if let Some(title) = &body.title {
        check_text("title", title, MAX_TITLE_CHARS)?;
    }
    let client = state.pool.get().await?;
    let conv = chat::create_conversation(&client, user.user_id, body.title.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(conv).expect("serialises")),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let page = PageRequest::parse(List::Conversations, user.user_id, query)?;
    let client = state.pool.get().await?;
    let convs = chat::list_conversations(&client, user.user_id, &page.keyset).await?;
    Ok(page.answer(&convs, |c| (c.created_at, c.id)))
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
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = owned(&state, user.user_id, &id).await?;
    let page = PageRequest::parse(List::Messages, id, query)?;
    let client = state.pool.get().await?;
    let msgs = chat::messages(&client, user.user_id, id, &page.keyset).await?;
    Ok(page.answer(&msgs, |m| (m.created_at, m.id)))
}

/// PostgreSQL text cannot hold NUL, so it is refused here, with a reason.
fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not contain NUL (\\u0000) characters"
        )));
    }
    if text.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!(
            "`{field}` is longer than {max_chars} characters"
        )));
    }
    Ok(())
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
    check_text("content", content, MAX_CONTENT_CHARS)?;
    let uid = user.user_id;
    // Before any connection is taken: the search pool bounds how many of
    // them chat holds, so REST keeps the rest; and a user past their share
    // is refused without a query.
    let permit = state.limits.searches.enter(uid).await?;
    let conv = owned(&state, uid, &id).await?;

    let client = state.pool.get().await?;
    let question = chat::insert_message(
        &client,
        uid,
        conv,
        MessageRole::User,
        content,
        MessageStatus::Completed,
    )
    .await?;
    state
        .events
        .emit_payload(uid, &MessageCreated::from(&question))
        .await;
    let pending = chat::insert_message(
        &client,
        uid,
        conv,
        MessageRole::Assistant,
        "",
        MessageStatus::Pending,
    )
    .await?;
    // If the client leaves from here on, the search is cancelled on the
    // server and the pending answer marked `error`.
    let mut guard = state.limits.canceller.guard(client);
    // The permit goes with the connection: given back once the connection
    // is back, after the cancel if the client leaves.
    guard.on_abandon(mark_abandoned(&state, uid, pending.id, permit));
    state
        .events
        .emit_payload(uid, &MessageCreated::from(&pending))
        .await;
    let done = answer(&state, guard.client(), uid, content, pending.id).await;
    drop(guard.finish());
    let done = done?;
    state
        .events
        .emit_payload(uid, &MessageStatusUpdated::from(&done))
        .await;
    if done.error_message.as_deref() == Some(TIMED_OUT) {
        let e = ApiError::query_timeout();
        return Err(ApiError {
            message: format!(
                "{}; your question is saved and its answer marked `error`",
                e.message
            ),
            ..e
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_message": question, "assistant_message": done })),
    ))
}

const TIMED_OUT: &str = "the search took longer than the statement timeout";
const SORRY: &str = "Sorry, I could not answer that.";

/// Searches, answers, and completes the pending message (or marks it `error`).
async fn answer(
    state: &AppState,
    client: &deadpool_postgres::Object,
    uid: Uuid,
    content: &str,
    pending: Uuid,
) -> Result<chat::Message, ApiError> {
    let answered = match super::retrieval::retrieve(state, client, uid, content).await {
        Ok(decision) => {
            tracing::debug!(
                why = decision.why,
                mode = decision.mode.as_str(),
                "retrieved"
            );
            crate::rag::answer(content, &decision, state.llm.as_ref())
                .await
                .map_err(|e| e.to_string())
        }
        Err(DbError::Timeout(_)) => Err(TIMED_OUT.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let done = match answered {
        Ok(a) => {
            chat::finish_message(
                client,
                pending,
                MessageStatus::Completed,
                &a.content,
                &a.sources_json(),
                None,
            )
            .await?
        }
        Err(e) => {
            tracing::warn!(error = %e, "answering failed");
            chat::finish_message(
                client,
                pending,
                MessageStatus::Error,
                SORRY,
                &json!([]),
                Some(&e),
            )
            .await?
        }
    };
    Ok(done)
}

/// Marks the pending answer of an abandoned request `error`, and says so;
/// holds the search's permit until then.
fn mark_abandoned(state: &AppState, uid: Uuid, pending: Uuid, permit: SearchPermit) -> Aftermath {
    let events = state.events.clone();
    Box::new(move |client| {
        Box::pin(async move {
            let _permit = permit;
            let why = "the request ended (the client went away) before the answer was ready";
            match chat::finish_message(
                client,
                pending,
                MessageStatus::Error,
                SORRY,
                &json!([]),
                Some(why),
            )
            .await
            {
                Ok(done) => {
                    events
                        .emit_payload(uid, &MessageStatusUpdated::from(&done))
                        .await
                }
                Err(e) => tracing::warn!(error = %e, "cannot mark an abandoned answer"),
            }
        })
    })
}
