//! The per-process registry of WebSocket connections, keyed by user.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use uuid::Uuid;

use super::hold::{Held, Hold};
use super::outlet::{Begun, Chunk, Outlet, Pushed, Sink, delivery_histogram, record_latency};
use super::uring::Sender;
use crate::events::{Envelope, Frame, LocalDelivery};

/// How many recent envelope ids are remembered to drop duplicates (an event
/// delivered locally after a publish that timed out but did commit).
const RECENT_IDS: usize = 8192;

/// Appends `text` as one unmasked WebSocket text frame (server to client).
pub fn put_text_frame(out: &mut BytesMut, text: &str) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    out.reserve(header.len(text.len() as u64) + text.len());
    let mut w = out.writer();
    header
        .format(text.len() as u64, &mut w)
        .expect("writing to memory cannot fail");
    w.into_inner().put_slice(text.as_bytes());
}

#[derive(Clone)]
struct Entry {
    id: u64,
    outlet: Arc<Outlet>,
    resync: bool,
    /// Set while the socket catches up (`?since=`).
    hold: Option<Arc<Hold>>,
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
    latency: metrics::Histogram,
}

struct Inner {
    /// Copied on register/unregister, so that a delivery holds the lock
    /// only to clone the `Arc`s, not during its writes.
    users: RwLock<HashMap<Uuid, Arc<[Entry]>>>,
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
    /// The socket's write side; its `slow` token is cancelled when the
    /// queue overflowed, its `wake` notified when bytes wait to be flushed.
    pub outlet: Arc<Outlet>,
    /// What the hub held for the socket while it catches up.
    pub hold: Option<Arc<Hold>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.hub.unregister(self.user, self.id);
    }
}

/// The frames of one delivery batch for one user: serialised once, written
/// to each of the user's sockets as one chunk.
struct UserBatch<'a> {
    sockets: Arc<[Entry]>,
    /// The batch's envelopes, kept only while one of the sockets holds
    /// (catches up): the common path skips it.
    envs: Option<Vec<&'a Envelope>>,
    bytes: BytesMut,
    frames: usize,
    stamps: Vec<DateTime<Utc>>,
}

impl<'a> UserBatch<'a> {
    fn new(sockets: Arc<[Entry]>) -> UserBatch<'a> {
        UserBatch {
            envs: sockets
                .iter()
                .any(|e| e.hold.as_ref().is_some_and(|h| !h.is_live()))
                .then(Vec::new),
            sockets,
            bytes: BytesMut::new(),
            frames: 0,
            stamps: Vec::new(),
        }
    }

    fn add(&mut self, env: &'a Envelope) {
        put_text_frame(&mut self.bytes, &env.frame_text());
        self.frames += 1;
        self.stamps.push(env.ts);
        if let Some(held) = &mut self.envs {
            held.push(env);
        }
    }
}

