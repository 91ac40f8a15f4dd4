//! Serving HTTP connections: the accept loop, the connection limiter
//! (`limiter.rs`) and the timeouts a slow client cannot defeat (`slow.rs`).
//!
//! Connections are served with hyper directly rather than `axum::serve`,
//! which exposes neither hyper's header-read timeout nor the connections
//! themselves. The limiter keeps open sockets (HTTP connections plus
//! WebSockets) within a budget derived from the open-file limit, so that
//! `accept` never runs out of descriptors. At the budget a newcomer sheds
//! a connection that is not serving a request (one that never sent one
//! first, then one idle between requests), else one whose request has been
//! stalled on its client: idle floods and dribbled bodies cannot lock out
//! health checks, and requests waiting on the server are never cut.

mod limiter;
mod slow;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
pub use limiter::{
    FD_RESERVE_BASE, FdBudget, Limiter, METRICS_MAX_CONNECTIONS, MIN_CONNECTIONS, WsCount,
};
use limiter::{InFlight, Slot};
pub use slow::{BodyRate, WatchedIo};

/// How long shutdown waits for requests in flight.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// HTTP serving settings, in [`super::Shared`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Open client sockets (HTTP connections and WebSockets) at most.
    pub max_connections: usize,
    /// Headers must arrive within this long of connecting or of the
    /// previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// `/metrics` has its own listener (`--metrics-addr`).
    pub metrics_separate: bool,
    /// The rate a request body must keep up with.
    pub body: BodyRate,
    /// A response write that makes no progress this long ends the
    /// connection.
    pub write_timeout: Duration,
    /// A request waiting this long on its client makes its connection
    /// sheddable at the budget.
    pub stall: Duration,
    /// Requests one user may have in flight at once.
    pub max_requests_per_user: usize,
    /// `/metrics` on the API port answers only `Authorization: Bearer`
    /// with this token; without it, not at all.
    pub metrics_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            metrics_separate: false,
            body: BodyRate::default(),
            write_timeout: Duration::from_secs(30),
            stall: Duration::from_secs(5),
            max_requests_per_user: 32,
            metrics_token: None,
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
    cfg: &HttpConfig,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    let conn_cfg = Arc::new(ConnConfig {
        http,
        body: cfg.body,
        write_timeout: cfg.write_timeout,
    });
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
        let conn = serve_one(tcp, app.clone(), slot, conn_cfg.clone(), shutdown.clone());
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

/// What every connection of a listener is served with.
struct ConnConfig {
    http: http1::Builder,
    body: BodyRate,
    write_timeout: Duration,
}

async fn serve_one(
    tcp: TcpStream,
    app: Router,
    slot: Arc<Slot>,
    cfg: Arc<ConnConfig>,
    shutdown: CancellationToken,
) {
    // Frames are written whole (batched under load): Nagle's algorithm would
    // only hold a frame back behind a delayed ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let kill = slot.kill.clone();
    let limiter = slot.limiter.clone();
    let io = WatchedIo::new(
        tcp,
        cfg.write_timeout,
        slot.progress.clone(),
        limiter.listener,
    );
    let service = Service {
        app: TowerToHyperService::new(app),
        slot,
        rate: cfg.body,
    };
    let conn = cfg
        .http
        .serve_connection(TokioIo::new(io), service)
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

/// The connection's service: each request body held to `rate` (a body too
/// slow is answered 408, whatever the handler made of the failed read),
/// and the request kept in flight in the limiter until its response body
/// has been written.
#[derive(Clone)]
struct Service {
    app: TowerToHyperService<Router>,
    slot: Arc<Slot>,
    rate: BodyRate,
}

type Request = hyper::Request<hyper::body::Incoming>;
type Answer = Result<axum::response::Response, Infallible>;

impl hyper::service::Service<Request> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Request) -> Self::Future {
        let in_flight = InFlight::start(&self.slot);
        let listener = self.slot.limiter.listener;
        let progress = self.slot.progress.clone();
        let (req, too_slow) = req.into_parts();
        let (body, too_slow) = slow::RateBody::new(too_slow, self.rate, progress, listener);
        let req = hyper::Request::from_parts(req, body);
        let response = hyper::service::Service::call(&self.app, req);
        Box::pin(async move {
            let response = response.await?;
            let response = too_slow.answer().unwrap_or(response);
            if response.status() == hyper::StatusCode::TOO_MANY_REQUESTS {
                in_flight.refused();
            }
            Ok(crate::api::guard_body::hold(response, in_flight))
        })
    }
}
