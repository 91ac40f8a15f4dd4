//! Why the bridge may have missed events, and since when: the items a
//! listener or the NATS bus hands the router to heal from the rows. A leaf.

use chrono::{DateTime, Utc};

/// Notifications may have been missed since `since`: every transaction
/// that committed after the last notification known to be read started
/// at or after it (see `listener::Horizons`). For a reconnect, whatever commits
/// after the gap item is sent reaches the new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub reason: GapReason,
    pub since: DateTime<Utc>,
    /// Only this user's events may have been missed (an envelope too
    /// large for NATS); `None`: anyone's.
    pub user: Option<uuid::Uuid>,
}

impl Gap {
    /// A gap for every user.
    pub fn all(reason: GapReason, since: DateTime<Utc>) -> Gap {
        Gap {
            reason,
            since,
            user: None,
        }
    }
}

/// Why events may have been missed: the label heals and gaps are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    Reconnected,
    Overflow,
    /// The API's NATS connection came back (`bus::subscriber`).
    NatsReconnected,
    /// The NATS client dropped messages for a subscription that was full.
    NatsSlowConsumer,
    /// A relay heartbeat with a new epoch: the old leader may have died
    /// with events unpublished.
    RelayFailover,
    /// The relay said it may have failed to publish (its LISTEN or NATS
    /// connection dropped, or its queue overflowed).
    RelayGap,
    /// Heartbeats stopped for a while, then came back.
    RelaySilent,
    /// One user's envelope was over the NATS server's `max_payload`.
    RelayOversize,
}

impl GapReason {
    pub const ALL: [GapReason; 8] = [
        GapReason::Reconnected,
        GapReason::Overflow,
        GapReason::NatsReconnected,
        GapReason::NatsSlowConsumer,
        GapReason::RelayFailover,
        GapReason::RelayGap,
        GapReason::RelaySilent,
        GapReason::RelayOversize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Reconnected => "listener_reconnected",
            GapReason::Overflow => "listener_overflow",
            GapReason::NatsReconnected => "nats_reconnected",
            GapReason::NatsSlowConsumer => "nats_slow_consumer",
            GapReason::RelayFailover => "relay_failover",
            GapReason::RelayGap => "relay_gap",
            GapReason::RelaySilent => "relay_silent",
            GapReason::RelayOversize => "relay_oversize",
        }
    }
}
