//! `/documents`: upload, list, show, and a document's jobs.

use axum::Json;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::{AppState, parse_id};
use crate::auth::AuthUser;
use crate::db::documents::{self, NewDocument};
use crate::events::EventType;
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

pub async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limit = state.max_upload_bytes;
    let mut multipart = multipart?;
    let mut file: Option<(String, Option<String>, Vec<u8>)> = None;
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
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some((name, declared, bytes));
    }
    let Some((filename, declared, bytes)) = file else {
        return Err(ApiError::bad_request(
            "multipart body has no `file` field (curl -F file=@path)",
        ));
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
    let (doc, job) = documents::create_with_parse_job(
        &mut client,
        NewDocument {
            user_id: user.user_id,
            filename: &filename,
            mime_type: mime,
            content: &bytes,
            max_retries: state.max_retries,
            embargo: state.events.embargo(),
        },
    )
    .await?;
    state
        .events
        .emit(
            user.user_id,
            EventType::DocumentCreated,
            doc.created_payload(),
        )
        .await;
    state
        .events
        .emit(
            user.user_id,
            EventType::JobStatusUpdated,
            job.status_payload(),
        )
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

pub async fn list(State(state): State<AppState>, user: AuthUser) -> Result<Json<Value>, ApiError> {
    let client = state.pool.get().await?;
    let docs = documents::list(&client, user.user_id).await?;
    Ok(Json(json!({ "documents": docs })))
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

#[cfg(test)]
mod tests {
    use super::clean_filename;

    #[test]
    fn filenames_are_cleaned() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\docs\\a.pdf")), "a.pdf");
        assert_eq!(clean_filename(Some("  ")), "upload");
        assert_eq!(clean_filename(None), "upload");
        assert_eq!(clean_filename(Some(&"x".repeat(400))).len(), 255);
    }
}
