//! One user's requests in flight, capped (`--max-requests-per-user`): fair
//! by construction, since the count is keyed by the token's user. `gate.rs`
//! is the middleware that counts them.

use std::sync::Arc;

use axum::http::StatusCode;
use uuid::Uuid;

use super::error::ApiError;
use super::shares::{PerUser, UserSlot};

/// Seconds a refused request is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Requests in flight per user.
pub struct UserRequests(PerUser);

/// One request's slot; given back when dropped.
pub type UserPermit = UserSlot;

impl UserRequests {
    pub fn new(cap: usize) -> Arc<UserRequests> {
        Arc::new(UserRequests(PerUser::new(cap.max(1))))
    }

    /// A slot for one more request of `user`, without waiting.
    pub fn try_acquire(&self, user: Uuid) -> Result<UserPermit, ApiError> {
        self.0.try_take(user).ok_or_else(|| {
            metrics::counter!("ragctl_http_requests_refused_total", "reason" => "user_in_flight")
                .increment(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "you already have {} requests in progress (RAG_MAX_REQUESTS_PER_USER); \
                     wait for one to finish",
                    self.0.cap()
                ),
            )
            .retry_after(RETRY_AFTER_SECS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_the_cap_and_gets_it_back() {
        let r = UserRequests::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (p1, _p2) = (r.try_acquire(a).unwrap(), r.try_acquire(a).unwrap());
        let e = r.try_acquire(a).err().unwrap();
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(1)));
        assert!(r.try_acquire(b).is_ok(), "another user is not affected");
        drop(p1);
        let _p3 = r.try_acquire(a).unwrap();
        drop(_p3);
        drop(_p2);
        assert_eq!(r.0.users(), 0);
    }
}
