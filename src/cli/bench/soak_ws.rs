//! The soak's sockets: each one connects to its API instance with
//! `/ws?since=<cursor>` (the soak's start the first time, then the cursor
//! of its last `realtime.caught_up`), lives a random while, refreshes its
//! token in band (`auth.refresh`) while it lives, closes and resumes. Once
//! told to settle it stays connected, so that its view can be compared
//! with REST.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fleet::{Endpoint, Ws, ws_connect_query};
use super::soak_procs::{Urls, url_of};
use super::soak_view::{Frame, View};

/// A socket's token lives this long: a socket that outlives it stays open
/// only through its refreshes.
const TOKEN_TTL: Duration = Duration::from_secs(120);
/// A socket lives this long (s, uniform) before it closes and resumes.
const LIFETIME: std::ops::Range<f64> = 30.0..240.0;
/// Between two refreshes of a socket (s, uniform).
const REFRESH: std::ops::Range<f64> = 30.0..60.0;
/// Concurrent handshakes.
const HANDSHAKES: usize = 64;

/// What the sockets did, counted.
#[derive(Debug, Default)]
pub(super) struct WsCounters {
    pub(super) connects: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) caught_up: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) refresh_sent: AtomicU64,
    pub(super) refresh_acked: AtomicU64,
    pub(super) churned: AtomicU64,
    pub(super) closed_expired: AtomicU64,
    pub(super) closed_refresh: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// The counters' values, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WsCounts {
    pub connects: u64,
    pub refused: u64,
    pub failed: u64,
    pub caught_up: u64,
    pub resyncs: u64,
    pub frames: u64,
    pub refresh_sent: u64,
    pub refresh_acked: u64,
    pub churned: u64,
    pub closed_expired: u64,
    pub closed_refresh: u64,
    pub dropped: u64,
}

impl WsCounters {
    pub(super) fn snapshot(&self) -> WsCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WsCounts {
            connects: g(&self.connects),
            refused: g(&self.refused),
            failed: g(&self.failed),
            caught_up: g(&self.caught_up),
            resyncs: g(&self.resyncs),
            frames: g(&self.frames),
            refresh_sent: g(&self.refresh_sent),
            refresh_acked: g(&self.refresh_acked),
            churned: g(&self.churned),
            closed_expired: g(&self.closed_expired),
            closed_refresh: g(&self.closed_refresh),
            dropped: g(&self.dropped),
        }
    }
}

/// What every socket shares.
struct Shared {
    urls: Urls,
    secret: String,
    start: String,
    counters: Arc<WsCounters>,
    gate: Semaphore,
    settle: CancellationToken,
    stop: CancellationToken,
}

