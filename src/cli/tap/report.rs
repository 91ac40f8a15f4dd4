//! Operational reports off [`OPS_CHANNEL`] as tap sees them: a bridge's
//! heal run, or a report this build cannot read. Shared by the TUI and the
//! JSON Lines mode; they are never events, so they never pass the event
//! decoder (which would call them malformed).
//!
//! [`OPS_CHANNEL`]: crate::events::ops::OPS_CHANNEL

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::cli::term_style::Tone;
use crate::events::ops::{HealOutcome, HealReport};

/// One report for tap's own event channel.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsReport {
    pub received_at: DateTime<Utc>,
    /// The NOTIFY channel it came on.
    pub channel: String,
    /// The exact NOTIFY payload.
    pub raw: String,
    pub kind: ReportKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    Heal(HealReport),
    /// Another op or version (a newer build's report): shown, not read.
    Unknown {
        op: Option<String>,
        v: Option<u64>,
    },
}

/// Type label of a heal row, for the table and the type filter.
pub const HEAL_LABEL: &str = "heal";
/// Type label of a report this build cannot read.
pub const UNKNOWN_LABEL: &str = "ops?";

impl OpsReport {
    /// Reads a payload off the ops channel; `None` unless it is a JSON
    /// object naming `tap_channel` as its event channel (reports of other
    /// deployments on the same database are not ours to show).
    pub fn read(
        tap_channel: &str,
        channel: String,
        raw: String,
        received_at: DateTime<Utc>,
    ) -> Option<OpsReport> {
        let kind = match HealReport::parse(&raw) {
            Some(r) if r.channel == tap_channel => ReportKind::Heal(r),
            Some(_) => return None,
            None => {
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&raw) else {
                    return None;
                };
                if map.get("channel").and_then(Value::as_str) != Some(tap_channel) {
                    return None;
                }
                ReportKind::Unknown {
                    op: map.get("op").and_then(Value::as_str).map(str::to_string),
                    v: map.get("v").and_then(Value::as_u64),
                }
            }
        };
        Some(OpsReport {
            received_at,
            channel,
            raw,
            kind,
        })
    }

    pub fn heal(&self) -> Option<&HealReport> {
        match &self.kind {
            ReportKind::Heal(r) => Some(r),
            ReportKind::Unknown { .. } => None,
        }
    }

    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            ReportKind::Heal(_) => HEAL_LABEL,
            ReportKind::Unknown { .. } => UNKNOWN_LABEL,
        }
    }

    /// What the report's `op` said (`None` when it had none).
    pub fn op(&self) -> Option<&str> {
        match &self.kind {
            ReportKind::Heal(r) => Some(&r.op),
            ReportKind::Unknown { op, .. } => op.as_deref(),
        }
    }

    /// The JSON Lines record (`--no-tui` and `w`): `op` tells it from an
    /// event's record, `heal` is the report read (null when unknown).
    pub fn record(&self) -> ReportRecord<'_> {
        ReportRecord {
            received_at: self.received_at,
            channel: &self.channel,
            op: self.op(),
            heal: self.heal(),
            raw: &self.raw,
        }
    }
}

/// One line of JSON Lines output for a report.
#[derive(Debug, Serialize)]
pub struct ReportRecord<'a> {
    pub received_at: DateTime<Utc>,
    pub channel: &'a str,
    pub op: Option<&'a str>,
    pub heal: Option<&'a HealReport>,
    pub raw: &'a str,
}

/// How an outcome reads at a glance; `None` is muted (nothing went wrong,
/// nothing was healed).
pub fn outcome_tone(outcome: HealOutcome) -> Option<Tone> {
    match outcome {
        HealOutcome::Healed => Some(Tone::Good),
        HealOutcome::Overflow | HealOutcome::Failed => Some(Tone::Bad),
        HealOutcome::NoSockets | HealOutcome::Disabled => None,
    }
}

/// A duration in milliseconds, in the unit that keeps it short.
pub fn format_duration(ms: f64) -> String {
    if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ops::{HEAL_OP, OPS_CHANNEL, OPS_VERSION};

    fn report(channel: &str) -> HealReport {
        let t = DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
            .unwrap()
            .to_utc();
        HealReport {
            v: OPS_VERSION,
            op: HEAL_OP.into(),
            channel: channel.into(),
            instance: "host:1".into(),
            reason: "listener_reconnected".into(),
            from: t,
            to: Some(t),
            users: 1,
            sockets: 1,
            rows: 0,
            frames: 0,
            duration_ms: 0.5,
            outcome: HealOutcome::Healed,
            error: None,
            at: t,
        }
    }

    fn read(raw: String) -> Option<OpsReport> {
        OpsReport::read("rag_events", OPS_CHANNEL.into(), raw, Utc::now())
    }

    #[test]
    fn only_reports_for_our_channel_are_kept() {
        let mine = report("rag_events");
        let got = read(mine.to_json()).unwrap();
        assert_eq!(got.heal(), Some(&mine));
        assert_eq!(got.kind_label(), "heal");
        assert_eq!(read(report("other_events").to_json()), None);
        // A newer report for our channel shows as unknown; junk is skipped.
        let newer = mine.to_json().replace("\"v\":1", "\"v\":2");
        let got = read(newer).unwrap();
        assert_eq!(
            got.kind,
            ReportKind::Unknown {
                op: Some("bridge.heal".into()),
                v: Some(2)
            }
        );
        assert_eq!(got.kind_label(), "ops?");
        let theirs = report("other").to_json().replace("\"v\":1", "\"v\":2");
        assert_eq!(read(theirs), None);
        assert_eq!(read("not json".into()), None);
        assert_eq!(read("[1,2]".into()), None);
        assert_eq!(read("{\"op\":\"x\"}".into()), None);
    }

    #[test]
    fn records_carry_the_report_and_durations_stay_short() {
        let got = read(report("rag_events").to_json()).unwrap();
        let v = serde_json::to_value(got.record()).unwrap();
        assert_eq!(v["op"], "bridge.heal");
        assert_eq!(v["channel"], "ragctl_ops");
        assert_eq!(v["heal"]["outcome"], "healed");
        assert_eq!(v["raw"], got.raw);
        assert_eq!(format_duration(0.3), "0.3ms");
        assert_eq!(format_duration(12.4), "12.4ms");
        assert_eq!(format_duration(123.4), "123ms");
        assert_eq!(format_duration(1234.0), "1234ms");
        assert_eq!(format_duration(12_500.0), "12.5s");
        let tones: Vec<_> = HealOutcome::ALL.into_iter().map(outcome_tone).collect();
        use Tone::*;
        assert_eq!(tones, [Some(Good), None, Some(Bad), Some(Bad), None]);
    }
}
