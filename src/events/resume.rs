//! Resume on connect: the cursor a client hands back (`/ws?since=`), and
//! the catch-up frames built from the rows changed since it, with the same
//! payload structs as the live events.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::contract::EventType;
use super::payloads::{
    DocumentCreated, DocumentStatusUpdated, JobStatusUpdated, MessageCreated, MessageStatusUpdated,
    Outgoing, Payload,
};
use super::wire::{Envelope, Frame};

use crate::db::changes::Changes;

/// A cursor may be this far in the server's future (clock skew).
pub const CLOCK_SKEW: Duration = Duration::seconds(5);

const CURSOR_VERSION: u8 = 1;

/// Why a `since` value is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("`since` is neither an RFC 3339 timestamp nor a cursor this server issued")]
    Malformed,
    #[error("`since` is a cursor of version {0}; this server issues version 1")]
    Version(u8),
    #[error("`since` is out of range")]
    OutOfRange,
    #[error("`since` is in the future ({0}); send the newest timestamp you hold")]
    Future(DateTime<Utc>),
}

/// A point in time to resume from: every row changed at or after it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub DateTime<Utc>);

impl Cursor {
    /// The opaque form: base64url of the version byte and the time in
    /// microseconds (big-endian i64).
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 9];
        bytes[0] = CURSOR_VERSION;
        bytes[1..].copy_from_slice(&self.0.timestamp_micros().to_be_bytes());
        B64URL.encode(bytes)
    }

    /// Either form, checked against `now` (not after it beyond the skew).
    pub fn parse(text: &str, now: DateTime<Utc>) -> Result<Cursor, CursorError> {
        let at = match DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => Self::decode(text)?,
        };
        if at > now + CLOCK_SKEW {
            return Err(CursorError::Future(at));
        }
        Ok(Cursor(at))
    }

    fn decode(text: &str) -> Result<DateTime<Utc>, CursorError> {
        let bytes = B64URL.decode(text).map_err(|_| CursorError::Malformed)?;
        let Some((&version, micros)) = bytes.split_first() else {
            return Err(CursorError::Malformed);
        };
        if version != CURSOR_VERSION {
            return Err(CursorError::Version(version));
        }
        let micros: [u8; 8] = micros.try_into().map_err(|_| CursorError::Malformed)?;
        DateTime::from_timestamp_micros(i64::from_be_bytes(micros)).ok_or(CursorError::OutOfRange)
    }
}

/// Which entity (document, job or message, and its id) a frame is the
/// state of: a frame whose entity was already sent at the same or a newer
/// stamp adds nothing (a late `created` included).
pub type StateKey = (&'static str, Uuid);

fn entity(kind: EventType) -> &'static str {
    match kind {
        EventType::DocumentCreated | EventType::DocumentStatusUpdated => "document",
        EventType::JobStatusUpdated => "job",
        EventType::MessageCreated | EventType::MessageStatusUpdated => "message",
    }
}

/// The current state of one row as an event: what a catch-up or a heal
/// sends in place of the events it missed.
pub struct State {
    pub key: StateKey,
    pub at: DateTime<Utc>,
    pub out: Outgoing,
}

impl State {
    /// `{type, payload}` as text.
    pub fn text(&self) -> String {
        frame_text(self.out.kind, &self.out.payload)
    }

    /// As an envelope of the row's user, for the hub.
    pub fn into_envelope(self, origin: &str) -> Envelope {
        Envelope::new(self.out.user_id, self.out.kind, self.out.payload, origin)
    }
}

fn state<P: Payload>(user: Uuid, id: Uuid, at: DateTime<Utc>, payload: &P) -> State {
    State {
        key: (entity(P::TYPE), id),
        at,
        out: Outgoing::new(user, payload),
    }
}

/// `{type, payload}` as text.
pub fn frame_text(kind: EventType, payload: &Value) -> String {
    serde_json::to_string(&Frame {
        kind: kind.as_str(),
        payload,
    })
    .expect("a JSON value always serialises")
}

