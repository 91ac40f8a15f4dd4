//! The receivers: the raw LISTEN baseline, the WebSocket fleet the
//! bridge delivers to, and the idle sockets of the memory measurement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, Client};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::record::{Clock, Sink};
use crate::db::listener::quote_ident;

/// Concurrent WebSocket handshakes.
pub(super) const HANDSHAKES: usize = 128;

/// The raw baseline: a LISTEN connection driven by hand, as the bridge's.
pub(super) struct RawListener {
    pub(super) _client: Client,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn raw_listener(
    url: &str,
    channel: &str,
    sink: Arc<Sink>,
    clock: Clock,
) -> anyhow::Result<RawListener> {
    let (client, mut conn) = crate::db::connect(url, "ragctl-bench-raw").await?;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => sink.record(0, n.payload(), clock.ns()),
                Ok(_) => {}
                Err(e) => {
                    eprintln!(
                        "bench: raw LISTEN connection failed: {}",
                        crate::db::error_text(&e)
                    );
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .context("LISTEN on the raw channel")?;
    Ok(RawListener {
        _client: client,
        task,
    })
}

pub(super) type Ws = WebSocketStream<TcpStream>;

#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) addr: SocketAddr,
    pub(super) host: String,
}

pub(super) async fn ws_connect(ep: &Endpoint, token: &str) -> anyhow::Result<Ws> {
    ws_connect_query(ep, &format!("token={token}")).await
}

/// `/ws?<query>`; `query` is already URL-encoded.
pub(super) async fn ws_connect_query(ep: &Endpoint, query: &str) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(ep.addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!("ws://{}/ws?{query}", ep.host).into_client_request()?;
    let config = crate::bridge::unbuffered_ws_config().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
    Ok(ws)
}

/// The bridge's receiving clients: `clients` sockets, client `c` for user
/// `c % users`, each reconnecting if closed.
pub(super) struct Fleet {
    pub(super) sink: Arc<Sink>,
    pub(super) clients: usize,
    pub(super) connected: Arc<AtomicUsize>,
    pub(super) disconnects: Arc<AtomicU64>,
    pub(super) _tasks: JoinSet<()>,
}

/// What the fleet's clients share: where to connect, where to record,
/// the counters, and the gate that bounds concurrent handshakes.
struct Crew {
    /// The servers; a user's clients all go to one of them.
    eps: Vec<Endpoint>,
    sink: Arc<Sink>,
    connected: Arc<AtomicUsize>,
    disconnects: Arc<AtomicU64>,
    gate: Semaphore,
    clock: Clock,
}

/// Client `idx`: connects (again after a close), records every frame.
async fn fleet_client(idx: usize, ep: usize, token: Arc<str>, crew: Arc<Crew>) {
    loop {
        let ws = {
            let _permit = crew.gate.acquire().await;
            ws_connect(&crew.eps[ep], &token).await
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        crew.connected.fetch_add(1, Ordering::SeqCst);
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => crew.sink.record(idx, t.as_str(), crew.clock.ns()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        crew.connected.fetch_sub(1, Ordering::SeqCst);
        crew.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

pub(super) async fn start_fleet(
    ep: &Endpoint,
    tokens: &[Arc<str>],
    clients: usize,
    clock: Clock,
) -> anyhow::Result<Fleet> {
    start_fleet_on(std::slice::from_ref(ep), tokens, clients, clock).await
}

/// A fleet spread over several servers: the clients of user `u` (client
/// `c` is for user `c % tokens.len()`) all connect to server `u % eps.len()`.
pub(super) async fn start_fleet_on(
    eps: &[Endpoint],
    tokens: &[Arc<str>],
    clients: usize,
    clock: Clock,
) -> anyhow::Result<Fleet> {
    let crew = Arc::new(Crew {
        eps: eps.to_vec(),
        sink: Arc::new(Sink::new(clients)),
        connected: Arc::new(AtomicUsize::new(0)),
        disconnects: Arc::new(AtomicU64::new(0)),
        gate: Semaphore::new(HANDSHAKES),
        clock,
    });
    let mut tasks = JoinSet::new();
    for idx in 0..clients {
        let user = idx % tokens.len();
        let token = tokens[user].clone();
        tasks.spawn(fleet_client(idx, user % eps.len(), token, crew.clone()));
    }
    let fleet = Fleet {
        sink: crew.sink.clone(),
        clients,
        connected: crew.connected.clone(),
        disconnects: crew.disconnects.clone(),
        _tasks: tasks,
    };
    fleet.wait_connected(Duration::from_secs(60)).await?;
    Ok(fleet)
}

impl Fleet {
    /// Closes every client (their tasks end, their sockets drop).
    pub(super) fn stop(&mut self) {
        self._tasks.abort_all();
    }

    pub(super) async fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.connected.load(Ordering::SeqCst);
            if n >= self.clients {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {n} of {} WebSocket clients connected after {limit:?}",
                    self.clients
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Opens `n` sockets that only read (tungstenite answers pings while
/// reading). Returns the tasks holding them and how many failed.
pub(super) async fn open_idle(
    ep: &Endpoint,
    tokens: &[Arc<str>],
    n: usize,
) -> (JoinSet<()>, usize, usize) {
    let gate = Arc::new(Semaphore::new(HANDSHAKES));
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (ep, token, gate) = (ep.clone(), tokens[i % tokens.len()].clone(), gate.clone());
        let (opened, failed) = (opened.clone(), failed.clone());
        tasks.spawn(async move {
            let ws = {
                let _permit = gate.acquire().await;
                tokio::time::timeout(Duration::from_secs(30), ws_connect(&ep, &token)).await
            };
            let Ok(Ok(mut ws)) = ws else {
                failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            opened.fetch_add(1, Ordering::SeqCst);
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while opened.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = opened.load(Ordering::SeqCst);
    (tasks, opened, n - opened)
}
