//! `/documents`: upload, list, show, delete, and a document's jobs.

use axum::Json;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::limits::Reservation;
use super::pages::{List, PageParams, PageRequest};
use super::request::parse_id;
use super::state::AppState;
use crate::auth::AuthUser;
use crate::db::documents;
use crate::db::uploads::{self, NewDocument};
use crate::events::{DocumentCreated, JobStatusUpdated};
use crate::rag::extract;

/// Keeps the last path component and a sane length; the name is shown to
/// users and cited in answers, never used as a path.
fn clean_filename(raw: Option<&str>) -> String {
    let base = raw
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>();
    if base.is_empty() {
        "upload".into()
    } else {
        base
    }
}

/// Bytes a multipart body may add around the file (boundaries, headers).
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// How far ahead of the bytes that arrived a reservation may grow: twice
/// what arrived, at least `STEP_MIN` and at most `STEP_MAX` more. A client
/// holds budget only for bytes it sent (at most about twice, and `STEP_MAX`
/// more), never for a length it declared.
const STEP_MIN: usize = 64 * 1024;
const STEP_MAX: usize = 4 * 1024 * 1024;

/// The buffer (and reservation) for `needed` bytes, capped at `cap`.
fn next_capacity(needed: usize, cap: usize) -> usize {
    let ahead = needed.clamp(STEP_MIN, STEP_MAX);
    needed.saturating_add(ahead).min(cap).max(needed)
}

pub async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limit = state.max_upload_bytes;
    let mut multipart = multipart?;
    let mut budget = state.limits.uploads.reserve(user.user_id);
    let read = read_file(&mut multipart, &headers, &mut budget, limit).await;
    let (filename, declared, bytes) = match read {
        Ok(file) => file,
        Err(e) => {
            // Read (and discard) the rest in the background so that the
            // client, still sending, gets this answer instead of a reset.
            tokio::spawn(drain(multipart, 2 * limit + MULTIPART_OVERHEAD));
            return Err(e);
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request(format!("{filename} is empty")));
    }
    let mime = extract::detect_mime(&filename, declared.as_deref(), &bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    })?;
    let mut client = state.pool.get().await?;
    let (doc, job) = uploads::create_with_parse_job(
        &mut client,
        NewDocument {
            user_id: user.user_id,
            filename: &filename,
            mime_type: mime,
            content: bytes::Bytes::from(bytes),
            max_retries: state.max_retries,
            embargo: state.events.embargo(),
        },
    )
    .await?;
    // Stored: the memory is free and so is the budget.
    drop(budget);
    state
        .events
        .emit_payload(user.user_id, &DocumentCreated::from(&doc))
        .await;
    state
        .events
        .emit_payload(user.user_id, &JobStatusUpdated::from(&job))
        .await;
    crate::db::jobs::start(&client, &job).await;
    drop(client);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": doc.id,
            "filename": doc.filename,
            "mime_type": doc.mime_type,
            "size_bytes": doc.size_bytes,
            "status": doc.status,
            "created_at": doc.created_at,
        })),
    ))
}

/// The one `file` field, read chunk by chunk into one buffer that grows
/// only as far as the budget lets it. Public for the fuzz target, which
/// drives it without a database.
pub async fn read_file(
    multipart: &mut Multipart,
    headers: &HeaderMap,
    budget: &mut Reservation<'_>,
    limit: usize,
) -> Result<(String, Option<String>, Vec<u8>), ApiError> {
    // The request's length bounds the file's: a larger one is refused at
    // once, and the buffer never grows past it. Nothing is reserved from it:
    // the budget is taken as bytes arrive.
    let hint = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if hint.is_some_and(|n| n > limit + MULTIPART_OVERHEAD) {
        return Err(ApiError::too_large(limit));
    }
    let cap = hint.map_or(limit, |n| n.min(limit));
    let mut file = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::multipart(e, limit))?
    {
        if field.name() != Some("file") {
            continue; // tolerate extra form fields
        }
        if file.is_some() {
            return Err(ApiError::bad_request("send exactly one `file` field"));
        }
        let name = clean_filename(field.file_name());
        let declared = field.content_type().map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::multipart(e, limit))?
        {
            let needed = bytes.len() + chunk.len();
            if needed > limit {
                return Err(ApiError::too_large(limit));
            }
            if needed > bytes.capacity() {
                let want = next_capacity(needed, cap);
                budget.grow_to(want)?;
                bytes.reserve_exact(want - bytes.len());
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some((name, declared, bytes));
    }
    file.ok_or_else(|| {
        ApiError::bad_request("multipart body has no `file` field (curl -F file=@path)")
    })
}

/// Reads what is left of a refused upload, at most `max` bytes and 30 s.
async fn drain(mut multipart: Multipart, max: usize) {
    let read_all = async {
        let mut seen = 0;
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                seen += chunk.len();
                if seen > max {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), read_all).await;
}

pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let page = PageRequest::parse(List::Documents, user.user_id, query)?;
    let client = state.pool.get().await?;
    let docs = documents::list(&client, user.user_id, &page.keyset).await?;
    Ok(page.answer(&docs, |d| (d.created_at, d.id)))
}

async fn owned(state: &AppState, user: Uuid, id: &str) -> Result<documents::Document, ApiError> {
    let id = parse_id(id, "document")?;
    let client = state.pool.get().await?;
    documents::get(&client, user, id)
        .await?
        .ok_or_else(|| ApiError::not_found("document"))
}

pub async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = owned(&state, user.user_id, &id).await?;
    Ok(Json(serde_json::to_value(doc).expect("serialises")))
}

pub async fn jobs(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = owned(&state, user.user_id, &id).await?;
    let client = state.pool.get().await?;
    let jobs = crate::db::jobs::for_document(&client, user.user_id, doc.id).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

/// `DELETE /documents/{id}`: the document, its jobs and chunks go, and its
/// chunks leave the user's BM25 statistics, in one transaction. No event:
/// the REST answer (and 404 afterwards) is the truth.
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "document")?;
    let mut client = state.pool.get().await?;
    if documents::delete(&mut client, user.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("document"))
    }
}

#[cfg(test)]
mod tests {
    use super::{STEP_MAX, STEP_MIN, clean_filename, next_capacity};

    #[test]
    fn reservations_grow_in_bounded_steps_ahead_of_the_bytes() {
        assert_eq!(next_capacity(1, 10 << 20), 1 + STEP_MIN);
        assert_eq!(next_capacity(1 << 20, 10 << 20), 2 << 20);
        assert_eq!(next_capacity(8 << 20, 100 << 20), (8 << 20) + STEP_MAX);
        // Never past the cap (the declared length, the limit), never below
        // what arrived.
        assert_eq!(next_capacity(5 << 20, 6 << 20), 6 << 20);
        assert_eq!(next_capacity(7, 5), 7);
    }

    #[test]
    fn filenames_are_cleaned() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\docs\\a.pdf")), "a.pdf");
        assert_eq!(clean_filename(Some("  ")), "upload");
        assert_eq!(clean_filename(None), "upload");
        assert_eq!(clean_filename(Some(&"x".repeat(400))).len(), 255);
    }
}
