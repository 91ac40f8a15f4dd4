//! The subscriber's gap rules (BUS.md): which relay messages and which
//! connection events mean that events may have been missed, and from when
//! to heal. Pure: the subscriber task feeds it and sends what it returns.
//!
//! A heartbeat's `horizon` says every event committed before it was
//! published before the heartbeat. So a message lost after a heartbeat
//! was *received* was committed at or after its horizon: a gap is healed
//! from the horizon of a heartbeat received before the loss. Connection
//! events reach this task on another channel than the relay's messages,
//! so for those the horizon is taken from a heartbeat received at least
//! [`EVENT_MARGIN`] before the event was seen (older is safe: re-sent
//! states are harmless, missed ones are not).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::relay_msg::RelayMessage;
use crate::db::listener::{Gap, GapReason};

/// Heartbeats come every 500 ms; past this the relay is taken for dead.
pub const SILENT_AFTER: Duration = Duration::from_secs(3);

/// How far before a connection event the horizon it heals from was received.
pub const EVENT_MARGIN: Duration = Duration::from_secs(1);

/// Horizons kept (about 8 s of heartbeats).
const KEPT: usize = 16;

/// With no heartbeat ever received (no relay yet), a reconnect heals this
/// far back from when the connection was lost.
const NO_HORIZON_MARGIN: Duration = Duration::from_secs(10);

/// What the subscriber knows of the relay.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Newest last: (received, horizon).
    horizons: VecDeque<(Instant, DateTime<Utc>)>,
    epoch: Option<Uuid>,
    last_beat: Option<Instant>,
    /// Heartbeats stopped for longer than [`SILENT_AFTER`].
    silent: bool,
    /// When the subscriber started (wall clock), if it counts as a beat.
    started: Option<DateTime<Utc>>,
}

impl Tracker {
    /// A tracker for a subscriber starting now: no heartbeat within
    /// [`SILENT_AFTER`] is a silence like any other, as sockets may
    /// subscribe while no relay publishes; the first heartbeat then heals
    /// from a margin before the start.
    pub fn starting(now: Instant, wall: DateTime<Utc>) -> Tracker {
        Tracker {
            last_beat: Some(now),
            started: Some(wall),
            ..Tracker::default()
        }
    }

    /// The epoch of the relay heard last, if any.
    pub fn epoch(&self) -> Option<Uuid> {
        self.epoch
    }

    #[cfg(test)]
    pub fn silent(&self) -> bool {
        self.silent
    }

    /// The gap a relay message tells of, if any.
    pub fn on_message(&mut self, msg: RelayMessage, now: Instant) -> Option<Gap> {
        match msg {
            RelayMessage::Heartbeat { epoch, horizon, .. } => self.beat(epoch, horizon.0, now),
            RelayMessage::Gap { since, .. } => Some(Gap::all(GapReason::RelayGap, since.0)),
            RelayMessage::Oversize { user_id, since, .. } => Some(Gap {
                reason: GapReason::RelayOversize,
                since: since.0,
                user: Some(user_id),
            }),
            // The next leader's first heartbeat (a new epoch) heals.
            RelayMessage::Resigned { .. } => None,
        }
    }

    fn beat(&mut self, epoch: Uuid, horizon: DateTime<Utc>, now: Instant) -> Option<Gap> {
        let last = self.horizons.back().map(|&(_, h)| h);
        let new_epoch = self.epoch.is_some_and(|e| e != epoch);
        let was_silent = std::mem::replace(&mut self.silent, false);
        self.epoch = Some(epoch);
        self.last_beat = Some(now);
        if self.horizons.len() == KEPT {
            self.horizons.pop_front();
        }
        self.horizons.push_back((now, horizon));
        let since = match (last, self.started) {
            (Some(h), _) => h,
            // No relay since the start: sockets may have missed events.
            (None, Some(wall)) if was_silent => wall - NO_HORIZON_MARGIN,
            // The first relay heard within the silence bound published
            // all along: nothing was missed.
            (None, _) => return None,
        };
        match (new_epoch, was_silent) {
            (true, _) => Some(Gap::all(GapReason::RelayFailover, since)),
            (false, true) => Some(Gap::all(GapReason::RelaySilent, since)),
            (false, false) => None,
        }
    }

    /// Marks the relay silent once heartbeats stopped for too long; true
    /// when it just became so (the heal waits for the next heartbeat).
    pub fn on_tick(&mut self, now: Instant) -> bool {
        let stale = self
            .last_beat
            .is_some_and(|at| now.duration_since(at) > SILENT_AFTER);
        stale && !std::mem::replace(&mut self.silent, true)
    }

    /// Where to heal from after a loss seen at `seen` (a reconnect: when
    /// the connection was lost; a slow consumer: when it was reported).
    pub fn since_before(&self, seen: Instant, seen_wall: DateTime<Utc>) -> DateTime<Utc> {
        let cutoff = seen.checked_sub(EVENT_MARGIN).unwrap_or(seen);
        let before = self.horizons.iter().rev().find(|&&(at, _)| at <= cutoff);
        match before.or(self.horizons.front()) {
            Some(&(_, h)) => h,
            None => seen_wall - NO_HORIZON_MARGIN,
        }
    }
}

#[cfg(test)]
#[path = "subscriber_gaps_tests.rs"]
mod tests;
