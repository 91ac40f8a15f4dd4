//! `--no-tui` (or no terminal): one JSON object per notification on
//! stdout (an event, or a heal run: the record has `op`), status changes on
//! stderr.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;

use super::decode::Decoder;
use super::relay::RelaySeen;
use super::report::OpsReport;
use super::source::{Input, SourceStatus};

/// One line to print: an event's record, a report's, or a notable relay
/// message's (`--bus nats`).
enum Line {
    Event(super::decode::Event),
    Report(OpsReport),
    Relay(serde_json::Value),
}

impl Line {
    fn write<W: Write>(&self, out: &mut W) -> serde_json::Result<()> {
        match self {
            Line::Event(ev) => serde_json::to_writer(out, &ev.record()),
            Line::Report(r) => serde_json::to_writer(out, &r.record()),
            Line::Relay(v) => serde_json::to_writer(out, v),
        }
    }
}

/// Prints one JSON object per notification (a reassembled fragment group is
/// one notification; a heal report is one too) until the channel closes or
/// `count` objects have been written. Status changes go to stderr. A closed
/// stdout (broken pipe) ends the run quietly.
pub async fn run_jsonl<W: Write>(
    mut rx: Receiver<Input>,
    mut out: W,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let result = async {
        let mut decoder = Decoder::default();
        let mut written = 0u64;
        let mut last_status: Option<SourceStatus> = None;
        let mut relay = RelaySeen::default();
        if count == Some(0) {
            return Ok(());
        }
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lines: Vec<Line> = tokio::select! {
                input = rx.recv() => match input {
                    None => break,
                    Some(Input::Notification { channel, payload, received_at }) => decoder
                        .push(channel, payload, received_at, Instant::now())
                        .into_iter()
                        .map(Line::Event)
                        .collect(),
                    Some(Input::Report(report)) => vec![Line::Report(*report)],
                    Some(Input::Relay { message, received_at }) => match relay.note(&message) {
                        Some(n) => vec![Line::Relay(relay_record(&message, &n.text, received_at))],
                        None => continue,
                    },
                    Some(Input::Status(status)) => {
                        if let Some(line) = status_line(last_status.as_ref(), &status) {
                            eprintln!("ragctl tap: {line}");
                        }
                        last_status = Some(status);
                        continue;
                    }
                },
                _ = expiry.tick() => decoder
                    .expire(Instant::now())
                    .into_iter()
                    .map(Line::Event)
                    .collect(),
            };
            for line in &lines {
                line.write(&mut out)?;
                out.write_all(b"\n")?;
                written += 1;
                if count.is_some_and(|n| written >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
            if !lines.is_empty() {
                out.flush()?;
            }
        }
        out.flush()?;
        Ok::<(), std::io::Error>(())
    }
    .await;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A relay message's record: the message as sent, what it means, when.
fn relay_record(
    message: &crate::bus::relay_msg::RelayMessage,
    note: &str,
    received_at: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "relay": message,
        "note": note,
        "received_at": received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
}

/// A one-line description of a status change worth telling a `--no-tui`
/// user about, or None when nothing notable changed.
pub fn status_line(prev: Option<&SourceStatus>, new: &SourceStatus) -> Option<String> {
    let notable = |s: &SourceStatus| (s.connected, s.listeners == Some(0), s.last_error.clone());
    if prev.is_some_and(|p| notable(p) == notable(new)) {
        return None;
    }
    let mut line = if new.connected {
        "connected".to_string()
    } else {
        match &new.last_error {
            Some(e) => format!("disconnected: {e}"),
            None => "disconnected".to_string(),
        }
    };
    if new.reconnects > 0 {
        line.push_str(&format!(" (reconnects: {})", new.reconnects));
    }
    if new.listeners == Some(0) {
        line.push_str(" — no API instance listening — events go nowhere");
    }
    Some(line)
}
