//! What handlers read off a request besides the state: the bearer token
//! and path ids. Below every file but `error.rs`.

use axum::http::{HeaderMap, header};
use uuid::Uuid;

use super::error::ApiError;

/// `Authorization: Bearer <token>`, if present.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Path ids that are not UUIDs answer 404 like unknown ones.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}
