//! The REST error shape: `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::db::DbError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("upload is larger than the {limit}-byte limit (RAG_MAX_UPLOAD_BYTES)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        match self.retry_after {
            Some(secs) => {
                (self.status, [(header::RETRY_AFTER, secs.to_string())], body).into_response()
            }
            None => (self.status, body).into_response(),
        }
    }
}

impl ApiError {
    /// A JSON body over axum's default limit.
    pub fn body_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the JSON body is larger than the {JSON_BODY_LIMIT}-byte limit"),
        )
    }

    pub fn query_timeout() -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "query_timeout",
            "the database query took longer than the server's statement timeout \
             (RAG_STATEMENT_TIMEOUT_MS) and was stopped",
        )
    }
}

/// axum's `DefaultBodyLimit` for the JSON endpoints (2 MB).
pub const JSON_BODY_LIMIT: usize = 2_097_152;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        if e.is_forbidden() {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        } else {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "database error while serving a request");
        match e {
            DbError::Pool(_) | DbError::Connect { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable; try again",
            )
            .retry_after(1),
            DbError::Timeout(_) => ApiError::query_timeout(),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal database error",
            ),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::body_too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            // Syntax and data errors (axum says 422 for the latter) alike.
            _ => ApiError::bad_request(e.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large()
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(e: MultipartRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl ApiError {
    pub fn multipart(e: MultipartError, limit: usize) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        }
    }
}