impl Hub {
    /// `queue` bounds the frames queued behind each socket.
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
                    latency: delivery_histogram(),
                },
            }),
        }
    }

    /// Registers a socket of `user` whose raw byte stream is `sink`.
    pub fn register(&self, user: Uuid, resync: bool, sink: Sink) -> ConnGuard {
        self.add(user, resync, sink, None)
    }

    /// Registers a socket that catches up first: what the hub delivers to
    /// it is held (at most `hold` items) until released (`ConnGuard::hold`).
    pub fn register_holding(&self, user: Uuid, resync: bool, sink: Sink, hold: usize) -> ConnGuard {
        self.add(user, resync, sink, Some(Arc::new(Hold::new(hold))))
    }

    fn add(&self, user: Uuid, resync: bool, sink: Sink, hold: Option<Arc<Hold>>) -> ConnGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let outlet = Arc::new(Outlet::new(sink, self.inner.queue));
        let entry = Entry {
            id,
            outlet: outlet.clone(),
            resync,
            hold: hold.clone(),
        };
        let mut users = self.inner.users.write().expect("hub lock");
        let list = users.entry(user).or_insert_with(|| Arc::from([]));
        *list = list.iter().cloned().chain([entry]).collect();
        ConnGuard {
            hub: self.clone(),
            user,
            id,
            outlet,
            hold,
        }
    }

    fn unregister(&self, user: Uuid, id: u64) {
        let mut users = self.inner.users.write().expect("hub lock");
        if let Some(list) = users.get_mut(&user) {
            *list = list.iter().filter(|e| e.id != id).cloned().collect();
            if list.is_empty() {
                users.remove(&user);
            }
        }
    }

    /// Whether `user` has a socket in this process.
    pub fn has_sockets(&self, user: Uuid) -> bool {
        self.inner
            .users
            .read()
            .expect("hub lock")
            .contains_key(&user)
    }

    /// How many sockets `user` has in this process.
    pub fn sockets_of(&self, user: Uuid) -> usize {
        let users = self.inner.users.read().expect("hub lock");
        users.get(&user).map_or(0, |l| l.len())
    }

    pub fn stats(&self) -> HubStats {
        let users = self.inner.users.read().expect("hub lock");
        HubStats {
            sockets: users.values().map(|l| l.len()).sum(),
            users: users.len(),
        }
    }

    /// Hands events, in order, to every socket of their users in this
    /// process. Never blocks: each socket gets one write of all of its
    /// user's frames in the batch (or a queued chunk), and a socket whose
    /// queue is full is marked slow (it gets closed).
    pub fn deliver(&self, envs: &[Envelope]) {
        self.deliver_with(envs, &mut Sender::plain());
    }

    /// [`Hub::deliver`], sending through `sender` (the router's ring).
    pub fn deliver_with(&self, envs: &[Envelope], sender: &mut Sender) {
        let fresh: Vec<&Envelope> = {
            let mut recent = self.inner.recent.lock().expect("recent lock");
            envs.iter().filter(|e| recent.insert(e.id)).collect()
        };
        let duplicates = envs.len() - fresh.len();
        if duplicates > 0 {
            self.inner.counters.duplicate.increment(duplicates as u64);
        }
        self.fan_out(fresh, false, sender);
    }

    /// Hands a heal's states (built here, so never duplicates) to the
    /// sockets of their users. A user's states go as one chunk that counts
    /// as one frame against the socket's queue bound: a heal is bounded as
    /// a whole (`--max-heal`), and must not close a socket as slow for
    /// catching it up.
    pub fn deliver_heal(&self, envs: &[Envelope]) {
        self.fan_out(envs.iter().collect(), true, &mut Sender::plain());
    }

    fn fan_out(&self, envs: Vec<&Envelope>, heal: bool, sender: &mut Sender) {
        // Serialised once per user, shared by every socket of the user.
        let mut batches: HashMap<Uuid, UserBatch> = HashMap::new();
        {
            let users = self.inner.users.read().expect("hub lock");
            for env in envs {
                let batch = match batches.entry(env.user_id) {
                    Slot::Occupied(b) => b.into_mut(),
                    Slot::Vacant(slot) => match users.get(&env.user_id) {
                        Some(sockets) => slot.insert(UserBatch::new(sockets.clone())),
                        None => {
                            if !heal {
                                self.inner.counters.no_recipient.increment(1);
                            }
                            continue;
                        }
                    },
                };
                batch.add(env);
            }
        }
        for batch in batches.into_values() {
            self.send_batch(batch, heal, sender);
        }
    }

    /// Writes one user's chunk to each of the user's sockets here (or to
    /// its hold); the sockets that take it straight away get it in one go
    /// (one system call with io_uring), their outlets locked until then.
    fn send_batch(&self, batch: UserBatch, heal: bool, sender: &mut Sender) {
        let frames = batch.frames;
        let chunk = Chunk {
            bytes: batch.bytes.freeze(),
            frames: if heal { 1 } else { frames },
            stamps: batch.stamps.into(),
        };
        let c = &self.inner.counters;
        let (mut written, mut queued) = (0, 0);
        let mut count = |p: Pushed| match p {
            Pushed::Written => written += 1,
            Pushed::Queued => queued += 1,
            Pushed::Slow => c.slow.increment(1),
            Pushed::Closed => {}
        };
        let mut direct = Vec::new();
        for entry in batch.sockets.iter() {
            if let (Some(hold), Some(envs)) = (&entry.hold, &batch.envs)
                && hold.take(envs.iter().map(|e| Held::Event((*e).clone())))
            {
                continue;
            }
            match entry.outlet.begin(&chunk) {
                Begun::Done(p) => count(p),
                Begun::Direct(d) => direct.push(d),
            }
        }
        let mut results = Vec::with_capacity(direct.len());
        {
            // Borrowed from the locked outlets: open until `finish`.
            let fds: Vec<_> = direct.iter().map(|d| d.fd()).collect();
            sender.send_all(&fds, &chunk.bytes, &mut results);
        }
        for (d, r) in direct.into_iter().zip(results) {
            count(d.finish(&chunk, r));
        }
        c.forwarded.increment((frames * (written + queued)) as u64);
        // One sample per event for all the sockets that took it at once
        // (their writes are microseconds apart); a queued chunk is timed
        // per socket when its task flushes it.
        if written > 0 {
            record_latency(&c.latency, &chunk.stamps);
        }
    }

    /// The users with sockets here, and how many sockets they have.
    pub fn users(&self) -> (Vec<Uuid>, usize) {
        let users = self.inner.users.read().expect("hub lock");
        let sockets = users.values().map(|l| l.len()).sum();
        (users.keys().copied().collect(), sockets)
    }

    /// Tells every socket that opted in (`?resync=1`) that events may have
    /// been missed.
    pub fn resync(&self, reason: &str) {
        self.resync_where(reason, |_| true);
    }

    /// [`Hub::resync`] for the sockets of `users` only.
    pub fn resync_users(&self, users: &HashSet<Uuid>, reason: &str) {
        self.resync_where(reason, |u| users.contains(u));
    }

    fn resync_where(&self, reason: &str, of: impl Fn(&Uuid) -> bool) {
        let payload = json!({ "reason": reason });
        let frame = Frame {
            kind: "realtime.resync",
            payload: &payload,
        };
        let mut bytes = BytesMut::new();
        put_text_frame(
            &mut bytes,
            &serde_json::to_string(&frame).expect("serialises"),
        );
        let chunk = Chunk::control(bytes.freeze());
        let opted: Vec<Entry> = {
            let users = self.inner.users.read().expect("hub lock");
            let all = users
                .iter()
                .filter(|(u, _)| of(u))
                .flat_map(|(_, l)| l.iter());
            all.filter(|e| e.resync).cloned().collect()
        };
        for entry in &opted {
            if let Some(hold) = &entry.hold
                && hold.take(std::iter::once(Held::Resync(reason.to_string())))
            {
                continue;
            }
            if entry.outlet.push(&chunk) == Pushed::Slow {
                self.inner.counters.slow.increment(1);
            }
        }
    }
}

