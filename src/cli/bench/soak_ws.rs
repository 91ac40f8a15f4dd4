//! The soak's sockets: each one connects to its API instance with
//! `/ws?since=<cursor>` (the soak's start the first time, then the cursor
//! of its last `realtime.caught_up`), lives a random while, refreshes its
//! token in band (`auth.refresh`) while it lives, closes and resumes. Once
//! told to settle it stays connected, so that its view can be compared
//! with REST.

use std::collections::{BTreeMap, HashMap};
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
use super::soak_procs::{Instances, url_of};
use super::soak_rest::{Truth, fetch};
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
    pub(super) refused_process: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) caught_up: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) resync_reasons: Mutex<BTreeMap<String, u64>>,
    pub(super) reloads: AtomicU64,
    pub(super) reload_failed: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) refresh_sent: AtomicU64,
    pub(super) refresh_acked: AtomicU64,
    pub(super) churned: AtomicU64,
    /// Sockets open now.
    pub(super) open: AtomicU64,
    pub(super) closed_expired: AtomicU64,
    pub(super) closed_refresh: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// The counters' values, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WsCounts {
    pub connects: u64,
    /// 429 (the user's catch-ups) and 503 (the process's) before the upgrade.
    pub refused: u64,
    pub refused_process: u64,
    pub failed: u64,
    pub caught_up: u64,
    pub resyncs: u64,
    pub resync_reasons: BTreeMap<String, u64>,
    /// REST reloads after a resync (one serves a user's sockets resynced
    /// before it started).
    pub reloads: u64,
    pub reload_failed: u64,
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
            refused_process: g(&self.refused_process),
            failed: g(&self.failed),
            caught_up: g(&self.caught_up),
            resyncs: g(&self.resyncs),
            resync_reasons: self.resync_reasons.lock().expect("reasons").clone(),
            reloads: g(&self.reloads),
            reload_failed: g(&self.reload_failed),
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

/// A user's last REST reload and when it started.
type LastReload = tokio::sync::Mutex<Option<(Instant, Arc<Truth>)>>;

/// What every socket shares.
struct Shared {
    urls: Instances,
    secret: String,
    start: String,
    counters: Arc<WsCounters>,
    gate: Semaphore,
    settle: CancellationToken,
    stop: CancellationToken,
    http: reqwest::Client,
    /// Per user, the last REST reload and when it started.
    reloads: HashMap<Uuid, LastReload>,
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
    pub(super) fn start(
        urls: Instances,
        secret: &str,
        users: &[Uuid],
        n: usize,
    ) -> anyhow::Result<Sockets> {
        let instances = urls.read().expect("urls").len();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let reloads = users.iter().map(|u| (*u, Default::default())).collect();
        let shared = Arc::new(Shared {
            urls,
            secret: secret.to_string(),
            start: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            counters: Arc::default(),
            gate: Semaphore::new(HANDSHAKES),
            settle: CancellationToken::new(),
            stop: CancellationToken::new(),
            http,
            reloads,
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
        Ok(Sockets {
            views,
            counters: shared.counters.clone(),
            shared,
            tasks,
        })
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
            Ok(ws) => {
                sh.counters.connects.fetch_add(1, Ordering::Relaxed);
                sh.counters.open.fetch_add(1, Ordering::Relaxed);
                live(ws, user, api, &sh, &view).await;
                sh.counters.open.fetch_sub(1, Ordering::Relaxed);
                view.lock().expect("view").live = false;
            }
            Err(wait) => tokio::time::sleep(uniform(&wait)).await,
        }
    }
}

/// After a refusal (Retry-After is 2 s), after a failure (s, uniform).
const REFUSED_WAIT: std::ops::Range<f64> = 2.0..4.0;
const FAILED_WAIT: std::ops::Range<f64> = 0.5..2.0;

/// One handshake from the view's cursor; refusals and failures counted,
/// with how long to wait before the next try.
async fn connect(
    user: Uuid,
    api: usize,
    sh: &Shared,
    view: &Mutex<View>,
) -> Result<Ws, std::ops::Range<f64>> {
    let token = crate::auth::mint(&sh.secret, user, TOKEN_TTL).map_err(|_| FAILED_WAIT)?;
    let since = view.lock().expect("view").cursor.clone();
    let since = since.unwrap_or_else(|| sh.start.clone());
    let ep = endpoint(&url_of(&sh.urls, api)).ok_or(FAILED_WAIT)?;
    let query = format!("token={token}&since={since}");
    let permit = sh.gate.acquire().await.map_err(|_| FAILED_WAIT)?;
    let r = tokio::time::timeout(Duration::from_secs(30), ws_connect_query(&ep, &query)).await;
    drop(permit);
    let c = &sh.counters;
    let counter = match r {
        Ok(Ok(ws)) => return Ok(ws),
        Ok(Err(e)) => match status(&e) {
            Some(429) => &c.refused,
            Some(503) => &c.refused_process,
            _ => &c.failed,
        },
        Err(_) => &c.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let failed = std::ptr::eq(counter, &c.failed);
    Err(if failed { FAILED_WAIT } else { REFUSED_WAIT })
}

/// The HTTP status of a refused upgrade.
fn status(e: &anyhow::Error) -> Option<u16> {
    match e.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
        _ => None,
    }
}

/// A connected socket: frames into the view, refreshes on schedule, closes
/// at the end of its lifetime (unless settling).
async fn live(mut ws: Ws, user: Uuid, api: usize, sh: &Arc<Shared>, view: &Arc<Mutex<View>>) {
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
            m = ws.next() => match on_message(m, sh, view) {
                Read::More => {}
                Read::Resync => {
                    tokio::spawn(reload(sh.clone(), user, api, view.clone(), Instant::now()));
                }
                Read::Done => return,
            },
        }
    }
}

