//! The REST error shape: `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::db::DbError;
use tokio_postgres::error::SqlState;

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
        let api = match &e {
            DbError::Pool(_) | DbError::Connect { .. } | DbError::MigrateLost(_) => {
                ApiError::db_unavailable()
            }
            DbError::Timeout(_) => ApiError::query_timeout(),
            DbError::Input(m) => ApiError::bad_request(m.clone()),
            DbError::Query(pg) => ApiError::from_query(pg),
            DbError::Url(_) | DbError::Migrate(_) => ApiError::db_internal(),
        };
        if api.status.is_server_error() {
            tracing::error!(error = %e, status = api.status.as_u16(), "database error while serving a request");
        } else {
            tracing::info!(error = %e, status = api.status.as_u16(), "request refused by the database");
        }
        api
    }
}

impl ApiError {
    fn db_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable; try again",
        )
        .retry_after(1)
    }

    fn db_internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal database error",
        )
    }

    /// A failed query by its SQLSTATE class: a conflict with existing rows
    /// (409), a value the database refuses (400), a database that is down,
    /// restarting or overloaded, or a transaction to retry (503); anything
    /// else is a bug (500).
    fn from_query(pg: &tokio_postgres::Error) -> ApiError {
        let Some(code) = pg.code() else {
            // No SQLSTATE: the connection broke, or a row did not convert.
            return if pg.is_closed() || io_source(pg) {
                ApiError::db_unavailable()
            } else {
                ApiError::db_internal()
            };
        };
        match query_class(code) {
            QueryClass::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the change conflicts with the current data; reload and try again",
            ),
            QueryClass::BadInput => {
                ApiError::bad_request("the database refused a value of the request")
            }
            QueryClass::Unavailable => ApiError::db_unavailable(),
            QueryClass::Bug => ApiError::db_internal(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum QueryClass {
    Conflict,
    BadInput,
    Unavailable,
    Bug,
}

fn query_class(code: &SqlState) -> QueryClass {
    let unavailable = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ];
    let conflict = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::EXCLUSION_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
    ];
    match code.code().get(..2) {
        _ if conflict.contains(code) => QueryClass::Conflict,
        _ if unavailable.contains(code) => QueryClass::Unavailable,
        // Data exceptions, and the other integrity violations (NOT NULL, CHECK).
        Some("22" | "23") => QueryClass::BadInput,
        // Connection exceptions; insufficient resources (too many connections, disk full).
        Some("08" | "53") => QueryClass::Unavailable,
        _ => QueryClass::Bug,
    }
}

fn io_source(pg: &tokio_postgres::Error) -> bool {
    std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_statuses() {
        let cases = [
            (SqlState::UNIQUE_VIOLATION, QueryClass::Conflict),
            (SqlState::FOREIGN_KEY_VIOLATION, QueryClass::Conflict),
            (SqlState::NOT_NULL_VIOLATION, QueryClass::BadInput),
            (SqlState::CHECK_VIOLATION, QueryClass::BadInput),
            (SqlState::INVALID_TEXT_REPRESENTATION, QueryClass::BadInput),
            (SqlState::CHARACTER_NOT_IN_REPERTOIRE, QueryClass::BadInput),
            (SqlState::CONNECTION_FAILURE, QueryClass::Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, QueryClass::Unavailable),
            (SqlState::ADMIN_SHUTDOWN, QueryClass::Unavailable),
            (SqlState::T_R_SERIALIZATION_FAILURE, QueryClass::Unavailable),
            (SqlState::UNDEFINED_COLUMN, QueryClass::Bug),
            (SqlState::SYNTAX_ERROR, QueryClass::Bug),
        ];
        for (code, class) in cases {
            assert_eq!(query_class(&code), class, "{}", code.code());
        }
    }
}
