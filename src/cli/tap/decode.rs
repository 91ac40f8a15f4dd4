//! Notifications into [`Event`]s: each payload validated with
//! [`decode`](crate::events::decode), fragments joined by the events'
//! [`Reassembler`]. Shared by the TUI and the JSON Lines mode.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::events::{DropReason, Envelope, GroupProgress, Reassembler, WireMessage, decode};

/// Fragment groups reassembled at once (the listener's own bound).
pub const FRAGMENT_GROUPS: usize = 64;
/// How long a fragment group may take to complete.
pub const FRAGMENT_TTL: Duration = Duration::from_secs(30);

/// One notification off the channel, decoded (or a reassembled fragment
/// group, or a group that failed to reassemble).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub received_at: DateTime<Utc>,
    pub channel: String,
    /// The exact NOTIFY payload. For a reassembled group, the envelope the
    /// fragments carried; for a failed group, the fragment that ended it.
    pub raw: String,
    /// Bytes of NOTIFY payload (summed over fragments).
    pub size: usize,
    /// Notifications that made up this event: 1, or the fragment count.
    pub fragments: usize,
    pub outcome: Result<Envelope, DropReason>,
    /// Best-effort `type` of an invalid payload, for display and filters.
    pub hint_kind: Option<String>,
    /// Best-effort `user_id` of an invalid payload.
    pub hint_user: Option<String>,
}

/// Payload keys shown in the ids column, with their short labels.
pub const KEY_IDS: [(&str, &str); 4] = [
    ("job_id", "job"),
    ("document_id", "doc"),
    ("message_id", "msg"),
    ("conversation_id", "conv"),
];

impl Event {
    fn new(
        channel: String,
        raw: String,
        received_at: DateTime<Utc>,
        size: usize,
        fragments: usize,
        outcome: Result<Envelope, DropReason>,
    ) -> Event {
        let (hint_kind, hint_user) = match &outcome {
            Ok(_) => (None, None),
            Err(_) => hints(&raw),
        };
        Event {
            received_at,
            channel,
            raw,
            size,
            fragments,
            outcome,
            hint_kind,
            hint_user,
        }
    }

    pub fn envelope(&self) -> Option<&Envelope> {
        self.outcome.as_ref().ok()
    }

    pub fn reason(&self) -> Option<DropReason> {
        self.outcome.as_ref().err().copied()
    }

    pub fn is_valid(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The event type, or what an invalid payload claimed to be.
    pub fn kind_label(&self) -> &str {
        match &self.outcome {
            Ok(env) => env.kind.as_str(),
            Err(_) => self.hint_kind.as_deref().unwrap_or("?"),
        }
    }

    pub fn user_label(&self) -> Option<String> {
        match &self.outcome {
            Ok(env) => Some(env.user_id.to_string()),
            Err(_) => self.hint_user.clone(),
        }
    }

    /// `received_at - ts` in milliseconds.
    pub fn delay_ms(&self) -> Option<i64> {
        self.envelope()
            .map(|env| (self.received_at - env.ts).num_milliseconds())
    }

    /// The key ids the payload carries, as (short label, id).
    pub fn key_ids(&self) -> Vec<(&'static str, &str)> {
        let Some(env) = self.envelope() else {
            return Vec::new();
        };
        KEY_IDS
            .iter()
            .filter_map(|(key, label)| Some((*label, env.payload.get(*key)?.as_str()?)))
            .collect()
    }

    pub fn status(&self) -> Option<&str> {
        self.envelope()?.payload.get("status")?.as_str()
    }

    /// The JSON Lines record for this event (`--no-tui` and `w`).
    pub fn record(&self) -> Record<'_> {
        Record {
            received_at: self.received_at,
            channel: &self.channel,
            valid: self.is_valid(),
            reason: self.reason().map(DropReason::as_str),
            envelope: self.envelope(),
            raw: &self.raw,
        }
    }
}

/// One line of JSON Lines output.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub received_at: DateTime<Utc>,
    pub channel: &'a str,
    pub valid: bool,
    pub reason: Option<&'static str>,
    pub envelope: Option<&'a Envelope>,
    pub raw: &'a str,
}