/// After a `realtime.resync`, as a client must: the user's state through
/// REST, merged into the view. One reload serves every socket of the user
/// resynced before it started.
async fn reload(sh: Arc<Shared>, user: Uuid, api: usize, view: Arc<Mutex<View>>, at: Instant) {
    let mut last = sh.reloads[&user].lock().await;
    let fresh = last.as_ref().filter(|(started, _)| *started >= at);
    let truth = match fresh {
        Some((_, t)) => t.clone(),
        None => {
            let Some((started, t)) = fetch_until_done(&sh, user, api).await else {
                return;
            };
            let t = Arc::new(t);
            *last = Some((started, t.clone()));
            t
        }
    };
    view.lock().expect("view").merge(&truth.docs, &truth.jobs);
}

/// A REST reload, tried again (each failure counted) until it succeeds
/// or the soak stops; when its successful try started.
async fn fetch_until_done(sh: &Shared, user: Uuid, api: usize) -> Option<(Instant, Truth)> {
    while !sh.stop.is_cancelled() {
        let started = Instant::now();
        match fetch(&sh.http, &url_of(&sh.urls, api), &sh.secret, user).await {
            Ok(t) => {
                sh.counters.reloads.fetch_add(1, Ordering::Relaxed);
                return Some((started, t));
            }
            Err(_) => {
                sh.counters.reload_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(uniform(&FAILED_WAIT)).await;
            }
        }
    }
    None
}

async fn send_refresh(ws: &mut Ws, user: Uuid, sh: &Shared) -> bool {
    let Ok(token) = crate::auth::mint(&sh.secret, user, TOKEN_TTL) else {
        return false;
    };
    let frame = serde_json::json!({"type": "auth.refresh", "payload": {"token": token}});
    sh.counters.refresh_sent.fetch_add(1, Ordering::Relaxed);
    ws.send(Message::text(frame.to_string())).await.is_ok()
}

/// What a read calls for.
enum Read {
    More,
    Resync,
    Done,
}

/// One message read.
fn on_message(
    m: Option<Result<Message, tungstenite::Error>>,
    sh: &Shared,
    view: &Mutex<View>,
) -> Read {
    let c = &sh.counters;
    match m {
        Some(Ok(Message::Text(t))) => {
            c.frames.fetch_add(1, Ordering::Relaxed);
            let frame = view.lock().expect("view").apply(t.as_str());
            match frame {
                Frame::CaughtUp => c.caught_up.fetch_add(1, Ordering::Relaxed),
                Frame::Resync(why) => {
                    c.resyncs.fetch_add(1, Ordering::Relaxed);
                    let mut reasons = c.resync_reasons.lock().expect("reasons");
                    *reasons.entry(why).or_default() += 1;
                    return Read::Resync;
                }
                Frame::Refreshed => c.refresh_acked.fetch_add(1, Ordering::Relaxed),
                Frame::State | Frame::Other => 0,
            };
            Read::More
        }
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
            let counter = match code {
                4001 => &c.closed_expired,
                4003 | 4004 => &c.closed_refresh,
                _ => &c.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Read::Done
        }
        Some(Ok(_)) => Read::More,
        Some(Err(_)) | None => {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            Read::Done
        }
    }
}
