//! The detail pane's pretty view of an event: envelope fields, or why a
//! payload is invalid, then the payload as indented JSON.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};

use super::app::App;
use super::decode::Event;
use super::style::{format_delay, st};
use crate::events::{DropReason, Envelope, EventType, validate_payload};

/// What a drop reason means, in words.
pub fn explain(reason: DropReason) -> &'static str {
    match reason {
        DropReason::NotJson => "the payload is not a JSON object",
        DropReason::UnknownVersion => "`v` is missing or not a version this build knows",
        DropReason::BadUserId => "`user_id` is missing or not a UUID",
        DropReason::UnknownType => "`type` is missing or not one of the event types",
        DropReason::BadPayload => "`payload` does not satisfy the contract of its type",
        DropReason::BadEnvelope => {
            "an envelope field (`id`, `ts`, `origin`) is missing or malformed"
        }
        DropReason::BadFragment => "a malformed or inconsistent fragment",
        DropReason::FragmentExpired => {
            "the fragment group did not complete in time (or was evicted)"
        }
    }
}

/// The precise problem with an invalid payload, where it can be told.
fn problem(ev: &Event) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(&ev.raw).ok()?;
    match ev.reason()? {
        DropReason::BadPayload => {
            let kind = EventType::parse(value.get("type")?.as_str()?)?;
            let payload = value.get("payload")?;
            validate_payload(kind, payload).err().map(|e| e.to_string())
        }
        DropReason::BadEnvelope => serde_json::from_value::<Envelope>(value)
            .err()
            .map(|e| e.to_string()),
        _ => None,
    }
}

pub fn millis(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The dim labels and separators of the header lines.
#[derive(Clone, Copy)]
pub struct Labels {
    pub dim: Style,
}

impl Labels {
    pub fn new(app: &App) -> Labels {
        Labels {
            dim: st(app, Style::default().fg(Color::DarkGray)),
        }
    }

    pub fn kv<'a>(self, k: &str, v: String) -> Vec<Span<'a>> {
        vec![Span::styled(format!("{k} "), self.dim), Span::raw(v)]
    }

    pub fn sep<'a>(self) -> Span<'a> {
        Span::styled(" · ", self.dim)
    }

    /// `channel … · N bytes · N fragments`.
    fn wire<'a>(self, ev: &Event) -> Vec<Span<'a>> {
        let mut wire = self.kv("channel", ev.channel.clone());
        wire.push(self.sep());
        wire.push(Span::raw(format!("{} bytes", ev.size)));
        if ev.fragments > 1 {
            wire.push(self.sep());
            wire.push(Span::raw(format!("{} fragments", ev.fragments)));
        }
        wire
    }
}

/// Header lines (envelope fields, or why it is invalid), then the payload
/// as pretty JSON (the whole payload text when it is not an envelope).
pub fn detail_text<'a>(app: &App, ev: &'a Event) -> Text<'a> {
    let labels = Labels::new(app);
    let mut lines = Vec::new();
    let pretty = match &ev.outcome {
        Ok(env) => {
            valid_head(app, labels, ev, env, &mut lines);
            serde_json::to_string_pretty(&env.payload).ok()
        }
        Err(reason) => {
            invalid_head(app, labels, ev, *reason, &mut lines);
            serde_json::from_str::<serde_json::Value>(&ev.raw)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
        }
    };
    match pretty {
        Some(p) => lines.extend(p.lines().map(|l| Line::raw(l.to_string()))),
        None => lines.extend(ev.raw.lines().map(Line::raw)),
    }
    Text::from(lines)
}

/// Type, origin, wire; id and user; times; then the `payload` label.
fn valid_head(app: &App, l: Labels, ev: &Event, env: &Envelope, lines: &mut Vec<Line<'_>>) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut head = vec![
        Span::styled("VALID ", st(app, bold.fg(Color::Green))),
        Span::styled(env.kind.as_str(), st(app, bold)),
        l.sep(),
    ];
    head.extend(l.kv("origin", env.origin.clone()));
    head.push(l.sep());
    head.extend(l.wire(ev));
    lines.push(Line::from(head));
    let mut ids = l.kv("id", env.id.to_string());
    ids.push(l.sep());
    ids.extend(l.kv("user", env.user_id.to_string()));
    lines.push(Line::from(ids));
    let mut times = l.kv("ts", millis(&env.ts));
    times.push(l.sep());
    times.extend(l.kv("received", millis(&ev.received_at)));
    times.push(l.sep());
    let delay = ev.delay_ms().map(format_delay).unwrap_or_default();
    times.extend(l.kv("delay", delay));
    lines.push(Line::from(times));
    lines.push(Line::from(Span::styled("payload", l.dim)));
}

/// The reason in words, the precise problem where known, then the wire
/// and the `notification` label.
fn invalid_head(app: &App, l: Labels, ev: &Event, reason: DropReason, lines: &mut Vec<Line<'_>>) {
    let red = Style::default().fg(Color::Red);
    lines.push(Line::from(vec![
        Span::styled(
            format!("INVALID {}", reason.as_str()),
            st(app, red.add_modifier(Modifier::BOLD)),
        ),
        Span::raw(format!(" — {}", explain(reason))),
    ]));
    if let Some(p) = problem(ev) {
        lines.push(Line::from(Span::styled(p, st(app, red))));
    }
    let mut received = l.kv("received", millis(&ev.received_at));
    received.push(l.sep());
    received.extend(l.wire(ev));
    lines.push(Line::from(received));
    lines.push(Line::from(Span::styled("notification", l.dim)));
}
