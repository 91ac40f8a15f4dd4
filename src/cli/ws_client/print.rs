//! What a person sees: each frame in the chosen format, and in `pretty` one
//! line per frame coloured by the status's tone.

use std::io::Write;

use serde_json::Value;

use super::args::WsFormat;
use super::expect::RESYNC_TYPE;
use crate::cli::term_style::{Tone, status_tone};
use crate::cli::text::{short_id, snippet, value_text};

/// Terminal styling, off unless stdout is a terminal and NO_COLOR is unset.
#[derive(Clone, Copy)]
pub struct Style {
    pub on: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn status(self, status: &str) -> String {
        let code = match status_tone(status) {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Busy => "33",
            Tone::Other => "36",
        };
        self.paint(code, status)
    }
}

/// Writes one frame to stdout. A frame that is not `{type, payload}` JSON
/// is told on stderr instead (except in `raw`, which passes everything).
pub fn frame(
    format: WsFormat,
    style: Style,
    text: &str,
    parsed: Option<&Value>,
    typed: Option<(&str, &Value)>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match (format, parsed, typed) {
        (WsFormat::Raw, _, _) => writeln!(out, "{text}"),
        // The server's frames are compact JSON already: pass them through
        // as sent (key order kept); anything multi-line is re-serialised.
        (WsFormat::Json, Some(_), _) if !text.contains('\n') => writeln!(out, "{}", text.trim()),
        (WsFormat::Json, Some(v), _) => writeln!(out, "{v}"),
        (WsFormat::Pretty, _, Some((kind, payload))) => {
            writeln!(out, "{}", pretty_line(kind, payload, style))
        }
        _ => {
            eprintln!(
                "unrecognised frame (not {{type, payload}} JSON): {}",
                snippet(text, 200)
            );
            Ok(())
        }
    }
}

fn id_of(v: &Value) -> &str {
    v.as_str().map_or("?", short_id)
}

/// One human line for a frame: time, type, then the fields that matter.
pub fn pretty_line(kind: &str, payload: &Value, style: Style) -> String {
    let time = chrono::Local::now().format("%H:%M:%S%.3f").to_string();
    format!(
        "{} {} {}",
        style.paint("2", &time),
        style.paint("1", &format!("{kind:<24}")),
        details(kind, payload, style)
    )
}

/// The fields of a payload that matter for its type.
fn details(kind: &str, payload: &Value, style: Style) -> String {
    let get = |k: &str| payload.get(k).unwrap_or(&Value::Null);
    let status = style.status(&value_text(get("status")));
    let error = match get("error_message") {
        Value::String(e) => format!(
            " {}",
            style.paint("31", &format!("error: {}", snippet(e, 120)))
        ),
        _ => String::new(),
    };
    match kind {
        "document.created" => format!(
            "{status} {} ({}, {} B) doc={}",
            value_text(get("filename")),
            value_text(get("mime_type")),
            value_text(get("size_bytes")),
            id_of(get("document_id"))
        ),
        "document.status_updated" => {
            format!("{status} doc={}{error}", id_of(get("document_id")))
        }
        "job.status_updated" => format!(
            "{} {status} retry={} job={} doc={}{error}",
            value_text(get("kind")),
            value_text(get("retry_count")),
            id_of(get("job_id")),
            id_of(get("document_id"))
        ),
        "message.created" | "message.status_updated" => {
            let role = match get("role") {
                Value::String(r) => format!("{r} "),
                _ => String::new(),
            };
            format!(
                "{role}{status} conv={} msg={} {:?}",
                id_of(get("conversation_id")),
                id_of(get("message_id")),
                snippet(&value_text(get("content")), 60)
            )
        }
        RESYNC_TYPE => style.paint("35", &format!("reason={}", value_text(get("reason")))),
        _ => payload.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_lines_carry_the_fields_that_matter() {
        let plain = Style { on: false };
        let line = pretty_line(
            "job.status_updated",
            &json!({"kind": "parse", "status": "failed", "retry_count": 2,
                    "job_id": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
                    "error_message": "no text"}),
            plain,
        );
        assert!(
            line.ends_with("parse failed retry=2 job=0b1c2d3e doc=? error: no text"),
            "{line}"
        );
        let painted = details(
            "document.status_updated",
            &json!({"status": "ingested"}),
            Style { on: true },
        );
        assert!(
            painted.starts_with("\x1b[32mingested\x1b[0m"),
            "{painted:?}"
        );
    }
}
