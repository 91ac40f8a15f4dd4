//! The NOTIFY wire form: envelopes, fragments for envelopes over the NOTIFY
//! payload limit, and validation of whatever arrives on the channel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::contract::{ENVELOPE_VERSION, EventType};
pub use super::drop::DropReason;
use super::publish_error::PublishError;
use super::scan::{Scanned, scan};

/// PostgreSQL rejects a NOTIFY payload of 8000 bytes or more.
pub const MAX_NOTIFY_BYTES: usize = 7999;
/// Raw envelope bytes per fragment; base64 makes 7,468 characters of it,
/// which leaves room for the fragment header under [`MAX_NOTIFY_BYTES`].
pub const FRAGMENT_CHUNK_BYTES: usize = 5600;
/// Largest envelope we publish or reassemble (a 1 MiB event is already far
/// beyond what a realtime frame should carry).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// One event as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u64,
    pub id: Uuid,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub payload: Value,
    pub ts: DateTime<Utc>,
    pub origin: String,
}

/// The client-facing frame: exactly `{type, payload}`, nothing that tells
/// where the event came from.
#[derive(Serialize)]
pub struct Frame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub payload: &'a Value,
}

impl Envelope {
    pub fn new(user_id: Uuid, kind: EventType, payload: Value, origin: &str) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: Uuid::new_v4(),
            user_id,
            kind,
            payload,
            ts: Utc::now(),
            origin: origin.to_string(),
        }
    }

    /// Serialises the WebSocket frame for this event.
    pub fn frame_text(&self) -> String {
        serde_json::to_string(&Frame {
            kind: self.kind.as_str(),
            payload: &self.payload,
        })
        .expect("a JSON value always serialises")
    }
}

/// A validated message from the channel.
#[derive(Debug)]
pub enum WireMessage {
    Envelope(Box<Envelope>),
    Fragment(Fragment),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentHeader {
    pub id: Uuid,
    pub seq: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    pub v: u64,
    pub frag: FragmentHeader,
    pub data: String,
}

/// Turns an envelope into the NOTIFY payloads that carry it: one for a
/// normal event, several fragments (to be sent in one transaction) for an
/// envelope over the NOTIFY limit.
pub fn encode_notifications(env: &Envelope) -> Result<Vec<String>, PublishError> {
    let text = serde_json::to_string(env).expect("an envelope always serialises");
    if text.len() <= MAX_NOTIFY_BYTES {
        return Ok(vec![text]);
    }
    if text.len() > MAX_ENVELOPE_BYTES {
        return Err(PublishError::TooLarge(text.len()));
    }
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(FRAGMENT_CHUNK_BYTES).collect();
    let total = chunks.len();
    let id = env.id;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(seq, chunk)| {
            serde_json::to_string(&Fragment {
                v: ENVELOPE_VERSION,
                frag: FragmentHeader { id, seq, total },
                data: B64.encode(chunk),
            })
            .expect("a fragment always serialises")
        })
        .collect())
}

/// Validates one NOTIFY payload and builds what it carries. The checks are
/// [`scan`]'s; an envelope is then read straight into its struct (the
/// router skips that for users with no socket here).
pub fn decode(payload: &str) -> Result<WireMessage, DropReason> {
    match scan(payload)? {
        Scanned::Fragment => decode_fragment(payload).map(WireMessage::Fragment),
        Scanned::Envelope { .. } => envelope(payload).map(|e| WireMessage::Envelope(Box::new(e))),
    }
}

/// The envelope of a payload [`scan`] accepted. Fails only for what the
/// scan does not look at (a key given twice).
pub fn envelope(payload: &str) -> Result<Envelope, DropReason> {
    serde_json::from_str(payload).map_err(|_| DropReason::BadEnvelope)
}