impl LocalDelivery for Hub {
    fn deliver_local(&self, env: &Envelope) {
        self.inner.counters.local.increment(1);
        self.deliver(std::slice::from_ref(env));
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tcp_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::hold::Step;
    use crate::events::EventType;
    use futures_util::{FutureExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn env(user: Uuid) -> Envelope {
        Envelope::new(
            user,
            EventType::DocumentStatusUpdated,
            json!({"document_id": Uuid::new_v4(), "status": "parsed", "error_message": null, "updated_at": Utc::now()}),
            "test",
        )
    }

    /// A socket registered with `hub`, and the client end reading it.
    async fn socket(
        hub: &Hub,
        user: Uuid,
        resync: bool,
        buffer: usize,
    ) -> (ConnGuard, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(buffer);
        let (_read, write) = tokio::io::split(server);
        let guard = hub.register(user, resync, Sink::stream(write));
        let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (guard, ws)
    }

    /// The next text frame already written, if any.
    fn next_text(ws: &mut WebSocketStream<DuplexStream>) -> Option<String> {
        match ws.next().now_or_never() {
            Some(Some(Ok(m))) => Some(m.into_text().expect("a text frame").to_string()),
            Some(other) => panic!("unexpected {other:?}"),
            None => None,
        }
    }

    #[test]
    fn text_frames_have_the_right_header_for_every_length_form() {
        for (len, header) in [(5usize, 2usize), (126, 4), (70_000, 10)] {
            let text = "x".repeat(len);
            let mut out = BytesMut::new();
            put_text_frame(&mut out, &text);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81, "FIN + text opcode");
            assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
        }
    }

    #[tokio::test]
    async fn routes_by_user_to_every_socket_once() {
        let hub = Hub::new(8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (a1, mut ws_a1) = socket(&hub, a, false, 4096).await;
        let (a2, mut ws_a2) = socket(&hub, a, false, 4096).await;
        let (_b1, mut ws_b1) = socket(&hub, b, false, 4096).await;
        assert_eq!(
            hub.stats(),
            HubStats {
                sockets: 3,
                users: 2
            }
        );
        let e = env(a);
        hub.deliver(&[e.clone(), e.clone()]); // a duplicate id in one batch
        hub.deliver(std::slice::from_ref(&e)); // and in a later one
        for ws in [&mut ws_a1, &mut ws_a2] {
            let got = next_text(ws).expect("delivered");
            assert_eq!(got, e.frame_text());
            assert_eq!(next_text(ws), None, "delivered twice");
        }
        assert_eq!(next_text(&mut ws_b1), None);
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
    async fn a_batch_keeps_each_users_order() {
        let hub = Hub::new(8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (_ga, mut ws_a) = socket(&hub, a, false, 4096).await;
        let (_gb, mut ws_b) = socket(&hub, b, false, 4096).await;
        let evs = [env(a), env(b), env(a), env(a)];
        hub.deliver(&evs);
        for e in [&evs[0], &evs[2], &evs[3]] {
            assert_eq!(
                next_text(&mut ws_a).as_deref(),
                Some(e.frame_text().as_str())
            );
        }
        assert_eq!(next_text(&mut ws_a), None);
        assert_eq!(
            next_text(&mut ws_b).as_deref(),
            Some(evs[1].frame_text().as_str())
        );
    }

    #[tokio::test]
    async fn overflow_marks_only_that_socket_slow() {
        let hub = Hub::new(2);
        let u = Uuid::new_v4();
        // The client never reads, and its buffer holds less than a frame.
        let (stuck, _ws_stuck) = socket(&hub, u, false, 16).await;
        let other_user = Uuid::new_v4();
        let (fine, mut ws_fine) = socket(&hub, other_user, false, 4096).await;
        for _ in 0..4 {
            hub.deliver(&[env(u)]);
        }
        assert!(stuck.outlet.slow.is_cancelled());
        assert_eq!(stuck.outlet.queued(), 2, "the queue stays bounded");
        hub.deliver(&[env(other_user)]);
        assert!(!fine.outlet.slow.is_cancelled());
        assert!(next_text(&mut ws_fine).is_some());
    }

    #[tokio::test]
    async fn a_holding_socket_gets_nothing_until_released_and_overflow_is_one_step() {
        let hub = Hub::new(8);
        let u = Uuid::new_v4();
        let (server, client) = tokio::io::duplex(4096);
        let (_read, write) = tokio::io::split(server);
        let guard = hub.register_holding(u, true, Sink::stream(write), 2);
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let hold = guard.hold.clone().expect("holding");
        let (e1, e2) = (env(u), env(u));
        hub.deliver(std::slice::from_ref(&e1));
        hub.resync("listener_reconnected");
        assert_eq!(next_text(&mut ws), None, "held, not written");
        let Step::Items(items) = hold.release(10, || {}) else {
            panic!("held items expected")
        };
        assert!(
            matches!(&items[..], [Held::Event(a), Held::Resync(r)] if a.id == e1.id && r == "listener_reconnected")
        );
        hub.deliver(&[e2.clone(), env(u), env(u)]); // over the bound of 2
        assert!(matches!(hold.release(10, || {}), Step::Overflowed));
        let mut last_ran = false;
        assert!(matches!(hold.release(10, || last_ran = true), Step::Live));
        assert!(last_ran);
        let e3 = env(u);
        hub.deliver(std::slice::from_ref(&e3));
        assert_eq!(
            next_text(&mut ws),
            Some(e3.frame_text()),
            "live after release"
        );
    }

    #[tokio::test]
    async fn resync_goes_only_to_sockets_that_opted_in() {
        let hub = Hub::new(4);
        let u = Uuid::new_v4();
        let (_plain, mut ws_plain) = socket(&hub, u, false, 4096).await;
        let (_opted, mut ws_opted) = socket(&hub, u, true, 4096).await;
        hub.resync("listener_reconnected");
        assert_eq!(next_text(&mut ws_plain), None);
        assert_eq!(
            next_text(&mut ws_opted).as_deref(),
            Some(r#"{"type":"realtime.resync","payload":{"reason":"listener_reconnected"}}"#)
        );
    }
}
