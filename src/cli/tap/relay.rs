//! What `tap --bus nats` knows of the relay from `<prefix>.relay`: the
//! epoch it follows, the last heartbeat, and what is worth telling (a new
//! epoch, a gap, an oversize envelope, a resignation). A leaf.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::bus::relay_msg::RelayMessage;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelaySeen {
    pub epoch: Option<Uuid>,
    pub seq: u64,
    pub horizon: Option<DateTime<Utc>>,
    /// Epochs seen after the first: failovers (or re-elections).
    pub failovers: u64,
    pub gaps: u64,
    pub oversize: u64,
}

/// Something worth a line (`--no-tui`) or a toast (TUI).
#[derive(Debug, Clone, PartialEq)]
pub struct Notable {
    pub text: String,
    /// Events may have been missed (a gap, an oversize envelope).
    pub alarm: bool,
}

impl RelaySeen {
    /// Takes one relay message; what is worth telling, if anything (a
    /// heartbeat only when it opens an epoch).
    pub fn note(&mut self, m: &RelayMessage) -> Option<Notable> {
        let epoch = m.epoch();
        let new_epoch = self.epoch != Some(epoch);
        if new_epoch && self.epoch.is_some() {
            self.failovers += 1;
        }
        self.epoch = Some(epoch);
        let short = &epoch.to_string()[..8];
        let (text, alarm) = match m {
            RelayMessage::Heartbeat { seq, horizon, .. } => {
                self.seq = *seq;
                self.horizon = Some(horizon.0);
                if !new_epoch {
                    return None;
                }
                (format!("relay epoch {short} leads"), false)
            }
            RelayMessage::Gap { since, reason, .. } => {
                self.gaps += 1;
                (
                    format!("relay gap ({}) since {}", reason.as_str(), since.0),
                    true,
                )
            }
            RelayMessage::Oversize { user_id, .. } => {
                self.oversize += 1;
                (
                    format!("envelope for {user_id} over NATS max_payload: healed from rows"),
                    true,
                )
            }
            RelayMessage::Resigned { .. } => (format!("relay epoch {short} resigned"), false),
        };
        Some(Notable { text, alarm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::relay_msg::{Micros, RelayGap};

    #[test]
    fn heartbeats_are_quiet_but_for_a_new_epoch() {
        let mut seen = RelaySeen::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let hb = |epoch, seq| RelayMessage::Heartbeat {
            epoch,
            seq,
            horizon: Micros(Utc::now()),
        };
        assert!(seen.note(&hb(a, 1)).is_some_and(|n| !n.alarm));
        assert_eq!(seen.note(&hb(a, 2)), None);
        assert_eq!((seen.seq, seen.failovers), (2, 0));
        let gap = RelayMessage::Gap {
            epoch: a,
            seq: 3,
            since: Micros(Utc::now()),
            reason: RelayGap::RelayListenOverflow,
        };
        let n = seen.note(&gap).unwrap();
        assert!(n.alarm && n.text.contains("relay_listen_overflow"), "{n:?}");
        assert!(
            seen.note(&hb(b, 1))
                .unwrap()
                .text
                .contains(&b.to_string()[..8])
        );
        assert_eq!((seen.failovers, seen.gaps), (1, 1));
    }
}