/// Who a row with a `created` and a `status_updated` event belongs to, and
/// its stamps.
struct Stamps {
    user: Uuid,
    id: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Stamps {
    /// The `created` state if the row was created at or after `since`, and
    /// the `status_updated` one if it changed before `since` or after it
    /// was created.
    fn push<C: Payload, U: Payload>(
        &self,
        out: &mut Vec<State>,
        since: DateTime<Utc>,
        created: &C,
        updated: &U,
    ) {
        if self.created_at >= since {
            out.push(state(self.user, self.id, self.created_at, created));
        }
        if self.created_at < since || self.updated_at > self.created_at {
            out.push(state(self.user, self.id, self.updated_at, updated));
        }
    }
}

/// The states that bring a client holding everything before `since` up to
/// date, oldest first: `*.created` for rows created at or after it, and
/// `*.status_updated` for rows changed after they were created. Rows of
/// several users keep each user's order.
pub fn catch_up_states(changes: &Changes, since: DateTime<Utc>) -> Vec<State> {
    let mut out = Vec::new();
    for d in &changes.documents {
        let row = Stamps {
            user: d.user_id,
            id: d.id,
            created_at: d.created_at,
            updated_at: d.updated_at,
        };
        row.push(
            &mut out,
            since,
            &DocumentCreated::from(d),
            &DocumentStatusUpdated::from(d),
        );
    }
    for j in &changes.jobs {
        out.push(state(
            j.user_id,
            j.id,
            j.updated_at,
            &JobStatusUpdated::from(j),
        ));
    }
    for m in &changes.messages {
        let row = Stamps {
            user: m.user_id,
            id: m.id,
            created_at: m.created_at,
            updated_at: m.updated_at,
        };
        row.push(
            &mut out,
            since,
            &MessageCreated::from(m),
            &MessageStatusUpdated::from(m),
        );
    }
    // Stable: a row's created frame stays before its status frame.
    out.sort_by_key(|f| f.at);
    out
}

/// The entity and stamp of a live event, from its payload.
pub fn state_of(env: &Envelope) -> Option<(StateKey, DateTime<Utc>)> {
    let (id, at) = match env.kind {
        EventType::DocumentCreated => ("document_id", "created_at"),
        EventType::DocumentStatusUpdated => ("document_id", "updated_at"),
        EventType::JobStatusUpdated => ("job_id", "updated_at"),
        EventType::MessageCreated => ("message_id", "created_at"),
        EventType::MessageStatusUpdated => ("message_id", "updated_at"),
    };
    let id = env.payload.get(id)?.as_str()?.parse().ok()?;
    let at = env.payload.get(at)?.as_str()?.parse().ok()?;
    Some(((entity(env.kind), id), at))
}

/// The newest stamp sent per entity during a catch-up.
#[derive(Default)]
pub struct Sent(HashMap<StateKey, DateTime<Utc>>);

impl Sent {
    pub fn note(&mut self, key: StateKey, at: DateTime<Utc>) {
        let slot = self.0.entry(key).or_insert(at);
        *slot = (*slot).max(at);
    }

    /// Whether a live event adds nothing to what was sent.
    pub fn covers(&self, env: &Envelope) -> bool {
        state_of(env).is_some_and(|(key, at)| self.0.get(&key).is_some_and(|sent| *sent >= at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::documents::Document;
    use crate::db::status::DocumentStatus;
    use serde_json::json;

    fn doc(created: DateTime<Utc>, updated: DateTime<Utc>) -> Document {
        Document {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            filename: "a.txt".into(),
            mime_type: "text/plain".into(),
            size_bytes: 1,
            status: DocumentStatus::Parsed,
            error_message: None,
            created_at: created,
            updated_at: updated,
        }
    }

    #[test]
    fn frames_are_created_then_updated_oldest_first_and_cover_older_live_events() {
        let t = |s: i64| DateTime::from_timestamp(1_795_000_000 + s, 0).unwrap();
        let (old, fresh, untouched) = (doc(t(0), t(30)), doc(t(10), t(20)), doc(t(15), t(15)));
        let changes = Changes {
            documents: vec![fresh.clone(), untouched.clone(), old.clone()],
            ..Changes::default()
        };
        let frames = catch_up_states(&changes, t(5));
        let got: Vec<(Uuid, &str)> = frames
            .iter()
            .map(|f| {
                let v: Value = serde_json::from_str(&f.text()).unwrap();
                (
                    f.key.1,
                    if v["type"] == "document.created" {
                        "c"
                    } else {
                        "u"
                    },
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (fresh.id, "c"),
                (untouched.id, "c"),
                (fresh.id, "u"),
                (old.id, "u")
            ]
        );
        let mut sent = Sent::default();
        for f in &frames {
            sent.note(f.key, f.at);
        }
        let live = |kind, at: DateTime<Utc>| {
            Envelope::new(
                Uuid::nil(),
                kind,
                json!({"document_id": fresh.id, "status": "parsing", "updated_at": at, "created_at": at}),
                "test",
            )
        };
        assert!(sent.covers(&live(EventType::DocumentStatusUpdated, t(20))));
        assert!(sent.covers(&live(EventType::DocumentCreated, t(10))));
        assert!(!sent.covers(&live(EventType::DocumentStatusUpdated, t(21))));
    }

    #[test]
    fn both_cursor_forms_parse_and_bad_ones_are_refused() {
        let now = Utc::now();
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let c = Cursor(at);
        assert_eq!(Cursor::parse(&c.encode(), now), Ok(c));
        let documented = Cursor("2026-11-28T10:00:00Z".parse().unwrap());
        assert_eq!(documented.encode(), "AQAGYVM9XcgA", "docs/events.md");
        assert_eq!(
            Cursor::parse("2026-11-28T10:00:00.123456Z", now)
                .unwrap()
                .0
                .timestamp_micros(),
            1_795_860_000_123_456
        );
        assert_eq!(Cursor::parse("garbage!", now), Err(CursorError::Malformed));
        assert_eq!(Cursor::parse("", now), Err(CursorError::Malformed));
        assert_eq!(Cursor::parse("AQID", now), Err(CursorError::Malformed));
        let mut v2 = B64URL.decode(c.encode()).unwrap();
        v2[0] = 2;
        assert_eq!(
            Cursor::parse(&B64URL.encode(&v2), now),
            Err(CursorError::Version(2))
        );
        let future = Cursor(now + Duration::minutes(5)).encode();
        assert!(matches!(
            Cursor::parse(&future, now),
            Err(CursorError::Future(_))
        ));
        assert!(Cursor::parse(&Cursor(now + Duration::seconds(1)).encode(), now).is_ok());
    }
}