fn hints(raw: &str) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw) else {
        return (None, None);
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = text("type").or_else(|| map.contains_key("frag").then(|| "fragment".into()));
    (kind, text("user_id"))
}

/// What a group's notifications were on the wire, which the reassembler
/// (it keeps the decoded bytes and counts the fragments) does not know.
struct Wire {
    received_at: DateTime<Utc>,
    channel: String,
    first_raw: String,
    /// NOTIFY payload bytes, summed over the group's notifications.
    bytes: usize,
}

/// Turns notifications into [`Event`]s: validates them with
/// [`decode`](crate::events::decode) and joins fragments with a
/// [`Reassembler`], whose group statistics (fragments in, start) it reads.
pub struct Decoder {
    reassembler: Reassembler,
    wire: HashMap<Uuid, Wire>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            reassembler: Reassembler::new(FRAGMENT_GROUPS, FRAGMENT_TTL),
            wire: HashMap::new(),
        }
    }
}

impl Decoder {
    /// Fragment groups still waiting for parts.
    pub fn in_flight(&self) -> usize {
        self.reassembler.in_flight()
    }

    /// Decodes one notification. Returns nothing for a fragment that does
    /// not complete its group, and may return more than one event when a
    /// new group evicts old ones.
    pub fn push(
        &mut self,
        channel: String,
        payload: String,
        received_at: DateTime<Utc>,
        now: Instant,
    ) -> Vec<Event> {
        let size = payload.len();
        let frag = match decode(&payload) {
            Ok(WireMessage::Fragment(frag)) => frag,
            Ok(WireMessage::Envelope(env)) => {
                return vec![Event::new(channel, payload, received_at, size, 1, Ok(*env))];
            }
            Err(reason) => {
                return vec![Event::new(
                    channel,
                    payload,
                    received_at,
                    size,
                    1,
                    Err(reason),
                )];
            }
        };
        let id = frag.frag.id;
        let before: Vec<GroupProgress> = self.reassembler.groups().collect();
        let fragments = 1 + before
            .iter()
            .find(|g| g.id == id)
            .map_or(0, |g| g.fragments);
        let wire = self.wire.entry(id).or_insert_with(|| Wire {
            received_at,
            channel: channel.clone(),
            first_raw: payload.clone(),
            bytes: 0,
        });
        wire.bytes += size;
        let (result, evicted) = self.reassembler.push(frag, now);
        let mut out = if evicted > 0 {
            self.gone(before, Some(id))
        } else {
            Vec::new()
        };
        let (raw, outcome) = match result {
            Ok(None) => return out,
            Ok(Some(env)) => (
                serde_json::to_string(&env).expect("an envelope always serialises"),
                Ok(env),
            ),
            Err(reason) => (payload, Err(reason)),
        };
        let bytes = self.wire.remove(&id).map_or(size, |w| w.bytes);
        out.push(Event::new(
            channel,
            raw,
            received_at,
            bytes,
            fragments,
            outcome,
        ));
        out
    }

    /// Drops fragment groups older than the TTL, one invalid event each.
    pub fn expire(&mut self, now: Instant) -> Vec<Event> {
        let before: Vec<GroupProgress> = self.reassembler.groups().collect();
        if self.reassembler.expire(now) == 0 {
            return Vec::new();
        }
        self.gone(before, None)
    }

    /// The groups of `before` the reassembler has let go (evicted or
    /// expired), oldest first, one invalid event each; `except` is the
    /// group just pushed, which its own outcome reports.
    fn gone(&mut self, before: Vec<GroupProgress>, except: Option<Uuid>) -> Vec<Event> {
        let held: HashSet<Uuid> = self.reassembler.groups().map(|g| g.id).collect();
        let mut gone: Vec<GroupProgress> = before
            .into_iter()
            .filter(|g| Some(g.id) != except && !held.contains(&g.id))
            .collect();
        gone.sort_by_key(|g| (g.started, g.id));
        gone.into_iter()
            .filter_map(|g| {
                let w = self.wire.remove(&g.id)?;
                Some(Event::new(
                    w.channel,
                    w.first_raw,
                    w.received_at,
                    w.bytes,
                    g.fragments,
                    Err(DropReason::FragmentExpired),
                ))
            })
            .collect()
    }
}
