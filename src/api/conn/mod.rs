//! Serving HTTP connections: the accept loop and the connection limiter.
//!
//! Connections are served with hyper directly rather than `axum::serve`,
//! which exposes neither hyper's header-read timeout nor the connections
//! themselves. The limiter keeps open sockets (HTTP connections plus
//! WebSockets) within a budget derived from the open-file limit, so that
//! `accept` never runs out of descriptors. At the budget a newcomer sheds
//! the oldest connection that is not serving a request (one that never sent
//! one first, then one idle between requests): idle floods cannot lock out
//! health checks, and requests in flight are never cut.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// Descriptors kept out of the connection budget: stdio, the runtime's
/// own, the listeners, worker pipes, log files, the embedded cluster's
/// control, and the `/metrics` listener's connections.
pub const FD_RESERVE_BASE: usize = 64 + METRICS_MAX_CONNECTIONS;
/// Connections the separate `/metrics` listener holds at most.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Smallest connection budget `serve` starts with.
pub const MIN_CONNECTIONS: usize = 16;
/// How long shutdown waits for requests in flight.
const HTTP_DRAIN: Duration = Duration::from_secs(30);
/// How long the accept loop waits for a shed connection to close.
const SHED_WAIT: Duration = Duration::from_millis(100);

/// HTTP serving settings, in [`super::Shared`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Open client sockets (HTTP connections and WebSockets) at most.
    pub max_connections: usize,
    /// Headers must arrive within this long of connecting or of the
    /// previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// `/metrics` has its own listener and is not routed on the API port.
    pub metrics_separate: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            metrics_separate: false,
        }
    }
}

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

struct Counters {
    accepted: metrics::Counter,
    shed: metrics::Counter,
    refused: metrics::Counter,
    header_timeouts: metrics::Counter,
    live: metrics::Gauge,
}

/// Connections not serving a request, oldest (lowest id) first.
#[derive(Default)]
struct Evictable {
    next_id: u64,
    /// Have not sent a request yet.
    fresh: BTreeMap<u64, CancellationToken>,
    /// Between requests (keep-alive).
    idle: BTreeMap<u64, CancellationToken>,
}

pub struct Limiter {
    listener: &'static str,
    cap: usize,
    ws: Option<WsCount>,
    live: AtomicUsize,
    evictable: Mutex<Evictable>,
    closed: Notify,
    counters: Counters,
}

