//! One user's requests in flight, capped (`--max-requests-per-user`): fair
//! by construction, since the count is keyed by the token's user. The
//! token is verified once here and the [`AuthUser`] left in the request's
//! extensions for the handler's extractor. Requests without a valid token
//! are not counted (they end at once with 401), nor are health checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::error::ApiError;
use super::{AppState, bearer};
use crate::auth::AuthUser;

/// Seconds a refused request is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Requests in flight per user.
pub struct UserRequests {
    cap: usize,
    /// Only users with a request in flight.
    held: Mutex<HashMap<Uuid, usize>>,
}

impl UserRequests {
    pub fn new(cap: usize) -> Arc<UserRequests> {
        Arc::new(UserRequests {
            cap: cap.max(1),
            held: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more request of `user`, without waiting.
    pub fn try_acquire(self: &Arc<Self>, user: Uuid) -> Result<UserPermit, ApiError> {
        let mut held = self.lock();
        let mine = held.entry(user).or_insert(0);
        if *mine >= self.cap {
            drop(held);
            metrics::counter!("ragctl_http_requests_refused_total", "reason" => "user_in_flight")
                .increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "you already have {} requests in progress (RAG_MAX_REQUESTS_PER_USER); \
                     wait for one to finish",
                    self.cap
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        }
        *mine += 1;
        Ok(UserPermit {
            owner: self.clone(),
            user,
        })
    }
}

/// One request's slot; given back when dropped.
pub struct UserPermit {
    owner: Arc<UserRequests>,
    user: Uuid,
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(mine) = held.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// Paths never counted: a health checker must always get through.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The middleware: verifies the bearer token once, counts the request
/// against its user until the response body has been written (a `/ws`
/// upgrade until its 101 is; the socket then is not a request).
pub async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(user) = bearer(req.headers()).and_then(|t| state.verifier.verify(t).ok()) else {
        return next.run(req).await;
    };
    let permit = match state.requests.try_acquire(user.user_id) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert::<AuthUser>(user);
    super::guard_body::hold(next.run(req).await, permit)
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
        assert!(r.lock().is_empty());
    }
}
