//! The per-process registry of WebSocket connections, keyed by user.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Envelope, Frame, LocalDelivery};

/// Close code for a socket whose queue overflowed: the client fell behind,
/// and should resync through REST before reconnecting.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// How many recent envelope ids are remembered to drop duplicates (an event
/// delivered locally after a publish that timed out but did commit).
const RECENT_IDS: usize = 8192;

/// What a socket's writer receives.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A serialised `{type, payload}` frame, shared by all of a user's
    /// sockets, and the envelope's `ts` for the latency histogram.
    Frame { text: Utf8Bytes, ts: DateTime<Utc> },
    /// `realtime.resync`, for sockets that opted in.
    Resync(Utf8Bytes),
}

struct Entry {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    slow: CancellationToken,
    resync: bool,
}

#[derive(Default)]
struct Recent {
    order: VecDeque<Uuid>,
    seen: HashSet<Uuid>,
}

impl Recent {
    /// `false` if `id` was seen recently.
    fn insert(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

struct Counters {
    forwarded: metrics::Counter,
    slow: metrics::Counter,
    no_recipient: metrics::Counter,
    duplicate: metrics::Counter,
    local: metrics::Counter,
}

struct Inner {
    users: RwLock<HashMap<Uuid, Vec<Entry>>>,
    next_id: AtomicU64,
    queue: usize,
    recent: Mutex<Recent>,
    counters: Counters,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub sockets: usize,
    pub users: usize,
}

/// A registered socket. Dropping it unregisters the socket.
pub struct ConnGuard {
    hub: Hub,
    user: Uuid,
    id: u64,
    pub rx: mpsc::Receiver<Outbound>,
    /// Cancelled when the socket's queue overflowed.
    pub slow: CancellationToken,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.hub.unregister(self.user, self.id);
    }
}

impl Hub {
    /// `queue` bounds each socket's outbound queue.
    pub fn new(queue: usize) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                users: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                queue: queue.max(1),
                recent: Mutex::new(Recent::default()),
                counters: Counters {
                    forwarded: metrics::counter!("ragctl_events_forwarded_total"),
                    slow: metrics::counter!("ragctl_ws_dropped_total", "reason" => "slow_consumer"),
                    no_recipient: metrics::counter!("ragctl_events_no_recipient_total"),
                    duplicate: metrics::counter!("ragctl_events_dropped_total", "reason" => "duplicate"),
                    local: metrics::counter!("ragctl_events_local_fallback_total"),
                },
            }),
        }
    }

    pub fn register(&self, user: Uuid, resync: bool) -> ConnGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let slow = CancellationToken::new();
        self.inner
            .users
            .write()
            .expect("hub lock")
            .entry(user)
            .or_default()
            .push(Entry {
                id,
                tx,
                slow: slow.clone(),
                resync,
            });
        ConnGuard {
            hub: self.clone(),
            user,
            id,
            rx,
            slow,
        }
    }

    fn unregister(&self, user: Uuid, id: u64) {
        let mut users = self.inner.users.write().expect("hub lock");
        if let Some(list) = users.get_mut(&user) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                users.remove(&user);
            }
        }
    }

    pub fn stats(&self) -> HubStats {
        let users = self.inner.users.read().expect("hub lock");
        HubStats {
            sockets: users.values().map(Vec::len).sum(),
            users: users.len(),
        }
    }

    /// Hands an event to every socket of its user in this process. Never
    /// blocks: a full socket queue marks that socket slow (it gets closed).
    pub fn deliver(&self, env: &Envelope, _received_at: Instant) {
        if !self
            .inner
            .recent
            .lock()
            .expect("recent lock")
            .insert(env.id)
        {
            self.inner.counters.duplicate.increment(1);
            return;
        }
        let users = self.inner.users.read().expect("hub lock");
        let Some(list) = users.get(&env.user_id) else {
            self.inner.counters.no_recipient.increment(1);
            return;
        };
        // Serialised once, shared by every socket of the user.
        let text = Utf8Bytes::from(env.frame_text());
        for entry in list {
            self.send(
                entry,
                Outbound::Frame {
                    text: text.clone(),
                    ts: env.ts,
                },
            );
        }
    }

    fn send(&self, entry: &Entry, msg: Outbound) {
        match entry.tx.try_send(msg) {
            Ok(()) => self.inner.counters.forwarded.increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !entry.slow.is_cancelled() {
                    self.inner.counters.slow.increment(1);
                    entry.slow.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells every socket that opted in (`?resync=1`) that events may have
    /// been missed.
    pub fn resync(&self, reason: &str) {
        let payload = json!({ "reason": reason });
        let frame = Frame {
            kind: "realtime.resync",
            payload: &payload,
        };
        let text = Utf8Bytes::from(serde_json::to_string(&frame).expect("serialises"));
        let users = self.inner.users.read().expect("hub lock");
        for entry in users.values().flatten().filter(|e| e.resync) {
            self.send(entry, Outbound::Resync(text.clone()));
        }
    }
}

impl LocalDelivery for Hub {
    fn deliver_local(&self, env: &Envelope) {
        self.inner.counters.local.increment(1);
        self.deliver(env, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    fn env(user: Uuid) -> Envelope {
        Envelope::new(
            user,
            EventType::DocumentStatusUpdated,
            json!({"document_id": Uuid::new_v4(), "status": "parsed", "error_message": null, "updated_at": Utc::now()}),
            "test",
        )
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Frame { text, .. } | Outbound::Resync(text) => text.to_string(),
        }
    }

    #[tokio::test]
    async fn routes_by_user_to_every_socket_once() {
        let hub = Hub::new(8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a1 = hub.register(a, false);
        let mut a2 = hub.register(a, false);
        let mut b1 = hub.register(b, false);
        assert_eq!(
            hub.stats(),
            HubStats {
                sockets: 3,
                users: 2
            }
        );
        let e = env(a);
        hub.deliver(&e, Instant::now());
        hub.deliver(&e, Instant::now()); // duplicate id: dropped
        for g in [&mut a1, &mut a2] {
            let got = text(g.rx.try_recv().unwrap());
            assert!(
                got.starts_with(r#"{"type":"document.status_updated","payload":{"#),
                "{got}"
            );
            assert!(g.rx.try_recv().is_err(), "delivered twice");
        }
        assert!(b1.rx.try_recv().is_err());
        drop(a1);
        drop(a2);
        assert_eq!(
            hub.stats(),
            HubStats {
                sockets: 1,
                users: 1
            }
        );
    }

    #[tokio::test]
    async fn overflow_marks_only_that_socket_slow() {
        let hub = Hub::new(2);
        let u = Uuid::new_v4();
        let stuck = hub.register(u, false);
        let other_user = Uuid::new_v4();
        let mut fine = hub.register(other_user, false);
        for _ in 0..3 {
            hub.deliver(&env(u), Instant::now());
        }
        assert!(stuck.slow.is_cancelled());
        hub.deliver(&env(other_user), Instant::now());
        assert!(!fine.slow.is_cancelled());
        assert!(fine.rx.try_recv().is_ok());
    }

    #[tokio::test]
    async fn resync_goes_only_to_sockets_that_opted_in() {
        let hub = Hub::new(4);
        let u = Uuid::new_v4();
        let mut plain = hub.register(u, false);
        let mut opted = hub.register(u, true);
        hub.resync("listener_reconnected");
        assert!(plain.rx.try_recv().is_err());
        let got = text(opted.rx.try_recv().unwrap());
        assert_eq!(
            got,
            r#"{"type":"realtime.resync","payload":{"reason":"listener_reconnected"}}"#
        );
    }
}