impl Limiter {
    pub fn new(listener: &'static str, cap: usize, ws: Option<WsCount>) -> Arc<Limiter> {
        let l = ("listener", listener);
        metrics::gauge!("ragctl_http_connections_limit", &[l]).set(cap as f64);
        Arc::new(Limiter {
            listener,
            cap,
            ws,
            live: AtomicUsize::new(0),
            evictable: Mutex::default(),
            closed: Notify::new(),
            counters: Counters {
                accepted: metrics::counter!("ragctl_http_connections_accepted_total", &[l]),
                shed: metrics::counter!("ragctl_http_connections_shed_total", &[l]),
                refused: metrics::counter!("ragctl_http_connections_refused_total", &[l]),
                header_timeouts: metrics::counter!("ragctl_http_header_timeouts_total", &[l]),
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

    fn register(self: &Arc<Self>) -> Arc<Slot> {
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
        })
    }

    /// Closes the oldest connection that is not serving a request.
    fn shed_oldest(&self) -> bool {
        let victim = {
            let mut ev = self.lock();
            ev.fresh.pop_first().or_else(|| ev.idle.pop_first())
        };
        match victim {
            Some((_, kill)) => {
                kill.cancel();
                self.counters.shed.increment(1);
                true
            }
            None => false,
        }
    }

    /// Makes room for one more connection; false if every open one is busy.
    async fn make_room(&self) -> bool {
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
struct Slot {
    id: u64,
    limiter: Arc<Limiter>,
    kill: CancellationToken,
    requests: AtomicUsize,
}

impl Slot {
    fn remove(&self) {
        let mut ev = self.limiter.lock();
        ev.fresh.remove(&self.id);
        ev.idle.remove(&self.id);
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

/// A request in flight: its connection cannot be shed until the response
/// body has been written (this guard rides in the body).
struct InFlight(Arc<Slot>);

impl InFlight {
    fn start(slot: &Arc<Slot>) -> InFlight {
        slot.requests.fetch_add(1, Ordering::Relaxed);
        slot.remove();
        InFlight(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.0;
        if slot.requests.fetch_sub(1, Ordering::Relaxed) == 1 && !slot.kill.is_cancelled() {
            slot.limiter.lock().idle.insert(slot.id, slot.kill.clone());
        }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts until `shutdown`, then stops accepting, lets requests in flight
/// finish (at most `HTTP_DRAIN`) and returns. Upgraded connections leave
/// the tracker when hyper hands them over.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limiter: Arc<Limiter>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let conns = TaskTracker::new();
    let mut backoff = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                accept_error(&limiter, &e, &mut backoff).await;
                continue;
            }
        };
        backoff.backoff.reset();
        limiter.counters.accepted.increment(1);
        if !limiter.make_room().await {
            continue;
        }
        let slot = limiter.register();
        let conn = serve_one(tcp, app.clone(), slot, http.clone(), shutdown.clone());
        conns.spawn(conn);
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(HTTP_DRAIN, conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = limiter.listener,
            left = conns.len(),
            "HTTP connections still busy after the drain deadline"
        );
    }
}

/// The accept loop's state after descriptor exhaustion: the shared
/// backoff (10 to 160 ms) and when it last warned.
struct AcceptErrors {
    backoff: Backoff,
    warned: Option<Instant>,
}

impl Default for AcceptErrors {
    fn default() -> AcceptErrors {
        AcceptErrors {
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(160)),
            warned: None,
        }
    }
}

/// Descriptor exhaustion sheds a connection to free one and backs off
/// briefly, so `accept` neither spins nor stalls for long; other errors
/// concern one connection only.
async fn accept_error(limiter: &Limiter, e: &std::io::Error, backoff: &mut AcceptErrors) {
    if !is_fd_exhaustion(e) {
        tracing::debug!(error = %e, "accept failed");
        return;
    }
    let reason = match e.raw_os_error() {
        Some(libc::EMFILE) => "emfile",
        Some(libc::ENFILE) => "enfile",
        _ => "no_memory",
    };
    metrics::counter!("ragctl_http_accept_errors_total", "listener" => limiter.listener, "reason" => reason)
        .increment(1);
    if backoff
        .warned
        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
    {
        backoff.warned = Some(Instant::now());
        tracing::warn!(listener = limiter.listener, error = %e, in_use = limiter.in_use(), "accept: out of descriptors; shedding idle connections");
    }
    if limiter.shed_oldest() {
        tokio::task::yield_now().await;
        return;
    }
    tokio::time::sleep(backoff.backoff.next_delay()).await;
}

async fn serve_one(
    tcp: TcpStream,
    app: Router,
    slot: Arc<Slot>,
    http: Arc<http1::Builder>,
    shutdown: CancellationToken,
) {
    // Frames are written whole (batched under load): Nagle's algorithm would
    // only hold a frame back behind a delayed ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let kill = slot.kill.clone();
    let limiter = slot.limiter.clone();
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::start(&slot);
        let response = hyper::service::Service::call(&app, req);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| {
                body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                })
            }))
        }
    });
    let conn = http
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // Shed: dropping the connection closes its socket.
        _ = kill.cancelled() => return,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            limiter.counters.header_timeouts.increment(1);
        }
        tracing::debug!(error = %e, "HTTP connection ended with an error");
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
        let l = Limiter::new("test", 3, None);
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
}
