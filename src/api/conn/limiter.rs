//! The connection limiter: a budget of open sockets (HTTP connections and
//! WebSockets) derived from the open-file limit, and which connection to
//! shed when a newcomer finds it full: one that never sent a request, then
//! one idle after a 429 for its user's share, then one idle between
//! requests, then one whose request has been waiting on
//! its client (body bytes, or room for its response) for `stall` or more.
//! A request that waits on the server (a query, a lock) is never cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Descriptors kept out of the connection budget: stdio, the runtime's
/// own, the listeners, worker pipes, log files, the embedded cluster's
/// control, and the `/metrics` listener's connections.
pub const FD_RESERVE_BASE: usize = 64 + METRICS_MAX_CONNECTIONS;
/// Connections the separate `/metrics` listener holds at most.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Smallest connection budget `serve` starts with.
pub const MIN_CONNECTIONS: usize = 16;
/// How long the accept loop waits for a shed connection to close.
pub(crate) const SHED_WAIT: Duration = Duration::from_millis(100);

/// How the open-file limit is shared out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    pub nofile: u64,
    pub reserved: usize,
    /// Open client sockets at most (HTTP and WebSocket).
    pub connections: usize,
    /// WebSockets at most: below `connections`, so that a full WebSocket
    /// cap still leaves room for REST and health checks.
    pub websockets: usize,
}

impl FdBudget {
    /// `max_connections` and `ws_flag` can only lower what the limit allows.
    pub fn derive(
        nofile: u64,
        pool_size: usize,
        max_connections: Option<usize>,
        ws_flag: usize,
    ) -> Result<FdBudget, String> {
        // The pool, and the bridge's LISTEN connection.
        let reserved = FD_RESERVE_BASE + pool_size + 1;
        let allowed = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(reserved);
        let connections = max_connections.map_or(allowed, |m| m.min(allowed));
        if connections < MIN_CONNECTIONS {
            return Err(format!(
                "{connections} client connections is too few (at least {MIN_CONNECTIONS}); the open-file \
                 limit is {nofile} and {reserved} descriptors are reserved: raise `ulimit -n` or --max-connections"
            ));
        }
        let http_floor = (connections / 10).max(8);
        Ok(FdBudget {
            nofile,
            reserved,
            connections,
            websockets: ws_flag.min(connections - http_floor),
        })
    }
}

/// WebSockets count against the budget: they are open sockets too.
/// `/ws` takes a permit per socket; the limiter counts `cap - available`.
#[derive(Clone)]
pub struct WsCount {
    pub permits: Arc<Semaphore>,
    pub cap: usize,
}

impl WsCount {
    pub fn new(cap: usize) -> WsCount {
        // What the open-file limit allows (the bench reads it to size a run).
        metrics::gauge!("ragctl_ws_connections_limit").set(cap as f64);
        WsCount {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }
}

pub(super) struct Counters {
    shed: metrics::Counter,
    refused: metrics::Counter,
    pub(super) header_timeouts: metrics::Counter,
    pub(super) accepted: metrics::Counter,
    stalled_shed: metrics::Counter,
    live: metrics::Gauge,
}

/// Every connection, by class, oldest (lowest id) first.
#[derive(Default)]
struct Evictable {
    next_id: u64,
    /// Have not sent a request yet.
    fresh: BTreeMap<u64, CancellationToken>,
    /// Between requests, after a 429 for its user's share: an account
    /// hammering its caps must not push honest idle connections out first.
    refused: BTreeMap<u64, CancellationToken>,
    /// Between requests (keep-alive).
    idle: BTreeMap<u64, CancellationToken>,
    /// Serving a request: shed only once stalled on its client.
    busy: BTreeMap<u64, (CancellationToken, Arc<Progress>)>,
}

/// The process's clock for [`Progress`], in milliseconds (never 0).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether a connection's request is waiting on its client, and since
/// when: set by the request body when it has no bytes to give, and by the
/// socket when a write of the response cannot proceed; cleared by progress.
#[derive(Default)]
pub struct Progress {
    /// `now_ms()` when the wait began; 0 when not waiting.
    waiting_since: AtomicU64,
}

impl Progress {
    pub fn waiting(&self) {
        let _ =
            self.waiting_since
                .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn moved(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// How long the client has kept the request waiting (0 if it has not).
    fn stalled_for(&self, now: u64) -> u64 {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => 0,
            since => now.saturating_sub(since),
        }
    }
}

pub struct Limiter {
    pub(super) listener: &'static str,
    cap: usize,
    /// How long a request may wait on its client before its connection
    /// can be shed.
    stall: Duration,
    ws: Option<WsCount>,
    live: AtomicUsize,
    evictable: Mutex<Evictable>,
    closed: Notify,
    pub(super) counters: Counters,
}

impl Limiter {
    pub fn new(
        listener: &'static str,
        cap: usize,
        ws: Option<WsCount>,
        stall: Duration,
    ) -> Arc<Limiter> {
        let l = ("listener", listener);
        metrics::gauge!("ragctl_http_connections_limit", &[l]).set(cap as f64);
        Arc::new(Limiter {
            listener,
            cap,
            stall,
            ws,
            live: AtomicUsize::new(0),
            evictable: Mutex::default(),
            closed: Notify::new(),
            counters: Counters {
                accepted: metrics::counter!("ragctl_http_connections_accepted_total", &[l]),
                shed: metrics::counter!("ragctl_http_connections_shed_total", &[l]),
                refused: metrics::counter!("ragctl_http_connections_refused_total", &[l]),
                header_timeouts: metrics::counter!("ragctl_http_header_timeouts_total", &[l]),
                stalled_shed: metrics::counter!("ragctl_http_stalled_shed_total", &[l]),
                live: metrics::gauge!("ragctl_http_connections", &[l]),
            },
        })
    }

