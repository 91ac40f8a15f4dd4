//! Cross-origin access for a frontend served from another origin than the
//! API (`serve --cors-origin`): without it a browser lets such a page
//! neither read REST answers nor tell a refused token (401) from a network
//! error before a WebSocket opens. Off by default.
//!
//! Tokens travel in `Authorization` (never cookies), so no credentials
//! mode is needed, and `*` is safe to allow: a foreign page can only send
//! the token it already has.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::ConfigError;

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    Any,
    Origins(Vec<HeaderValue>),
}

impl Cors {
    /// From `--cors-origin` values (or the comma-separated
    /// `RAG_CORS_ORIGINS`); `None` when there are none.
    pub fn parse(values: &[String]) -> Result<Option<Cors>, ConfigError> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Ok(None);
        }
        if values.contains(&"*") {
            return match values.len() {
                1 => Ok(Some(Cors::Any)),
                _ => Err(invalid("\"*\" allows every origin: give it alone".into())),
            };
        }
        let origins = values.iter().map(|v| origin(v)).collect::<Result<_, _>>()?;
        Ok(Some(Cors::Origins(origins)))
    }

    pub fn layer(&self) -> CorsLayer {
        let allow = match self {
            Cors::Any => AllowOrigin::any(),
            Cors::Origins(list) => AllowOrigin::list(list.iter().cloned()),
        };
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            // 429 and 503 say when to come back.
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600))
    }
}

/// One origin as browsers send it: `scheme://host[:port]`, nothing after.
fn origin(v: &str) -> Result<HeaderValue, ConfigError> {
    let bad = |why: &str| invalid(format!("{v:?} {why}"));
    let uri: axum::http::Uri = v
        .parse()
        .map_err(|_| bad("is not an origin like https://app.example.com"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("needs http:// or https://")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(bad("has no host"));
    }
    // `Uri` reads "https://a.example" with the path "/", so the text says
    // whether one was written.
    let after_authority = &v[v.find("://").map_or(0, |i| i + 3)..];
    if after_authority.contains(['/', '?', '#']) {
        return Err(bad(
            "has a path: an origin is scheme://host[:port], e.g. http://localhost:5173",
        ));
    }
    HeaderValue::from_str(&v.to_ascii_lowercase()).map_err(|_| bad("is not a valid header value"))
}

fn invalid(problem: String) -> ConfigError {
    ConfigError::Invalid {
        flag: "--cors-origin",
        var: "RAG_CORS_ORIGINS",
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Option<Cors>, String> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        Cors::parse(&v).map_err(|e| e.to_string())
    }

    #[test]
    fn origins_are_checked_and_named_in_errors() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[" "]).unwrap(), None);
        assert_eq!(parse(&["*"]).unwrap(), Some(Cors::Any));
        assert_eq!(
            parse(&["http://localhost:5173", "https://App.Example.com"]).unwrap(),
            Some(Cors::Origins(vec![
                HeaderValue::from_static("http://localhost:5173"),
                HeaderValue::from_static("https://app.example.com"),
            ]))
        );
        for bad in [
            "localhost:5173",
            "ftp://x.example",
            "http://x.example/",
            "http://x.example/app",
            "http://",
            "*,http://a.example",
        ] {
            let values: Vec<&str> = bad.split(',').collect();
            let err = parse(&values).expect_err(bad);
            assert!(
                err.contains("--cors-origin") && err.contains("RAG_CORS_ORIGINS"),
                "{err}"
            );
        }
    }
}
