//! Small text helpers the subcommands share: loose JSON from the command
//! line, JSON values as plain text, short ids, and the detail of an API
//! error body.

use serde_json::Value;

/// A `KEY=VALUE` value from the command line: JSON when it parses
/// (`3`, `null`, `"3"`), a string otherwise (`parsed`).
pub fn loose_json(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A JSON value as a person reads it: strings without quotes, anything
/// else as JSON.
pub fn value_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The first 8 characters of an id (a UUID's first group).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(end, _)| &id[..end])
}

/// At most `max` characters of `s` on one line, `…` where it was cut.
pub fn snippet(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.replace('\n', " ")
}

/// `code: message` from the API's error body, else the body text, else the
/// status's reason phrase.
pub fn error_detail(reason: &str, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let (Some(code), Some(message)) = (
            v.pointer("/error/code").and_then(Value::as_str),
            v.pointer("/error/message").and_then(Value::as_str),
        )
    {
        return format!("{code}: {message}");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        reason.to_string()
    } else {
        text.chars().take(300).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_error_bodies() {
        let body = br#"{"error":{"code":"unauthorized","message":"token expired"}}"#;
        assert_eq!(
            error_detail("Unauthorized", body),
            "unauthorized: token expired"
        );
        assert_eq!(error_detail("Bad Gateway", b""), "Bad Gateway");
    }

    #[test]
    fn values_as_text_and_short_ids() {
        assert_eq!(value_text(&json!("parsed")), "parsed");
        assert_eq!(value_text(&json!(3)), "3");
        assert_eq!(value_text(&Value::Null), "null");
        assert_eq!(short_id("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"), "0b1c2d3e");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("ééééééééé"), "éééééééé");
        assert_eq!(snippet("a\nbcdef", 4), "a bc…");
    }
}