fn decode_fragment(payload: &str) -> Result<Fragment, DropReason> {
    let frag: Fragment = serde_json::from_str(payload).map_err(|_| DropReason::BadFragment)?;
    let max_total = MAX_ENVELOPE_BYTES.div_ceil(FRAGMENT_CHUNK_BYTES);
    if frag.frag.total == 0 || frag.frag.total > max_total || frag.frag.seq >= frag.frag.total {
        return Err(DropReason::BadFragment);
    }
    Ok(frag)
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    started: Instant,
}

/// A fragment group in flight: its fragments in so far, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupProgress {
    pub id: Uuid,
    pub fragments: usize,
    pub started: Instant,
}

/// Joins fragments back into envelopes. Bounded: at most `max_groups`
/// envelopes in flight; the oldest is evicted (and counted) past that.
pub struct Reassembler {
    groups: HashMap<Uuid, Partial>,
    max_groups: usize,
    ttl: Duration,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(64, Duration::from_secs(30))
    }
}

impl Reassembler {
    pub fn new(max_groups: usize, ttl: Duration) -> Reassembler {
        Reassembler {
            groups: HashMap::new(),
            max_groups,
            ttl,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.groups.len()
    }

    /// The groups in flight, for an inspector that shows them.
    pub fn groups(&self) -> impl Iterator<Item = GroupProgress> + '_ {
        self.groups.iter().map(|(id, p)| GroupProgress {
            id: *id,
            fragments: p.received,
            started: p.started,
        })
    }

    /// Adds one fragment. Returns the whole envelope once its last fragment
    /// is in. Errors name why the fragment (or the group it ends) is dropped.
    /// The second element counts groups evicted to make room.
    pub fn push(
        &mut self,
        frag: Fragment,
        now: Instant,
    ) -> (Result<Option<Envelope>, DropReason>, usize) {
        let mut evicted = 0;
        let Ok(data) = B64.decode(frag.data.as_bytes()) else {
            self.groups.remove(&frag.frag.id);
            return (Err(DropReason::BadFragment), 0);
        };
        if !self.groups.contains_key(&frag.frag.id) {
            while self.groups.len() >= self.max_groups {
                let oldest = self
                    .groups
                    .iter()
                    .min_by_key(|(_, p)| p.started)
                    .map(|(id, _)| *id)
                    .expect("non-empty");
                self.groups.remove(&oldest);
                evicted += 1;
            }
        }
        let total = frag.frag.total;
        let partial = self.groups.entry(frag.frag.id).or_insert_with(|| Partial {
            parts: vec![None; total],
            received: 0,
            bytes: 0,
            started: now,
        });
        if partial.parts.len() != total || partial.parts[frag.frag.seq].is_some() {
            self.groups.remove(&frag.frag.id);
            return (Err(DropReason::BadFragment), evicted);
        }
        partial.bytes += data.len();
        if partial.bytes > MAX_ENVELOPE_BYTES {
            self.groups.remove(&frag.frag.id);
            return (Err(DropReason::BadFragment), evicted);
        }
        partial.parts[frag.frag.seq] = Some(data);
        partial.received += 1;
        if partial.received < total {
            return (Ok(None), evicted);
        }
        let partial = self.groups.remove(&frag.frag.id).expect("present");
        let joined: Vec<u8> = partial.parts.into_iter().flatten().flatten().collect();
        let result = match String::from_utf8(joined) {
            Ok(text) => match decode(&text) {
                Ok(WireMessage::Envelope(env)) => Ok(Some(*env)),
                Ok(WireMessage::Fragment(_)) => Err(DropReason::BadFragment),
                Err(reason) => Err(reason),
            },
            Err(_) => Err(DropReason::BadFragment),
        };
        (result, evicted)
    }

    /// Forgets groups older than the TTL; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.groups.len();
        let ttl = self.ttl;
        self.groups
            .retain(|_, p| now.saturating_duration_since(p.started) < ttl);
        before - self.groups.len()
    }
}

