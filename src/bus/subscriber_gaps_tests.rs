use super::*;
use crate::bus::relay_msg::{Micros, RelayGap};

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

fn beat(epoch: Uuid, h: i64) -> RelayMessage {
    RelayMessage::Heartbeat {
        epoch,
        seq: 1,
        horizon: Micros(at(h)),
    }
}

#[test]
fn a_new_epoch_heals_from_the_last_horizon_of_the_old_one() {
    let (mut t, now) = (Tracker::default(), Instant::now());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // The first heartbeat ever: the catch-ups cover what came before.
    assert_eq!(t.on_message(beat(a, 10), now), None);
    assert_eq!(t.on_message(beat(a, 11), now), None);
    let gap = t.on_message(beat(b, 20), now).unwrap();
    assert_eq!(gap, Gap::all(GapReason::RelayFailover, at(11)));
    assert_eq!(t.epoch(), Some(b));
}

#[test]
fn silence_heals_once_heartbeats_come_back() {
    let (mut t, now) = (Tracker::default(), Instant::now());
    let a = Uuid::new_v4();
    t.on_message(beat(a, 10), now);
    assert!(!t.on_tick(now + Duration::from_secs(1)));
    let later = now + SILENT_AFTER + Duration::from_millis(1);
    assert!(t.on_tick(later));
    assert!(!t.on_tick(later), "reported once");
    let gap = t.on_message(beat(a, 30), later).unwrap();
    assert_eq!(gap, Gap::all(GapReason::RelaySilent, at(10)));
    assert!(!t.silent());
}

#[test]
fn gaps_and_oversize_heal_from_their_since() {
    let mut t = Tracker::default();
    let (e, u) = (Uuid::new_v4(), Uuid::new_v4());
    let gap = RelayMessage::Gap {
        epoch: e,
        seq: 1,
        since: Micros(at(5)),
        reason: RelayGap::RelayListenReconnected,
    };
    let now = Instant::now();
    assert_eq!(
        t.on_message(gap, now),
        Some(Gap::all(GapReason::RelayGap, at(5)))
    );
    let big = RelayMessage::Oversize {
        epoch: e,
        seq: 2,
        user_id: u,
        since: Micros(at(6)),
    };
    let gap = t.on_message(big, now).unwrap();
    assert_eq!((gap.user, gap.since), (Some(u), at(6)));
    assert_eq!(
        t.on_message(RelayMessage::Resigned { epoch: e, seq: 3 }, now),
        None
    );
}

#[test]
fn a_connection_loss_heals_from_a_horizon_received_well_before_it() {
    let mut t = Tracker::default();
    let start = Instant::now();
    let a = Uuid::new_v4();
    for i in 0..6u64 {
        t.on_message(beat(a, i as i64), start + Duration::from_millis(500 * i));
    }
    // Seen at 2.6 s: the newest horizon received by 1.6 s is the one of 1.5 s.
    let seen = start + Duration::from_millis(2600);
    assert_eq!(t.since_before(seen, at(100)), at(3));
    // Nothing that old: the oldest kept.
    assert_eq!(t.since_before(start, at(100)), at(0));
    // No heartbeat ever: a margin before the loss.
    let fresh = Tracker::default();
    assert_eq!(fresh.since_before(start, at(100)), at(90));
}

#[test]
fn no_relay_since_the_start_heals_at_the_first_heartbeat() {
    let now = Instant::now();
    let a = Uuid::new_v4();
    // A relay heard at once: nothing to heal.
    let mut t = Tracker::starting(now, at(100));
    assert!(!t.on_tick(now + Duration::from_millis(400)));
    assert_eq!(t.on_message(beat(a, 99), now), None);
    // None for longer than the bound: healed from before the start.
    let mut t = Tracker::starting(now, at(100));
    let later = now + SILENT_AFTER + Duration::from_millis(1);
    assert!(t.on_tick(later));
    let gap = t.on_message(beat(a, 120), later).unwrap();
    assert_eq!(gap, Gap::all(GapReason::RelaySilent, at(90)));
}
