//! One user's share of what the process holds, fair by construction: a
//! count per user of what they hold now (WebSockets, chat searches),
//! refused past a cap without waiting, and the search gate, the part of the
//! database pool chat searches may hold so that REST always keeps the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::error::ApiError;

/// Seconds a request refused for its user's share is told to wait.
pub const RETRY_AFTER_SECS: u64 = 2;

/// How long a chat search waits for a slot of the search pool before 503.
pub const SEARCH_WAIT: Duration = Duration::from_secs(5);

type Counts = Arc<Mutex<HashMap<Uuid, usize>>>;

/// How many of something each user holds, at most `cap` each. Only users
/// holding something have an entry, so the map is bounded by what is held.
#[derive(Clone, Debug)]
pub struct PerUser {
    cap: usize,
    held: Counts,
}

/// One unit held by a user; given back on drop.
#[derive(Debug)]
pub struct UserSlot {
    held: Counts,
    user: Uuid,
}

impl PerUser {
    pub fn new(cap: usize) -> PerUser {
        PerUser {
            cap,
            held: Counts::default(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A slot for `user`, or `None` at once if they hold `cap` already.
    pub fn try_take(&self, user: Uuid) -> Option<UserSlot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.entry(user).or_insert(0);
        if *mine >= self.cap {
            if *mine == 0 {
                held.remove(&user); // cap 0: never leave an empty entry
            }
            return None;
        }
        *mine += 1;
        Some(UserSlot {
            held: self.held.clone(),
            user,
        })
    }

    /// What `user` holds now.
    pub fn held_by(&self, user: Uuid) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&user).copied().unwrap_or(0)
    }

    /// Users holding at least one slot.
    pub fn users(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = held.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// The 429 for a WebSocket past `--ws-max-per-user`, counted.
pub fn too_many_sockets(cap: usize) -> ApiError {
    metrics::counter!("ragctl_ws_refused_total", "reason" => "user_cap").increment(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sockets",
        format!(
            "you hold {cap} WebSockets on this server, your share \
             (--ws-max-per-user / RAG_WS_MAX_PER_USER); close one first"
        ),
    )
    .retry_after(RETRY_AFTER_SECS)
}

/// Chat searches in flight: at most `per_user` per user, and at most
/// `pool.size` at once for the process, each holding one connection of the
/// API's pool; so REST always has `--pool-size` minus that many.
pub struct SearchGate {
    per_user: PerUser,
    pool: Arc<Semaphore>,
    size: usize,
    /// How long a search waits for a slot of the search pool.
    wait: Duration,
}

/// A search's place: its user's slot and one of the search pool's; both
/// given back on drop.
pub struct SearchPermit {
    _user: UserSlot,
    _pool: OwnedSemaphorePermit,
}

impl Drop for SearchPermit {
    fn drop(&mut self) {
        metrics::gauge!("ragctl_searches_in_flight").decrement(1.0);
    }
}

impl SearchGate {
    pub fn new(per_user: usize, size: usize, wait: Duration) -> SearchGate {
        metrics::gauge!("ragctl_search_pool_size").set(size as f64);
        SearchGate {
            per_user: PerUser::new(per_user),
            pool: Arc::new(Semaphore::new(size)),
            size,
            wait,
        }
    }

    /// Searches running now (slots of the search pool taken).
    pub fn in_flight(&self) -> usize {
        self.size - self.pool.available_permits()
    }

    /// A place for one search of `user`: 429 at once past their cap; past
    /// the pool, waits in line (first come, first served) at most `wait`,
    /// then 503. A search takes milliseconds, so a burst is better queued
    /// briefly than refused; the wait is bounded so a slow database answers
    /// a clear 503 instead of a hanging request, and a waiter holds no
    /// connection of the pool.
    pub async fn enter(&self, user: Uuid) -> Result<SearchPermit, ApiError> {
        let Some(slot) = self.per_user.try_take(user) else {
            metrics::counter!("ragctl_searches_refused_total", "reason" => "user_cap").increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_searches",
                format!(
                    "you have {} questions being answered, your share \
                     (--max-searches-per-user / RAG_MAX_SEARCHES_PER_USER); wait for one",
                    self.per_user.cap()
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        };
        let acquire = self.pool.clone().acquire_owned();
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => {
                metrics::gauge!("ragctl_searches_in_flight").increment(1.0);
                Ok(SearchPermit {
                    _user: slot,
                    _pool: permit,
                })
            }
            _ => {
                metrics::counter!("ragctl_searches_refused_total", "reason" => "busy").increment(1);
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "search_busy",
                    format!(
                        "the server is answering as many questions as its search pool \
                         allows ({}; --search-pool-size / RAG_SEARCH_POOL_SIZE); try again shortly",
                        self.size
                    ),
                )
                .retry_after(RETRY_AFTER_SECS))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_cap_and_others_are_untouched() {
        let caps = PerUser::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = caps.try_take(a).unwrap();
        let a2 = caps.try_take(a).unwrap();
        assert!(caps.try_take(a).is_none());
        let b1 = caps.try_take(b).unwrap();
        assert_eq!((caps.held_by(a), caps.held_by(b), caps.users()), (2, 1, 2));
        drop(a1);
        let a3 = caps.try_take(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(caps.users(), 0, "no entry is left once nothing is held");
        assert!(PerUser::new(0).try_take(a).is_none());
        assert_eq!(PerUser::new(0).users(), 0);
    }

    #[tokio::test]
    async fn searches_are_capped_per_user_and_queue_briefly_for_the_pool() {
        let gate = SearchGate::new(2, 2, Duration::from_millis(1));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = gate.enter(a).await.unwrap();
        let _a2 = gate.enter(a).await.unwrap();
        let e = gate.enter(a).await.err().unwrap();
        assert_eq!(
            (e.status.as_u16(), e.code, e.retry_after),
            (429, "too_many_searches", Some(2))
        );
        // The pool is full: b waits, then 503; its user slot is given back.
        let e = gate.enter(b).await.err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "search_busy"));
        assert_eq!(gate.per_user.held_by(b), 0);
        drop(a1);
        let _b1 = gate.enter(b).await.unwrap();
        assert_eq!(gate.in_flight(), 2);
    }
}
