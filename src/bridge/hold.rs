//! A socket that resumes (`/ws?since=`) is registered before its catch-up
//! query runs, so that no live event is missed, but the live events that
//! arrive meanwhile must not overtake the catch-up: the hub hands them to
//! the socket's `Hold`, a bounded buffer, until the socket's task has sent
//! the catch-up and releases them (see `api::ws::resume`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::events::Envelope;

/// What the hub handed to a holding socket, in order.
#[derive(Debug, Clone)]
pub enum Held {
    Event(Envelope),
    /// A `realtime.resync` with this reason (listener gap).
    Resync(String),
}

/// One step of releasing a hold.
pub enum Step {
    /// Held items to send, in order; more may follow.
    Items(Vec<Held>),
    /// The buffer overflowed and was emptied: the client must resync.
    Overflowed,
    /// Nothing left: `last` ran under the lock and the socket is now live.
    Live,
}

struct State {
    holding: bool,
    items: VecDeque<Held>,
    overflowed: bool,
}

pub struct Hold {
    state: Mutex<State>,
    /// Set once, under the lock, when the socket goes live: lets the hub's
    /// deliveries skip the lock for the rest of the socket's life.
    live: AtomicBool,
    limit: usize,
    overflows: metrics::Counter,
    dropped: metrics::Counter,
}

impl Hold {
    /// Holding from the start; at most `limit` items.
    pub fn new(limit: usize) -> Hold {
        Hold {
            state: Mutex::new(State {
                holding: true,
                items: VecDeque::new(),
                overflowed: false,
            }),
            live: AtomicBool::new(false),
            limit: limit.max(1),
            overflows: metrics::counter!("ragctl_ws_catchup_overflow_total", "reason" => "held"),
            dropped: metrics::counter!("ragctl_ws_dropped_total", "reason" => "catchup_held"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("hold lock")
    }

    /// Whether the socket has gone live (never reverts).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Keeps `items` if the socket still holds; `false` once it is live.
    pub fn take(&self, items: impl ExactSizeIterator<Item = Held>) -> bool {
        if self.is_live() {
            return false;
        }
        let mut st = self.lock();
        if !st.holding {
            return false;
        }
        if st.overflowed {
            self.dropped.increment(items.len() as u64);
        } else if st.items.len() + items.len() > self.limit {
            // Dropped, counted; the client is told to resync instead.
            self.dropped
                .increment((st.items.len() + items.len()) as u64);
            self.overflows.increment(1);
            st.items.clear();
            st.overflowed = true;
        } else {
            st.items.extend(items);
        }
        true
    }

    /// The next step of the release: up to `batch` held items, the
    /// overflow, or, when nothing is left, `last()` and the switch to live
    /// under the same lock (so that no event slips in between).
    pub fn release(&self, batch: usize, last: impl FnOnce()) -> Step {
        let mut st = self.lock();
        if st.overflowed {
            st.overflowed = false;
            return Step::Overflowed;
        }
        if st.items.is_empty() {
            last();
            st.holding = false;
            self.live.store(true, Ordering::Release);
            return Step::Live;
        }
        let n = batch.min(st.items.len());
        Step::Items(st.items.drain(..n).collect())
    }
}
