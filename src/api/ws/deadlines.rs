//! A socket's three deadlines (next ping, idle timeout, token expiry),
//! driven by one timer instead of three: each tokio `Sleep` is about 110
//! bytes of the socket's task, and `Interval` boxes one more, which adds up
//! over 100,000 idle sockets (see docs/capacity-memory.md).
//!
//! The first ping comes at a random point of the second half of the first
//! interval: sockets that connected together (a reconnect storm, a
//! benchmark) would otherwise be pinged together, every interval, in one
//! burst that delays the events around it.

use std::time::Duration;

use tokio::time::Instant;

/// A token's expiry is honoured at most this far ahead: any `exp` up to
/// u64::MAX is a valid claim, and `Instant + Duration` panics on overflow.
/// A socket whose token claims more closes with 4001 after this (the client
/// refreshes or reconnects, as for any expiry).
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a token that expires at `exp` (seconds since the epoch) does, given
/// the wall clock `now_ms` (milliseconds since the epoch) at the instant
/// `now`: never past `MAX_TOKEN_LIFE`, never a panic.
pub fn expiry_instant(exp: u64, now_ms: u64, now: Instant) -> Instant {
    let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms);
    let left = Duration::from_millis(left_ms).min(MAX_TOKEN_LIFE);
    // A year past any monotonic clock reading fits; `now` (expired at
    // once) is a refusal, not a panic, if it ever did not.
    now.checked_add(left).unwrap_or(now)
}

/// The effective expiry of a token claiming `exp`, in seconds since the
/// epoch (what `auth.refreshed` reports).
pub fn capped_exp(exp: u64, now_secs: u64) -> u64 {
    exp.min(now_secs.saturating_add(MAX_TOKEN_LIFE.as_secs()))
}

/// What is due when the socket's timer fires, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The token expired (close 4001).
    Expiry,
    /// Nothing came from the client within the idle timeout (close 4002).
    Idle,
    /// Time to ping the client.
    Ping,
}

#[derive(Debug, Clone)]
pub struct Deadlines {
    ping: Instant,
    idle: Instant,
    expiry: Instant,
    ping_every: Duration,
    idle_after: Duration,
}

impl Deadlines {
    /// The first ping goes `first_ping` (of an interval, in (0, 1]) after
    /// `now`, then one every interval.
    pub fn new(
        now: Instant,
        ping_every: Duration,
        idle_after: Duration,
        expiry: Instant,
        first_ping: f64,
    ) -> Self {
        Deadlines {
            ping: now + ping_every.mul_f64(first_ping.clamp(f64::EPSILON, 1.0)),
            idle: now + idle_after,
            expiry,
            ping_every,
            idle_after,
        }
    }

    /// When the timer should next fire.
    pub fn next(&self) -> Instant {
        self.ping.min(self.idle).min(self.expiry)
    }

    /// What is due at `now`, if anything (a timer that fired early because
    /// the idle deadline moved is not an error: the caller re-arms it). A
    /// due ping schedules the next one.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if now >= self.expiry {
            return Some(Due::Expiry);
        }
        if now >= self.idle {
            return Some(Due::Idle);
        }
        if now >= self.ping {
            // A late tick does not burst: the next ping is a full interval on.
            self.ping = now + self.ping_every;
            return Some(Due::Ping);
        }
        None
    }

    /// A frame came from the client: the idle deadline moves on. Only ever
    /// later, so the timer need not be re-armed now.
    pub fn heard(&mut self, now: Instant) {
        self.idle = now + self.idle_after;
    }

    /// A refreshed token; may be earlier than the old one, so the caller
    /// re-arms the timer.
    pub fn expire_at(&mut self, expiry: Instant) {
        self.expiry = expiry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(20);
    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn pings_every_interval_until_the_idle_deadline() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, PING, IDLE, t0 + Duration::from_secs(3600), 1.0);
        assert_eq!(d.next(), t0 + PING);
        assert_eq!(d.due(t0 + PING / 2), None, "an early wake is nothing");
        assert_eq!(d.due(t0 + PING), Some(Due::Ping));
        assert_eq!(d.next(), t0 + 2 * PING);
        // Late by 5 s: the next ping is a full interval after this one.
        let late = t0 + 2 * PING + Duration::from_secs(5);
        assert_eq!(d.due(late), Some(Due::Ping));
        assert_eq!(d.next(), t0 + IDLE, "the idle deadline comes first now");
        assert_eq!(d.due(t0 + IDLE), Some(Due::Idle));
    }

    #[test]
    fn the_first_ping_can_come_early_but_never_late() {
        let t0 = Instant::now();
        let early = Deadlines::new(t0, PING, IDLE, t0 + IDLE * 60, 0.5);
        assert_eq!(early.next(), t0 + PING / 2);
        let clamped = Deadlines::new(t0, PING, IDLE, t0 + IDLE * 60, 7.0);
        assert_eq!(clamped.next(), t0 + PING);
    }

    #[test]
    fn a_frame_from_the_client_moves_only_the_idle_deadline() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, PING, IDLE, t0 + Duration::from_secs(3600), 1.0);
        d.heard(t0 + Duration::from_secs(50));
        assert_eq!(d.due(t0 + IDLE), Some(Due::Ping), "not idle any more");
        assert_eq!(d.due(t0 + Duration::from_secs(110)), Some(Due::Idle));
    }

    #[test]
    fn a_far_future_expiry_is_capped_not_a_panic() {
        let t0 = Instant::now();
        let now_ms = 1_795_000_000_000;
        assert_eq!(expiry_instant(u64::MAX, now_ms, t0), t0 + MAX_TOKEN_LIFE);
        assert_eq!(expiry_instant(0, now_ms, t0), t0, "long expired");
        let in_3s = expiry_instant(now_ms / 1000 + 3, now_ms + 500, t0);
        assert_eq!(
            in_3s,
            t0 + Duration::from_millis(2500),
            "to the millisecond"
        );
        assert_eq!(capped_exp(u64::MAX, 100), 100 + MAX_TOKEN_LIFE.as_secs());
        assert_eq!(capped_exp(150, 100), 150);
        assert_eq!(capped_exp(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn expiry_wins_over_everything_and_a_refresh_can_bring_it_forward() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, PING, IDLE, t0 + Duration::from_secs(3600), 1.0);
        d.expire_at(t0 + Duration::from_secs(5));
        assert_eq!(d.next(), t0 + Duration::from_secs(5));
        assert_eq!(d.due(t0 + IDLE), Some(Due::Expiry));
        let mut past = Deadlines::new(t0, PING, IDLE, t0, 1.0);
        assert_eq!(past.due(t0), Some(Due::Expiry));
    }
}
