//! Operational reports that API processes publish beside the events: today
//! one kind, the bridge's heal runs, so that `ragctl tap` can show them.
//!
//! They travel on their own channel, [`OPS_CHANNEL`], never on the event
//! channel: every API process routes the event channel, and a report there
//! would be dropped (and counted) as a malformed envelope by all of them.
//! One fixed name serves every deployment on a database; the report names
//! its event channel so that a tap can keep to its own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The NOTIFY channel of operational reports.
pub const OPS_CHANNEL: &str = "ragctl_ops";

/// Version of the report format; a tap shows other versions as unknown.
pub const OPS_VERSION: u64 = 1;

/// How a heal run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealOutcome {
    /// Every changed row in the window was pushed to its user's sockets.
    Healed,
    /// No socket was connected: nothing to heal.
    NoSockets,
    /// More rows than `--max-heal`: what fitted was pushed, then
    /// `realtime.resync` went to the sockets that opted in.
    Overflow,
    /// The query failed: `realtime.resync` went to the sockets that opted in.
    Failed,
    /// Healing is off (`--max-heal 0`): every gap is a `realtime.resync`.
    Disabled,
}

impl HealOutcome {
    pub const ALL: [HealOutcome; 5] = [
        HealOutcome::Healed,
        HealOutcome::NoSockets,
        HealOutcome::Overflow,
        HealOutcome::Failed,
        HealOutcome::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealOutcome::Healed => "healed",
            HealOutcome::NoSockets => "no_sockets",
            HealOutcome::Overflow => "overflow",
            HealOutcome::Failed => "failed",
            HealOutcome::Disabled => "disabled",
        }
    }

    /// Whether the clients were told to resync.
    pub fn resynced(self) -> bool {
        matches!(
            self,
            HealOutcome::Overflow | HealOutcome::Failed | HealOutcome::Disabled
        )
    }
}

/// One heal run of one API process's bridge, as published on
/// [`OPS_CHANNEL`]:
///
/// ```json
/// {"v":1,"op":"bridge.heal","channel":"rag_events","instance":"host:4242",
///  "reason":"listener_reconnected","from":"…","to":"…","users":20,
///  "sockets":23,"rows":180,"frames":190,"duration_ms":12.5,
///  "outcome":"healed","error":null,"at":"…"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealReport {
    pub v: u64,
    /// Always `"bridge.heal"`.
    pub op: String,
    /// The event channel the healed bridge listens on.
    pub channel: String,
    /// `host:pid` of the API process.
    pub instance: String,
    /// Why the gap happened: `listener_reconnected` or `listener_overflow`.
    pub reason: String,
    /// The window read: rows changed at or after `from`...
    pub from: DateTime<Utc>,
    /// ...up to the snapshot taken at `to` (`None` if the query failed).
    pub to: Option<DateTime<Utc>>,
    /// Users with sockets on the instance, and their sockets.
    pub users: usize,
    pub sockets: usize,
    /// Rows read, and the state frames pushed from them.
    pub rows: usize,
    pub frames: usize,
    pub duration_ms: f64,
    pub outcome: HealOutcome,
    pub error: Option<String>,
    /// When the run ended.
    pub at: DateTime<Utc>,
}

/// `op` of a heal report.
pub const HEAL_OP: &str = "bridge.heal";

impl HealReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }

    /// A report read off [`OPS_CHANNEL`]; `None` for any other payload
    /// (another op, another version, or not JSON).
    pub fn parse(payload: &str) -> Option<HealReport> {
        let r: HealReport = serde_json::from_str(payload).ok()?;
        (r.v == OPS_VERSION && r.op == HEAL_OP).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_other_payloads_are_not_reports() {
        let r = HealReport {
            v: OPS_VERSION,
            op: HEAL_OP.into(),
            channel: "rag_events".into(),
            instance: "host:1".into(),
            reason: "listener_reconnected".into(),
            from: Utc::now(),
            to: Some(Utc::now()),
            users: 2,
            sockets: 3,
            rows: 4,
            frames: 5,
            duration_ms: 1.5,
            outcome: HealOutcome::Healed,
            error: None,
            at: Utc::now(),
        };
        assert_eq!(HealReport::parse(&r.to_json()), Some(r.clone()));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "healed");
        assert_eq!(v["op"], "bridge.heal");
        let other = r.to_json().replace("bridge.heal", "bridge.other");
        assert_eq!(HealReport::parse(&other), None);
        assert_eq!(HealReport::parse("{}"), None);
        assert_eq!(HealReport::parse("not json"), None);
        for o in HealOutcome::ALL {
            let text = serde_json::to_string(&o).unwrap();
            assert_eq!(text, format!("\"{}\"", o.as_str()));
        }
    }
}