/// One malformed variant of `good` (a valid envelope, as JSON) per drop
/// reason, in `DropReason` order: the cases the router's and the tap's tests
/// both check.
#[cfg(test)]
pub(crate) fn malformed_variants(
    good: &serde_json::Value,
    frag_id: Uuid,
) -> Vec<(String, DropReason)> {
    use serde_json::json;
    let with = |k: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[k] = v;
        g.to_string()
    };
    vec![
        ("not json".to_string(), DropReason::NotJson),
        (with("v", json!(2)), DropReason::UnknownVersion),
        (with("user_id", json!("nope")), DropReason::BadUserId),
        (
            with("type", json!("document.deleted")),
            DropReason::UnknownType,
        ),
        (
            with("payload", json!({"status": "parsed"})),
            DropReason::BadPayload,
        ),
        (with("ts", json!("yesterday")), DropReason::BadEnvelope),
        (
            json!({"v": 1, "frag": {"id": frag_id, "seq": 3, "total": 2}, "data": ""}).to_string(),
            DropReason::BadFragment,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc_status(user: Uuid, msg: &str) -> Envelope {
        Envelope::new(
            user,
            EventType::DocumentStatusUpdated,
            json!({
                "document_id": Uuid::new_v4(),
                "status": "error",
                "error_message": msg,
                "updated_at": Utc::now(),
            }),
            "test",
        )
    }

    #[test]
    fn small_envelope_is_one_notification_and_round_trips() {
        let env = doc_status(Uuid::new_v4(), "boom");
        let out = encode_notifications(&env).unwrap();
        assert_eq!(out.len(), 1);
        match decode(&out[0]).unwrap() {
            WireMessage::Envelope(back) => assert_eq!(*back, env),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frame_is_exactly_type_and_payload() {
        let env = doc_status(Uuid::new_v4(), "x");
        let frame: Value = serde_json::from_str(&env.frame_text()).unwrap();
        let keys: Vec<_> = frame.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["payload".to_string(), "type".to_string()]);
        assert_eq!(frame["type"], "document.status_updated");
    }

    #[test]
    fn large_envelope_fragments_and_reassembles() {
        let big = "é".repeat(60_000); // 120 KB of two-byte characters
        let env = doc_status(Uuid::new_v4(), &big);
        let out = encode_notifications(&env).unwrap();
        assert!(out.len() > 10);
        assert!(out.iter().all(|p| p.len() <= MAX_NOTIFY_BYTES));
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut done = None;
        for (i, p) in out.iter().enumerate() {
            let WireMessage::Fragment(f) = decode(p).unwrap() else {
                panic!("expected fragment")
            };
            let (res, evicted) = r.push(f, now);
            assert_eq!(evicted, 0);
            match res.unwrap() {
                Some(e) => {
                    assert_eq!(i, out.len() - 1);
                    done = Some(e)
                }
                None => assert!(i < out.len() - 1),
            }
        }
        assert_eq!(done.unwrap(), env);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn too_large_is_refused() {
        let env = doc_status(Uuid::new_v4(), &"x".repeat(MAX_ENVELOPE_BYTES));
        assert!(matches!(
            encode_notifications(&env),
            Err(PublishError::TooLarge(_))
        ));
    }

    #[test]
    fn each_malformed_payload_has_its_reason() {
        let user = Uuid::new_v4();
        let good: Value = serde_json::to_value(doc_status(user, "x")).unwrap();
        let mut cases = malformed_variants(&good, Uuid::new_v4());
        cases.push(("[1,2]".to_string(), DropReason::NotJson));
        for (payload, reason) in cases {
            assert_eq!(decode(&payload).unwrap_err(), reason, "{payload}");
        }
    }

    #[test]
    fn reassembler_is_bounded_and_expires() {
        let mut r = Reassembler::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        for _ in 0..3 {
            let f = Fragment {
                v: 1,
                frag: FragmentHeader {
                    id: Uuid::new_v4(),
                    seq: 0,
                    total: 2,
                },
                data: B64.encode(b"{"),
            };
            let (res, _) = r.push(f, t0);
            assert!(res.unwrap().is_none());
        }
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.expire(t0 + Duration::from_secs(2)), 2);
        assert_eq!(r.in_flight(), 0);
    }
}
