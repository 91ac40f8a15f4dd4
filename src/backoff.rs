//! Exponential backoff with jitter, shared by everything that reconnects or
//! retries: the LISTEN connection, the workers, `serve`'s supervisor,
//! `ws-client` and the HTTP accept loop. A leaf: it imports nothing from the crate.

use std::time::Duration;

/// Exponential backoff with jitter: fast first retry, capped, reset by the
/// caller after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            next: base,
            base,
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        // ±25% jitter so a fleet does not reconnect in lockstep.
        let factor = 0.75 + rand::random::<f64>() * 0.5;
        d.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_millis(1250));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
