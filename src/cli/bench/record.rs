//! Recording deliveries: the clock, the per-receiver sinks, the
//! `bench:<phase>:<seq>` tag each event carries, and latency statistics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use super::report::Stats;
use crate::events::{Envelope, EventType, encode_notifications};

/// No phase is active.
pub(super) const NO_PHASE: u32 = u32::MAX;

#[derive(Clone, Copy)]
pub(super) struct Clock(pub(super) Instant);

impl Clock {
    pub(super) fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

pub(super) struct Rec {
    pub(super) seq: u32,
    pub(super) ns: u64,
}

/// Where receivers record deliveries: one vector per receiver, so the hot
/// path takes an uncontended lock and touches two shared atomics.
pub(super) struct Sink {
    pub(super) phase: AtomicU32,
    pub(super) hits: AtomicU64,
    pub(super) last_ns: AtomicU64,
    pub(super) stray: AtomicU64,
    pub(super) slots: Vec<Mutex<Vec<Rec>>>,
}

impl Sink {
    pub(super) fn new(slots: usize) -> Sink {
        Sink {
            phase: AtomicU32::new(NO_PHASE),
            hits: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            slots: (0..slots).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub(super) fn record(&self, slot: usize, text: &str, ns: u64) {
        let Some((phase, seq)) = parse_tag(text) else {
            return;
        };
        if phase != self.phase.load(Ordering::Relaxed) {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.slots[slot].lock().expect("sink").push(Rec { seq, ns });
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(super) fn begin(&self, phase: u32) {
        for s in &self.slots {
            s.lock().expect("sink").clear();
        }
        self.hits.store(0, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
        self.phase.store(phase, Ordering::SeqCst);
    }

    pub(super) fn end(&self) -> Vec<Vec<Rec>> {
        self.phase.store(NO_PHASE, Ordering::SeqCst);
        self.slots
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().expect("sink")))
            .collect()
    }

    pub(super) fn activity(&self) -> u64 {
        self.hits.load(Ordering::Relaxed) + self.stray.load(Ordering::Relaxed)
    }
}

pub(super) const TAG: &str = "\"bench:";

/// `(phase, seq)` from a payload or frame carrying `"bench:<phase>:<seq>"`.
pub(super) fn parse_tag(text: &str) -> Option<(u32, u32)> {
    let at = text.find(TAG)? + TAG.len();
    let rest = &text[at..];
    let (phase, rest) = rest.split_once(':')?;
    let end = rest.find('"')?;
    Some((phase.parse().ok()?, rest[..end].parse().ok()?))
}

/// The NOTIFY payload of event `seq` of `phase`, for user `seq % users`,
/// built just before it is published so that its `ts` (which the server's
/// `ragctl_bridge_delivery_seconds` histogram starts from) is current.
pub(super) fn event_payload(phase: u32, seq: usize, users: &[Uuid]) -> String {
    let env = Envelope::new(
        users[seq % users.len()],
        EventType::DocumentStatusUpdated,
        json!({
            "document_id": Uuid::new_v4(),
            "status": "parsed",
            "error_message": format!("bench:{phase}:{seq}"),
            "updated_at": chrono::Utc::now(),
        }),
        "ragctl-bench",
    );
    let mut notes = encode_notifications(&env).expect("a small envelope encodes");
    assert_eq!(notes.len(), 1, "bench envelopes fit in one notification");
    notes.swap_remove(0)
}

pub(super) fn stats(mut us: Vec<u32>) -> Option<Stats> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let pct = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    let mean = us.iter().map(|&v| v as u64).sum::<u64>() / us.len() as u64;
    Some(Stats {
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        max_us: *us.last().expect("non-empty"),
        mean_us: mean as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn tags_round_trip_through_payload_and_frame() {
        let users = [Uuid::new_v4()];
        let p = &event_payload(7, 42, &users);
        assert_eq!(parse_tag(p), Some((7, 42)));
        let crate::events::WireMessage::Envelope(env) = crate::events::decode(p).unwrap() else {
            panic!("not an envelope")
        };
        assert_eq!(parse_tag(&env.frame_text()), Some((7, 42)));
        assert_eq!(parse_tag(r#"{"error_message":null}"#), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = stats((1..=100).collect()).unwrap();
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.max_us), (50, 90, 99, 100));
        assert!(stats(Vec::new()).is_none());
    }
}
