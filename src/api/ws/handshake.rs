//! The HTTP side of `/ws`: which token a request carries, which subprotocol
//! to select, and whether the request is a valid WebSocket upgrade.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::upgrade::OnUpgrade;

use crate::api::error::ApiError;

/// The token of a `/ws` request, and the bearer subprotocol to select.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    /// The `bearer` subprotocol spelled exactly as the client offered it
    /// (browsers fail the connection on any other spelling), whichever
    /// token won.
    pub protocol: Option<String>,
}

/// The first of `?token=`, `Authorization: Bearer` and the subprotocols
/// `bearer, <jwt>` (in that order) gives the token; the others are ignored.
pub fn credentials(query_token: Option<&str>, headers: &HeaderMap) -> Credentials {
    let protocols: Vec<&str> = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).collect();
    let bearer = protocols
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"));
    let token = query_token
        .filter(|t| !t.is_empty())
        .or_else(|| crate::api::request::bearer(headers))
        .or_else(|| bearer.and_then(|pos| protocols.get(pos + 1).copied()));
    Credentials {
        token: token.map(str::to_string),
        protocol: bearer.map(|pos| protocols[pos].to_string()),
    }
}

/// The comma-separated, trimmed tokens of every `name` header.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// A valid WebSocket upgrade request (RFC 6455 section 4.2.1, over
/// HTTP/1.1). Rejected in the API's error shape: 426 with
/// `Sec-WebSocket-Version: 13` for another version, 400 otherwise.
pub struct Upgrade {
    pub key: HeaderValue,
    pub on_upgrade: OnUpgrade,
}

fn bad(message: &str) -> ApiError {
    ApiError::bad_request(message)
}

/// Why a request is not a valid upgrade, in the API's error shape; a 426
/// names the version this server speaks (RFC 6455 section 4.2.2).
pub struct Rejection(pub ApiError);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let upgrade_required = self.0.status == StatusCode::UPGRADE_REQUIRED;
        let mut r = self.0.into_response();
        if upgrade_required {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        r
    }
}

/// Checks the headers of an upgrade request; the response for the first
/// one at fault.
fn check(headers: &HeaderMap, version: Version) -> Result<HeaderValue, ApiError> {
    if version > Version::HTTP_11 {
        return Err(bad("WebSocket upgrades are served over HTTP/1.1 only"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad("`Connection` header did not include `upgrade`"));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad("`Upgrade` header did not include `websocket`"));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(bad("`Sec-WebSocket-Version` header is missing")),
        Some(v) if v.as_bytes() == b"13" => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "`Sec-WebSocket-Version` is not supported; this server speaks version 13",
            ));
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("`Sec-WebSocket-Key` header is missing"))?;
    match B64.decode(key.as_bytes()) {
        Ok(nonce) if nonce.len() == 16 => Ok(key.clone()),
        _ => Err(bad(
            "`Sec-WebSocket-Key` is not the base64 of 16 bytes (RFC 6455 section 4.1)",
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Rejection> {
        let key = check(&parts.headers, parts.version).map_err(Rejection)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| Rejection(bad("this connection cannot be upgraded")))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_first_token_wins_and_the_offered_subprotocol_is_kept_as_spelled() {
        let proto = headers(&[("sec-websocket-protocol", "Bearer, jwt-p")]);
        assert_eq!(
            credentials(None, &proto),
            Credentials {
                token: Some("jwt-p".into()),
                protocol: Some("Bearer".into())
            }
        );
        let c = credentials(Some("jwt-q"), &proto);
        assert_eq!(c.token.as_deref(), Some("jwt-q"));
        assert_eq!(c.protocol.as_deref(), Some("Bearer"));
        let both = headers(&[
            ("authorization", "Bearer jwt-h"),
            ("sec-websocket-protocol", "chat, BEARER, jwt-p"),
        ]);
        let c = credentials(Some(""), &both);
        assert_eq!(c.token.as_deref(), Some("jwt-h"));
        assert_eq!(c.protocol.as_deref(), Some("BEARER"));
        assert_eq!(credentials(None, &HeaderMap::new()), Credentials::default());
    }

    #[test]
    fn keys_must_be_sixteen_bytes_of_base64() {
        let ok = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
        ];
        let with_key = |key: &str| {
            let mut h = headers(&ok);
            h.insert("sec-websocket-key", key.parse().unwrap());
            check(&h, Version::HTTP_11).map_err(|e| e.status)
        };
        assert!(with_key("dGhlIHNhbXBsZSBub25jZQ==").is_ok());
        assert_eq!(with_key("c2hvcnQ=").unwrap_err(), 400);
        assert_eq!(with_key("not base64!").unwrap_err(), 400);
        let mut h = headers(&ok);
        h.insert("sec-websocket-version", "8".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        let r = Rejection(check(&h, Version::HTTP_11).unwrap_err()).into_response();
        assert_eq!(r.status(), 426);
        assert_eq!(r.headers()["sec-websocket-version"], "13");
    }
}