    /// Open sockets: HTTP connections and WebSockets.
    pub fn in_use(&self) -> usize {
        let ws = self
            .ws
            .as_ref()
            .map_or(0, |w| w.cap.saturating_sub(w.permits.available_permits()));
        self.live.load(Ordering::Relaxed) + ws
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Evictable> {
        self.evictable.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn register(self: &Arc<Self>) -> Arc<Slot> {
        let kill = CancellationToken::new();
        let id = {
            let mut ev = self.lock();
            ev.next_id += 1;
            let id = ev.next_id;
            ev.fresh.insert(id, kill.clone());
            id
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        self.counters.live.increment(1.0);
        Arc::new(Slot {
            id,
            limiter: self.clone(),
            kill,
            requests: AtomicUsize::new(0),
            refused: AtomicBool::new(false),
            progress: Arc::default(),
        })
    }

    /// Closes the oldest connection not serving a request, else the one
    /// stalled longest on its client; false if every open one is busy.
    pub(super) fn shed_oldest(&self) -> bool {
        let (victim, stalled) = {
            let mut ev = self.lock();
            let evictable = ev.fresh.pop_first();
            let evictable = evictable.or_else(|| ev.refused.pop_first());
            match evictable.or_else(|| ev.idle.pop_first()) {
                Some((_, kill)) => (Some(kill), false),
                None => (self.pop_stalled(&mut ev), true),
            }
        };
        let Some(kill) = victim else {
            return false;
        };
        kill.cancel();
        self.counters.shed.increment(1);
        if stalled {
            self.counters.stalled_shed.increment(1);
        }
        true
    }

    /// The busy connection whose client has kept its request waiting the
    /// longest, if `stall` or more. A scan: it only runs at the budget with
    /// nothing fresh or idle to shed.
    fn pop_stalled(&self, ev: &mut Evictable) -> Option<CancellationToken> {
        let now = now_ms();
        let floor = self.stall.as_millis() as u64;
        let (id, _) = ev
            .busy
            .iter()
            .map(|(id, (_, p))| (*id, p.stalled_for(now)))
            .filter(|(_, waited)| *waited >= floor.max(1))
            .max_by_key(|(_, waited)| *waited)?;
        ev.busy.remove(&id).map(|(kill, _)| kill)
    }

    /// Makes room for one more connection; false if every open one is busy.
    pub(super) async fn make_room(&self) -> bool {
        if self.in_use() < self.cap {
            return true;
        }
        let closed = self.closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if !self.shed_oldest() {
            self.counters.refused.increment(1);
            return false;
        }
        // Wait for the victim's socket to close so that open descriptors
        // stay within the budget even while a flood is being shed.
        let _ = tokio::time::timeout(SHED_WAIT, closed).await;
        true
    }
}

/// One HTTP connection's entry in the limiter; dropped when it closes.
pub(super) struct Slot {
    id: u64,
    pub(super) limiter: Arc<Limiter>,
    pub(super) kill: CancellationToken,
    requests: AtomicUsize,
    /// Its last answer was a 429 (see `Evictable::refused`).
    refused: AtomicBool,
    /// Whether its request waits on the client (body, response writes).
    pub(super) progress: Arc<Progress>,
}

impl Slot {
    fn remove(&self) {
        let mut ev = self.limiter.lock();
        ev.fresh.remove(&self.id);
        ev.refused.remove(&self.id);
        ev.idle.remove(&self.id);
        ev.busy.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.remove();
        self.limiter.live.fetch_sub(1, Ordering::Relaxed);
        self.limiter.counters.live.decrement(1.0);
        self.limiter.closed.notify_waiters();
    }
}

/// A request in flight: its connection is shed only if stalled, until the
/// response body has been written (this guard rides in the body).
pub(super) struct InFlight(Arc<Slot>);

impl InFlight {
    pub(super) fn start(slot: &Arc<Slot>) -> InFlight {
        slot.requests.fetch_add(1, Ordering::Relaxed);
        slot.refused.store(false, Ordering::Relaxed);
        slot.progress.moved();
        slot.remove();
        let busy = (slot.kill.clone(), slot.progress.clone());
        slot.limiter.lock().busy.insert(slot.id, busy);
        InFlight(slot.clone())
    }

    /// The request was refused for its user's share (429): once idle, the
    /// connection is shed before other idle ones.
    pub(super) fn refused(&self) {
        self.0.refused.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.0;
        if slot.requests.fetch_sub(1, Ordering::Relaxed) == 1 && !slot.kill.is_cancelled() {
            let mut ev = slot.limiter.lock();
            ev.busy.remove(&slot.id);
            let class = if slot.refused.load(Ordering::Relaxed) {
                &mut ev.refused
            } else {
                &mut ev.idle
            };
            class.insert(slot.id, slot.kill.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_reserve_and_room_beside_websockets() {
        let b = FdBudget::derive(20_000, 16, None, 50_000).unwrap();
        assert_eq!(b.reserved, FD_RESERVE_BASE + 17);
        assert_eq!(b.connections, 20_000 - b.reserved);
        // A tenth stays for REST and health checks.
        assert_eq!(b.websockets, b.connections - b.connections / 10);
    }

    #[test]
    fn flags_only_lower_the_budget() {
        let b = FdBudget::derive(20_000, 16, Some(1_000), 100).unwrap();
        assert_eq!((b.connections, b.websockets), (1_000, 100));
        let b = FdBudget::derive(1_000, 16, Some(1_000_000), 50_000).unwrap();
        assert_eq!(b.connections, 1_000 - b.reserved);
        // Small budgets keep at least 8 connections beside the WebSockets.
        let b = FdBudget::derive(200, 16, Some(20), 50_000).unwrap();
        assert_eq!(b.websockets, 12);
    }

    #[test]
    fn too_low_a_limit_is_refused_with_what_to_do() {
        let e = FdBudget::derive(100, 16, None, 50_000).unwrap_err();
        assert!(e.contains("ulimit -n"), "{e}");
        assert!(FdBudget::derive(20_000, 16, Some(3), 10).is_err());
    }

    #[test]
    fn the_oldest_connection_not_serving_a_request_is_shed_first() {
        let l = Limiter::new("test", 3, None, Duration::from_millis(1));
        let (a, b, c) = (l.register(), l.register(), l.register());
        assert_eq!(l.in_use(), 3);
        // `a` is serving a request, `b` has served one, `c` never sent one.
        let busy = InFlight::start(&a);
        drop(InFlight::start(&b));
        assert!(l.shed_oldest() && c.kill.is_cancelled());
        assert!(l.shed_oldest() && b.kill.is_cancelled());
        assert!(!l.shed_oldest() && !a.kill.is_cancelled());
        drop(busy);
        assert!(l.shed_oldest() && a.kill.is_cancelled());
        drop((a, b, c));
        assert_eq!(l.in_use(), 0);
    }

    #[test]
    fn a_connection_refused_for_its_users_share_is_shed_before_other_idle_ones() {
        let l = Limiter::new("test", 3, None, Duration::from_secs(5));
        let (honest, hammer) = (l.register(), l.register());
        drop(InFlight::start(&honest));
        let refused = InFlight::start(&hammer);
        refused.refused();
        drop(refused);
        assert!(l.shed_oldest() && hammer.kill.is_cancelled());
        assert!(!honest.kill.is_cancelled(), "the older honest one stays");
        // A later answer that is not a 429 makes it an ordinary idle one.
        let again = l.register();
        let r = InFlight::start(&again);
        r.refused();
        drop(r);
        drop(InFlight::start(&again));
        assert!(l.shed_oldest() && honest.kill.is_cancelled());
    }

    #[test]
    fn a_request_stalled_on_its_client_is_shed_after_fresh_and_idle() {
        let l = Limiter::new("test", 3, None, Duration::from_millis(1));
        let (a, b, c) = (l.register(), l.register(), l.register());
        let (_a, _b) = (InFlight::start(&a), InFlight::start(&b));
        // `a` waits on the server (a query), `b` on its client.
        b.progress.waiting();
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.shed_oldest() && c.kill.is_cancelled());
        assert!(l.shed_oldest() && b.kill.is_cancelled());
        assert!(!l.shed_oldest() && !a.kill.is_cancelled());
    }
}
