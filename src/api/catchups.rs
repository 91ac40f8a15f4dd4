//! How many catch-ups (`/ws?since=`) run at once: at most `max` on this
//! process and `per_user` for one user. A slot is taken before the upgrade
//! and held by the socket until its catch-up ends; a request past a cap is
//! refused before the upgrade (429 for the user's cap, 503 for the
//! process's, both with `Retry-After`), which realtime.js retries with its
//! backoff, keeping its cursor.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::shares::{PerUser, UserSlot};

/// Seconds a refused client is asked to wait: a catch-up takes about that.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The process's catch-up slots; cheap to clone.
#[derive(Clone, Debug)]
pub struct Catchups {
    per_user: PerUser,
    total: Arc<Semaphore>,
    max: usize,
}

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
    _user: UserSlot,
    _total: OwnedSemaphorePermit,
    total: Arc<Semaphore>,
    max: usize,
}

impl Catchups {
    pub fn new(max: usize, per_user: usize) -> Catchups {
        Catchups {
            per_user: PerUser::new(per_user),
            total: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for `user`, or why not (counted).
    pub fn try_acquire(&self, user: Uuid) -> Result<Slot, Refused> {
        let taken = match self.per_user.try_take(user) {
            None => Err(Refused::User),
            Some(mine) => match self.total.clone().try_acquire_owned() {
                Ok(permit) => Ok((mine, permit)),
                Err(_) => Err(Refused::Server),
            },
        };
        let (mine, permit) = taken.inspect_err(|r| {
            let reason = if *r == Refused::User {
                "user"
            } else {
                "server"
            };
            metrics::counter!("ragctl_ws_catchups_refused_total", "reason" => reason).increment(1);
        })?;
        let slot = Slot {
            _user: mine,
            _total: permit,
            total: self.total.clone(),
            max: self.max,
        };
        slot.gauge(0);
        Ok(slot)
    }
}

impl Slot {
    /// Sets the running gauge, `leaving` slots about to be given back.
    fn gauge(&self, leaving: usize) {
        let running = self.max - self.total.available_permits() - leaving;
        metrics::gauge!("ragctl_ws_catchups_running").set(running as f64);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge(1);
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
        assert_eq!(c.per_user.users(), 2);
    }
}