/// Every socket, with its user and view.
pub(super) struct Sockets {
    pub(super) views: Vec<(Uuid, Arc<Mutex<View>>)>,
    pub(super) counters: Arc<WsCounters>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Sockets {
    /// `n` sockets; socket `i` is `users[i % len]`'s, on instance
    /// `(i / len) % instances`, so each user has sockets on every instance.
    pub(super) fn start(urls: Urls, secret: &str, users: &[Uuid], n: usize) -> Sockets {
        let instances = urls.read().expect("urls").len();
        let shared = Arc::new(Shared {
            urls,
            secret: secret.to_string(),
            start: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            counters: Arc::default(),
            gate: Semaphore::new(HANDSHAKES),
            settle: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        let mut views = Vec::with_capacity(n);
        for i in 0..n {
            let user = users[i % users.len()];
            let view = Arc::new(Mutex::new(View::default()));
            views.push((user, view.clone()));
            let api = (i / users.len()) % instances;
            tasks.spawn(socket(user, api, shared.clone(), view));
        }
        Sockets {
            views,
            counters: shared.counters.clone(),
            shared,
            tasks,
        }
    }

    /// No more churn: every socket stays (or gets) connected.
    pub(super) fn settle(&self) {
        self.shared.settle.cancel();
    }

    /// Sockets caught up on their current connection.
    pub(super) fn live(&self) -> usize {
        let live = |v: &Arc<Mutex<View>>| v.lock().expect("view").live;
        self.views.iter().filter(|(_, v)| live(v)).count()
    }

    pub(super) async fn stop(mut self) {
        self.shared.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// `http://host:port` as the fleet's endpoint.
fn endpoint(url: &str) -> Option<Endpoint> {
    let host = url
        .strip_prefix("http://")?
        .trim_end_matches('/')
        .to_string();
    Some(Endpoint {
        addr: host.parse().ok()?,
        host,
    })
}

fn uniform(r: &std::ops::Range<f64>) -> Duration {
    Duration::from_secs_f64(rand::random_range(r.clone()))
}

/// One socket, until the soak stops: connect (resuming), live, again.
async fn socket(user: Uuid, api: usize, sh: Arc<Shared>, view: Arc<Mutex<View>>) {
    while !sh.stop.is_cancelled() {
        let ws = tokio::select! {
            ws = connect(user, api, &sh, &view) => ws,
            _ = sh.stop.cancelled() => return,
        };
        match ws {
            Some(ws) => {
                sh.counters.connects.fetch_add(1, Ordering::Relaxed);
                live(ws, user, &sh, &view).await;
                view.lock().expect("view").live = false;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// One handshake from the view's cursor; refusals and failures counted.
async fn connect(user: Uuid, api: usize, sh: &Shared, view: &Mutex<View>) -> Option<Ws> {
    let token = crate::auth::mint(&sh.secret, user, TOKEN_TTL).ok()?;
    let since = view.lock().expect("view").cursor.clone();
    let since = since.unwrap_or_else(|| sh.start.clone());
    let ep = endpoint(&url_of(&sh.urls, api))?;
    let query = format!("token={token}&since={since}");
    let _permit = sh.gate.acquire().await.ok()?;
    let r = tokio::time::timeout(Duration::from_secs(30), ws_connect_query(&ep, &query)).await;
    match r {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) if refused(&e) => {
            sh.counters.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => {
            sh.counters.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A 429 or 503 before the upgrade (too many catch-ups): try again later.
fn refused(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Http(r)) => matches!(r.status().as_u16(), 429 | 503),
        _ => false,
    }
}

/// A connected socket: frames into the view, refreshes on schedule, closes
/// at the end of its lifetime (unless settling).
async fn live(mut ws: Ws, user: Uuid, sh: &Shared, view: &Mutex<View>) {
    let end = Instant::now() + uniform(&LIFETIME);
    let mut refresh_at = Instant::now() + uniform(&REFRESH);
    loop {
        let churn = !sh.settle.is_cancelled();
        tokio::select! {
            _ = sh.stop.cancelled() => return,
            _ = tokio::time::sleep_until(end), if churn => {
                sh.counters.churned.fetch_add(1, Ordering::Relaxed);
                let _ = ws.close(None).await;
                return;
            }
            _ = tokio::time::sleep_until(refresh_at) => {
                refresh_at = Instant::now() + uniform(&REFRESH);
                if !send_refresh(&mut ws, user, sh).await {
                    return;
                }
            }
            m = ws.next() => if !on_message(m, sh, view) {
                return;
            },
        }
    }
}

async fn send_refresh(ws: &mut Ws, user: Uuid, sh: &Shared) -> bool {
    let Ok(token) = crate::auth::mint(&sh.secret, user, TOKEN_TTL) else {
        return false;
    };
    let frame = serde_json::json!({"type": "auth.refresh", "payload": {"token": token}});
    sh.counters.refresh_sent.fetch_add(1, Ordering::Relaxed);
    ws.send(Message::text(frame.to_string())).await.is_ok()
}

/// One message read; false when the socket is done.
fn on_message(
    m: Option<Result<Message, tungstenite::Error>>,
    sh: &Shared,
    view: &Mutex<View>,
) -> bool {
    let c = &sh.counters;
    match m {
        Some(Ok(Message::Text(t))) => {
            c.frames.fetch_add(1, Ordering::Relaxed);
            match view.lock().expect("view").apply(t.as_str()) {
                Frame::CaughtUp => c.caught_up.fetch_add(1, Ordering::Relaxed),
                Frame::Resync => c.resyncs.fetch_add(1, Ordering::Relaxed),
                Frame::Refreshed => c.refresh_acked.fetch_add(1, Ordering::Relaxed),
                Frame::State | Frame::Other => 0,
            };
            true
        }
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
            let counter = match code {
                4001 => &c.closed_expired,
                4003 | 4004 => &c.closed_refresh,
                _ => &c.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(Ok(_)) => true,
        Some(Err(_)) | None => {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}
