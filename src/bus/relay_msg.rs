//! The messages on `<prefix>.relay` (BUS.md): heartbeats with the relay's
//! horizon, gaps, oversize notices and a resignation, each stamped with the
//! leadership term's epoch and a sequence number. A leaf.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why the relay may have missed events (the `reason` of a `gap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayGap {
    RelayListenReconnected,
    RelayListenOverflow,
    RelayNatsReconnected,
}

impl RelayGap {
    pub const ALL: [RelayGap; 3] = [
        RelayGap::RelayListenReconnected,
        RelayGap::RelayListenOverflow,
        RelayGap::RelayNatsReconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayGap::RelayListenReconnected => "relay_listen_reconnected",
            RelayGap::RelayListenOverflow => "relay_listen_overflow",
            RelayGap::RelayNatsReconnected => "relay_nats_reconnected",
        }
    }
}

/// An instant as BUS.md writes it: RFC 3339, microseconds, UTC (`Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Micros(pub DateTime<Utc>);

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<DateTime<Utc>>()
            .map(Micros)
            .map_err(serde::de::Error::custom)
    }
}

/// One message on the relay subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RelayMessage {
    /// Every event committed before `horizon` has been published already.
    Heartbeat {
        epoch: Uuid,
        seq: u64,
        horizon: Micros,
    },
    /// Events committed at or after `since` may not have been published.
    Gap {
        epoch: Uuid,
        seq: u64,
        since: Micros,
        reason: RelayGap,
    },
    /// An envelope of `user_id` was over the server's `max_payload`.
    Oversize {
        epoch: Uuid,
        seq: u64,
        user_id: Uuid,
        since: Micros,
    },
    /// The leader stopped cleanly (SIGTERM).
    Resigned { epoch: Uuid, seq: u64 },
}

impl RelayMessage {
    pub fn epoch(&self) -> Uuid {
        match self {
            RelayMessage::Heartbeat { epoch, .. }
            | RelayMessage::Gap { epoch, .. }
            | RelayMessage::Oversize { epoch, .. }
            | RelayMessage::Resigned { epoch, .. } => *epoch,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a relay message always serialises")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wire_form_is_the_contract() {
        let epoch = Uuid::new_v4();
        let at: DateTime<Utc> = "2026-12-07T01:02:03.456789Z".parse().unwrap();
        let hb = RelayMessage::Heartbeat {
            epoch,
            seq: 7,
            horizon: Micros(at),
        };
        let v: serde_json::Value = serde_json::from_str(&hb.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"kind": "heartbeat", "epoch": epoch, "seq": 7, "horizon": "2026-12-07T01:02:03.456789Z"})
        );
        let gap = RelayMessage::Gap {
            epoch,
            seq: 8,
            since: Micros(at),
            reason: RelayGap::RelayNatsReconnected,
        };
        let v: serde_json::Value = serde_json::from_str(&gap.to_json()).unwrap();
        assert_eq!(v["kind"], "gap");
        assert_eq!(v["reason"], "relay_nats_reconnected");
        let back: RelayMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, gap);
        let resigned = RelayMessage::Resigned { epoch, seq: 9 };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&resigned.to_json()).unwrap(),
            json!({"kind": "resigned", "epoch": epoch, "seq": 9})
        );
        for r in RelayGap::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
