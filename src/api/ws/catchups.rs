//! How many catch-ups (`/ws?since=`) run at once: at most `max` on this
//! process and `per_user` for one user. A slot is taken before the upgrade
//! and held by the socket until its catch-up ends; a request past a cap is
//! refused before the upgrade (429 for the user's cap, 503 for the
//! process's, both with `Retry-After`), which realtime.js retries with its
//! backoff, keeping its cursor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use uuid::Uuid;

use crate::api::error::ApiError;

/// Seconds a refused client is asked to wait: a catch-up takes about that.
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_user: HashMap<Uuid, usize>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    per_user: usize,
    running: Mutex<Running>,
}

/// The process's catch-up slots; cheap to clone.
#[derive(Debug, Clone)]
pub struct Catchups(Arc<Inner>);

/// Why a catch-up was refused (the metric's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The user runs `per_user` catch-ups already.
    User,
    /// The process runs `max` catch-ups already.
    Server,
}

/// A running catch-up's slot; freed on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Catchups,
    user: Uuid,
}

impl Catchups {
    pub fn new(max: usize, per_user: usize) -> Catchups {
        Catchups(Arc::new(Inner {
            max,
            per_user,
            running: Mutex::new(Running::default()),
        }))
    }

    /// A slot for `user`, or why not (counted).
    pub fn try_acquire(&self, user: Uuid) -> Result<Slot, Refused> {
        let mut running = self.0.running.lock().expect("catch-up slots lock");
        let mine = running.per_user.get(&user).copied().unwrap_or(0);
        let refused = if mine >= self.0.per_user {
            Some(Refused::User)
        } else if running.total >= self.0.max {
            Some(Refused::Server)
        } else {
            None
        };
        if let Some(r) = refused {
            let reason = if r == Refused::User { "user" } else { "server" };
            metrics::counter!("ragctl_ws_catchups_refused_total", "reason" => reason).increment(1);
            return Err(r);
        }
        running.total += 1;
        *running.per_user.entry(user).or_insert(0) += 1;
        metrics::gauge!("ragctl_ws_catchups_running").set(running.total as f64);
        Ok(Slot {
            owner: self.clone(),
            user,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.owner.0.running.lock().expect("catch-up slots lock");
        running.total -= 1;
        if let Some(n) = running.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                running.per_user.remove(&self.user);
            }
        }
        metrics::gauge!("ragctl_ws_catchups_running").set(running.total as f64);
    }
}

impl Refused {
    /// The refusal in the API's error shape.
    pub fn into_error(self) -> ApiError {
        let (status, message) = match self {
            Refused::User => (
                StatusCode::TOO_MANY_REQUESTS,
                "this user already runs its maximum of concurrent catch-ups (/ws?since=); retry later",
            ),
            Refused::Server => (
                StatusCode::SERVICE_UNAVAILABLE,
                "this server runs its maximum of concurrent catch-ups (/ws?since=); retry later",
            ),
        };
        ApiError::new(status, "too_many_catchups", message).retry_after(RETRY_AFTER_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_per_process_and_frees_on_drop() {
        let c = Catchups::new(3, 2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = c.try_acquire(a).unwrap();
        let _a2 = c.try_acquire(a).unwrap();
        assert_eq!(c.try_acquire(a).unwrap_err(), Refused::User);
        let _b1 = c.try_acquire(b).unwrap();
        assert_eq!(c.try_acquire(b).unwrap_err(), Refused::Server);
        drop(a1);
        let _b2 = c.try_acquire(b).unwrap();
        assert_eq!(c.try_acquire(a).unwrap_err(), Refused::Server);
        assert_eq!(c.0.running.lock().unwrap().per_user.len(), 2);
    }
}
