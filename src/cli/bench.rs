//! `ragctl bench`: how fast and how faithfully the realtime bridge forwards
//! events, measured end to end against a real server and a real PostgreSQL.
//!
//! One run measures, in order:
//!
//! 1. idle sockets: the server's RSS before and after opening
//!    `--idle-sockets` WebSockets that only answer pings (KiB per socket);
//! 2. raw `NOTIFY → LISTEN` latency (a LISTEN connection in this process, on
//!    a channel of its own), the baseline;
//! 3. bridge latency, `pg_notify` commit → WebSocket frame at the client, at
//!    `--rate` events/s to `--clients` sockets spread over `--users` users;
//! 4. the ceiling, raw then bridge: the highest rate committed in a 3-s step
//!    that lost nothing and whose backlog drained within a second of the
//!    last commit (doubling, then bisecting).
//!
//! Each phase also records the CPU used by this process, the server and
//! PostgreSQL (from `/proc`), and the server's own delivery histogram and
//! counters (from `/metrics`), so that a missed target can be explained.
//!
//! Latency starts when the `execute` of `SELECT pg_notify(..)` returns (the
//! commit) and ends when the payload or frame has been read by the receiving
//! task. Every event carries `bench:<phase>:<seq>` in its `error_message`, so
//! each delivery is matched to its commit instant after the run; nothing is
//! shared on the hot path but one mutex per receiver.

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Statement};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Failure;
use crate::config::{ConnectOpts, parse_duration};
use crate::db::listener::quote_ident;
use crate::events::{Envelope, EventType, encode_notifications};

/// Database server used when none is configured.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Executes a publisher connection keeps in flight (pipelined).
const MAX_IN_FLIGHT: usize = 16;
/// Concurrent WebSocket handshakes.
const HANDSHAKES: usize = 128;
/// Highest rate the ceiling search tries.
const MAX_RATE: u32 = 512_000;
/// A step whose publishers committed less than this share of the asked rate
/// is publisher-bound.
const PUBLISH_SHORTFALL: f64 = 0.95;
/// A ceiling step is sustained if its backlog drained within this long.
const MAX_BACKLOG: Duration = Duration::from_secs(1);
/// No phase is active.
const NO_PHASE: u32 = u32::MAX;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without --server-url it creates a database (bench_...) on the configured \
PostgreSQL server (DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres), \
starts `ragctl serve --no-workers --port 0` on it, and removes both at the end. \
With --server-url it uses that server, publishes on its database \
(--database-url) and mints tokens with its --jwt-secret; --server-pid lets it \
read the server's RSS.

Exit codes: 0 the benchmark ran and met its targets; 1 a target was missed \
(named on stderr); 2 usage, connection or start-up error.

Examples:
  ragctl bench
  ragctl bench --rate 5000 --duration 30s --clients 2000 --users 200 --json
  ragctl bench --server-url http://127.0.0.1:8080 --server-pid $(pgrep -n ragctl) --idle-sockets 0")]
pub struct BenchArgs {
    /// Event rate of the latency runs, events/s.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Length of each latency run (raw, then bridge).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// WebSocket clients receiving events.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Users the clients are spread over evenly; each event goes to one user.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Idle sockets opened to measure the server's memory per socket (0 skips).
    #[arg(long, default_value_t = 10_000)]
    pub idle_sockets: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Benchmark the running server at this base URL (http://host:port)
    /// instead of starting one.
    #[arg(long)]
    pub server_url: Option<String>,
    /// PID of the server at --server-url, to read its RSS from /proc.
    #[arg(long, requires = "server_url")]
    pub server_pid: Option<u32>,
    /// Publisher connections; the rate is split evenly across them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub publishers: u64,
    /// Length of each step of the ceiling search.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,
    /// Skip the ceiling search.
    #[arg(long)]
    pub no_ceiling: bool,
    /// --ws-queue of the server this command starts (frames per socket).
    #[arg(long, default_value_t = 256)]
    pub ws_queue: usize,
    /// Copy the started server's log to stderr.
    #[arg(long)]
    pub server_log: bool,
}

// ---------------------------------------------------------------- report --

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub mem_total_mib: Option<u64>,
    pub kernel: Option<String>,
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub rate: u32,
    pub duration_s: f64,
    pub clients: u64,
    pub users: u64,
    pub publishers: u64,
    pub idle_sockets: usize,
    pub step_s: f64,
    pub server: String,
    pub ws_queue: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub mean_us: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub rate: u32,
    pub events: u64,
    /// Events committed per second over the publishing window.
    pub published_rate: f64,
    pub publish_errors: u64,
    /// Deliveries expected (events × sockets of the event's user).
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Frames that reached a socket of another user (must be 0).
    pub misrouted: u64,
    /// Deliveries read before the publisher saw its commit acknowledged
    /// (counted as 0 µs).
    pub before_ack: u64,
    /// Last delivery minus last commit, ms (how long the backlog took).
    pub backlog_ms: f64,
    /// WebSocket disconnects during the phase (slow-consumer closes etc.).
    pub disconnects: u64,
    pub latency: Option<Stats>,
    /// CPU used while publishing and draining, in % of one core.
    pub cpu: Option<CpuShare>,
    /// The server's own view (bridge only): envelope `ts` → frame written
    /// to the socket, from its `ragctl_bridge_delivery_seconds` histogram.
    pub server_side: Option<ServerSide>,
    /// The server's counters that moved during the phase (forwarded,
    /// listener overflow, slow consumers, drops).
    pub server_counters: std::collections::BTreeMap<String, f64>,
    /// Nothing lost (no drops, no disconnects) and the backlog drained
    /// within a second of the last commit.
    pub sustained: bool,
    /// The publishers committed less than 95% of the asked rate: PostgreSQL
    /// (or the CPU it shares) could not take more.
    pub publisher_bound: bool,
    /// Why a step was not sustained.
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Highest rate committed in a sustained step, events/s (0 if even
    /// the first step failed).
    pub events_per_s: u32,
    pub steps: Vec<PhaseResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub raw: Ceiling,
    pub bridge: Ceiling,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// Short name for the error message.
    pub key: &'static str,
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None` when not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub config: Config,
    pub idle: Option<IdleReport>,
    pub raw: PhaseResult,
    pub bridge: PhaseResult,
    pub ceiling: Option<CeilingReport>,
    pub targets: Vec<TargetCheck>,
    pub ok: bool,
    /// Latency phases during which the hypervisor or other processes took
    /// enough CPU to make them unrepresentative.
    pub disturbed: Vec<String>,
}

/// Percentiles read off the server's histogram: each is the upper bound of
/// the bucket it falls in, in ms (`None` past the last bucket).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerSide {
    pub frames: u64,
    pub p50_le_ms: Option<f64>,
    pub p90_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
}

/// The server's metrics at one moment: its delivery histogram and its
/// `_total` counters.
struct Scrape {
    buckets: Vec<(f64, u64)>,
    counters: Vec<(String, f64)>,
}

async fn scrape(http: &reqwest::Client, api: &str) -> Option<Scrape> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counters = text
        .lines()
        .filter(|l| l.starts_with("ragctl_"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            name.split('{')
                .next()
                .is_some_and(|n| n.ends_with("_total"))
        })
        .filter_map(|(name, v)| Some((name.to_string(), v.parse().ok()?)))
        .collect();
    Some(Scrape {
        buckets: histogram(&text),
        counters,
    })
}

/// Counters that moved between two scrapes.
fn counter_deltas(before: &Scrape, after: &Scrape) -> std::collections::BTreeMap<String, f64> {
    after
        .counters
        .iter()
        .filter_map(|(name, v)| {
            let b = before
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |x| x.1);
            (v - b > 0.0).then(|| (name.clone(), v - b))
        })
        .collect()
}

/// Cumulative `(le seconds, count)` of the server's delivery histogram.
fn histogram(text: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ragctl_bridge_delivery_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, rest) = rest.split_once('"')?;
            let count = rest.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

fn server_side(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<ServerSide> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0, |x| x.1);
            (le, n.saturating_sub(b))
        })
        .collect();
    let frames = delta.last()?.1;
    if frames == 0 {
        return None;
    }
    let pct = |p: f64| {
        let want = (p * frames as f64).ceil() as u64;
        delta
            .iter()
            .find(|(_, n)| *n >= want)
            .map(|(le, _)| *le * 1000.0)
            .filter(|v| v.is_finite())
    };
    Some(ServerSide {
        frames,
        p50_le_ms: pct(0.50),
        p90_le_ms: pct(0.90),
        p99_le_ms: pct(0.99),
    })
}

// ------------------------------------------------------------ recording --

#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

struct Rec {
    seq: u32,
    ns: u64,
}

/// Where receivers record deliveries: one vector per receiver, so the hot
/// path takes an uncontended lock and touches two shared atomics.
struct Sink {
    phase: AtomicU32,
    hits: AtomicU64,
    last_ns: AtomicU64,
    stray: AtomicU64,
    slots: Vec<Mutex<Vec<Rec>>>,
}

impl Sink {
    fn new(slots: usize) -> Sink {
        Sink {
            phase: AtomicU32::new(NO_PHASE),
            hits: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            slots: (0..slots).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn record(&self, slot: usize, text: &str, ns: u64) {
        let Some((phase, seq)) = parse_tag(text) else {
            return;
        };
        if phase != self.phase.load(Ordering::Relaxed) {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.slots[slot].lock().expect("sink").push(Rec { seq, ns });
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn begin(&self, phase: u32) {
        for s in &self.slots {
            s.lock().expect("sink").clear();
        }
        self.hits.store(0, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn end(&self) -> Vec<Vec<Rec>> {
        self.phase.store(NO_PHASE, Ordering::SeqCst);
        self.slots
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().expect("sink")))
            .collect()
    }

    fn activity(&self) -> u64 {
        self.hits.load(Ordering::Relaxed) + self.stray.load(Ordering::Relaxed)
    }
}

const TAG: &str = "\"bench:";

/// `(phase, seq)` from a payload or frame carrying `"bench:<phase>:<seq>"`.
fn parse_tag(text: &str) -> Option<(u32, u32)> {
    let at = text.find(TAG)? + TAG.len();
    let rest = &text[at..];
    let (phase, rest) = rest.split_once(':')?;
    let end = rest.find('"')?;
    Some((phase.parse().ok()?, rest[..end].parse().ok()?))
}

/// The NOTIFY payload of event `seq` of `phase`, for user `seq % users`,
/// built just before it is published so that its `ts` (which the server's
/// `ragctl_bridge_delivery_seconds` histogram starts from) is current.
fn event_payload(phase: u32, seq: usize, users: &[Uuid]) -> String {
    let env = Envelope::new(
        users[seq % users.len()],
        EventType::DocumentStatusUpdated,
        json!({
            "document_id": Uuid::new_v4(),
            "status": "parsed",
            "error_message": format!("bench:{phase}:{seq}"),
            "updated_at": chrono::Utc::now(),
        }),
        "ragctl-bench",
    );
    let mut notes = encode_notifications(&env).expect("a small envelope encodes");
    assert_eq!(notes.len(), 1, "bench envelopes fit in one notification");
    notes.swap_remove(0)
}

fn stats(mut us: Vec<u32>) -> Option<Stats> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let pct = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    let mean = us.iter().map(|&v| v as u64).sum::<u64>() / us.len() as u64;
    Some(Stats {
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        max_us: *us.last().expect("non-empty"),
        mean_us: mean as u32,
    })
}

// ----------------------------------------------------------- publishing --

struct Publisher {
    client: Client,
    stmt: Statement,
}

struct Published {
    first_ns: u64,
    last_commit_ns: u64,
    errors: u64,
}

/// A thread of its own for the publishers, so that their pacing and commit
/// instants do not queue behind the thousands of client tasks of the main
/// runtime. Dropping it stops the thread.
struct PublishRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PublishRuntime {
    fn start() -> anyhow::Result<PublishRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the publishers' runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-publish".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .context("cannot start the publishers' thread")?;
        Ok(PublishRuntime {
            handle,
            _stop: stop,
        })
    }
}

async fn connect_publisher(url: &str) -> anyhow::Result<Arc<Publisher>> {
    let (client, conn) = crate::db::connect(url, "ragctl-bench-publisher").await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let stmt = client.prepare("SELECT pg_notify($1, $2)").await?;
    Ok(Arc::new(Publisher { client, stmt }))
}

/// What a phase publishes: events `0..n` of `phase`, spread over `users`.
struct Batch {
    phase: u32,
    n: usize,
    users: Arc<Vec<Uuid>>,
}

/// Publishes events `k, k + P, ...` of the batch from publisher `k`, event
/// `i` due at `t0 + i / rate`, at most [`MAX_IN_FLIGHT`] pipelined; stores
/// each commit instant in `commits`.
#[allow(clippy::too_many_arguments)]
async fn publish_share(
    publisher: Arc<Publisher>,
    k: usize,
    step: usize,
    channel: Arc<str>,
    batch: Arc<Batch>,
    commits: Arc<Vec<AtomicU64>>,
    rate: f64,
    t0: tokio::time::Instant,
    clock: Clock,
) -> u64 {
    let n = batch.n;
    let client = &publisher.client;
    let stmt = &publisher.stmt;
    let channel: &str = &channel;
    let mut errors = 0;
    let mut next = k;
    let mut inflight = FuturesUnordered::new();
    loop {
        let can_send = next < n && inflight.len() < MAX_IN_FLIGHT;
        if !can_send && inflight.is_empty() {
            break;
        }
        let due = t0 + Duration::from_secs_f64(next as f64 / rate);
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                let (seq, ok): (usize, bool) = done;
                if ok {
                    commits[seq].store(clock.ns().max(1), Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            _ = tokio::time::sleep_until(due), if can_send => {
                let seq = next;
                let payload = event_payload(batch.phase, seq, &batch.users);
                inflight.push(async move {
                    let params: [&(dyn ToSql + Sync); 2] = [&channel, &payload];
                    (seq, client.execute(stmt, &params).await.is_ok())
                });
                next += step;
            }
        }
    }
    errors
}

async fn publish(
    runtime: &tokio::runtime::Handle,
    publishers: &[Arc<Publisher>],
    channel: &str,
    batch: Arc<Batch>,
    commits: Arc<Vec<AtomicU64>>,
    rate: u32,
    clock: Clock,
) -> anyhow::Result<Published> {
    let channel: Arc<str> = Arc::from(channel);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
    let first_ns = clock.ns() + 20_000_000;
    let mut tasks = JoinSet::new();
    for (k, p) in publishers.iter().enumerate() {
        tasks.spawn_on(
            publish_share(
                p.clone(),
                k,
                publishers.len(),
                channel.clone(),
                batch.clone(),
                commits.clone(),
                rate as f64,
                t0,
                clock,
            ),
            runtime,
        );
    }
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.context("publisher task")?;
    }
    let last_commit_ns = commits
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Ok(Published {
        first_ns,
        last_commit_ns,
        errors,
    })
}

// ------------------------------------------------------------ receivers --

/// The raw baseline: a LISTEN connection driven by hand, as the bridge's.
struct RawListener {
    _client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_listener(
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

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    host: String,
}

async fn ws_connect(ep: &Endpoint, token: &str) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(ep.addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!("ws://{}/ws?token={token}", ep.host).into_client_request()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
    Ok(ws)
}

/// The bridge's receiving clients: `clients` sockets, client `c` for user
/// `c % users`, each reconnecting if closed.
struct Fleet {
    sink: Arc<Sink>,
    clients: usize,
    connected: Arc<AtomicUsize>,
    disconnects: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

#[allow(clippy::too_many_arguments)]
async fn fleet_client(
    idx: usize,
    ep: Endpoint,
    token: Arc<str>,
    sink: Arc<Sink>,
    connected: Arc<AtomicUsize>,
    disconnects: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    clock: Clock,
) {
    loop {
        let ws = {
            let _permit = gate.acquire().await;
            ws_connect(&ep, &token).await
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        connected.fetch_add(1, Ordering::SeqCst);
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => sink.record(idx, t.as_str(), clock.ns()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        connected.fetch_sub(1, Ordering::SeqCst);
        disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

async fn start_fleet(
    ep: &Endpoint,
    tokens: &[Arc<str>],
    clients: usize,
    clock: Clock,
) -> anyhow::Result<Fleet> {
    let sink = Arc::new(Sink::new(clients));
    let connected = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(HANDSHAKES));
    let mut tasks = JoinSet::new();
    for idx in 0..clients {
        tasks.spawn(fleet_client(
            idx,
            ep.clone(),
            tokens[idx % tokens.len()].clone(),
            sink.clone(),
            connected.clone(),
            disconnects.clone(),
            gate.clone(),
            clock,
        ));
    }
    let fleet = Fleet {
        sink,
        clients,
        connected,
        disconnects,
        _tasks: tasks,
    };
    fleet.wait_connected(Duration::from_secs(60)).await?;
    Ok(fleet)
}

impl Fleet {
    async fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
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
async fn open_idle(ep: &Endpoint, tokens: &[Arc<str>], n: usize) -> (JoinSet<()>, usize, usize) {
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

/// CPU use over a phase, in % of one core (200% = both cores of a 2-core
/// machine): this process, the server, every `postgres` process, and the
/// rest of the machine (other work competing for the cores).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuShare {
    pub bench: f64,
    pub server: Option<f64>,
    pub postgres: f64,
    /// Interrupt and softirq time (loopback TCP is mostly processed here).
    pub irq: f64,
    /// Time the hypervisor gave to other guests.
    pub steal: f64,
    /// Every other process on the machine.
    pub other: f64,
    pub idle: f64,
}

struct CpuSnap {
    at: Instant,
    busy: u64,
    idle: u64,
    irq: u64,
    steal: u64,
    bench: u64,
    server: Option<u64>,
    postgres: u64,
}

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnap {
    fn take(server: Option<u32>) -> Option<CpuSnap> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let idle = cpu.get(3)? + cpu.get(4)?;
        let busy = cpu.iter().take(8).sum::<u64>() - idle;
        let irq = cpu.get(5)? + cpu.get(6)?;
        let steal = *cpu.get(7)?;
        let mut postgres = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
            {
                postgres += proc_ticks(pid).unwrap_or(0);
            }
        }
        Some(CpuSnap {
            at: Instant::now(),
            busy,
            idle,
            irq,
            steal,
            bench: proc_ticks("self")?,
            server: server.and_then(|p| proc_ticks(&p.to_string())),
            postgres,
        })
    }

    fn share(&self, end: &CpuSnap) -> CpuShare {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let pct = |ticks: u64| (ticks as f64 / hz / secs * 1000.0).round() / 10.0;
        let bench = pct(end.bench.saturating_sub(self.bench));
        let server = end
            .server
            .zip(self.server)
            .map(|(e, b)| pct(e.saturating_sub(b)));
        let postgres = pct(end.postgres.saturating_sub(self.postgres));
        let busy = pct(end.busy.saturating_sub(self.busy));
        let irq = pct(end.irq.saturating_sub(self.irq));
        let steal = pct(end.steal.saturating_sub(self.steal));
        let other = busy - bench - server.unwrap_or(0.0) - postgres - irq - steal;
        CpuShare {
            bench,
            server,
            postgres,
            irq,
            steal,
            other: (other.max(0.0) * 10.0).round() / 10.0,
            idle: pct(end.idle.saturating_sub(self.idle)),
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------- phases --

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Bridge,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Bridge => "bridge",
        }
    }
}

struct Bench {
    clock: Clock,
    publish_rt: PublishRuntime,
    publishers: Vec<Arc<Publisher>>,
    channel: String,
    raw_channel: String,
    raw_sink: Arc<Sink>,
    fleet: Fleet,
    users: Vec<Uuid>,
    next_phase: u32,
    server_pid: Option<u32>,
    http: reqwest::Client,
    api: String,
}

impl Bench {
    /// Publishes `rate × length` events and collects their deliveries.
    async fn phase(
        &mut self,
        kind: Kind,
        rate: u32,
        length: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseResult> {
        let n = ((rate as f64 * length.as_secs_f64()).round() as usize).max(1);
        let phase = self.next_phase;
        self.next_phase += 1;
        let batch = Arc::new(Batch {
            phase,
            n,
            users: Arc::new(self.users.clone()),
        });
        let commits: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());

        let u = self.users.len();
        let (sink, channel, expected) = match kind {
            Kind::Raw => (self.raw_sink.clone(), self.raw_channel.clone(), n as u64),
            Kind::Bridge => {
                self.fleet.wait_connected(Duration::from_secs(60)).await?;
                let expected = (0..self.fleet.clients)
                    .map(|c| per_user_events(n, u, c % u))
                    .sum::<u64>();
                (self.fleet.sink.clone(), self.channel.clone(), expected)
            }
        };
        let disconnects_before = self.fleet.disconnects.load(Ordering::SeqCst);
        let scrape_before = match kind {
            Kind::Bridge => scrape(&self.http, &self.api).await,
            Kind::Raw => None,
        };
        let cpu_before = CpuSnap::take(self.server_pid);
        sink.begin(phase);
        let published = publish(
            &self.publish_rt.handle,
            &self.publishers,
            &channel,
            batch,
            commits.clone(),
            rate,
            self.clock,
        )
        .await?;
        // Wait for the deliveries, at most `drain` past the last commit.
        let drain_until = published.last_commit_ns + drain.as_nanos() as u64;
        while sink.hits.load(Ordering::Relaxed) < expected && self.clock.ns() < drain_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last_ns = sink.last_ns.load(Ordering::Relaxed);
        let slots = sink.end();
        let cpu = cpu_before.and_then(|b| Some(b.share(&CpuSnap::take(self.server_pid)?)));
        let (server_side, server_counters) = match &scrape_before {
            Some(before) => match scrape(&self.http, &self.api).await {
                Some(after) => (
                    server_side(&before.buckets, &after.buckets),
                    counter_deltas(before, &after),
                ),
                None => (None, Default::default()),
            },
            None => (None, Default::default()),
        };
        let disconnects = self.fleet.disconnects.load(Ordering::SeqCst) - disconnects_before;

        let mut latencies = Vec::with_capacity(expected as usize);
        let (mut received, mut duplicates, mut misrouted, mut before_ack) =
            (0u64, 0u64, 0u64, 0u64);
        for (slot, mut recs) in slots.into_iter().enumerate() {
            recs.sort_unstable_by_key(|r| r.seq);
            let mut prev = None;
            for r in recs {
                if prev == Some(r.seq) {
                    duplicates += 1;
                    continue;
                }
                prev = Some(r.seq);
                if kind == Kind::Bridge && r.seq as usize % u != slot % u {
                    misrouted += 1;
                    continue;
                }
                received += 1;
                let commit = commits
                    .get(r.seq as usize)
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if commit == 0 {
                    continue; // the publisher saw an error for an event that arrived
                }
                if r.ns < commit {
                    before_ack += 1;
                }
                latencies.push((r.ns.saturating_sub(commit) / 1000).min(u32::MAX as u64) as u32);
            }
        }
        let window_s = (published.last_commit_ns.saturating_sub(published.first_ns)) as f64 / 1e9;
        let published_rate = if window_s > 0.0 {
            n as f64 / window_s
        } else {
            f64::INFINITY
        };
        let lost = expected.saturating_sub(received);
        let backlog_ms = if last_ns == 0 {
            0.0
        } else {
            (last_ns as f64 - published.last_commit_ns as f64) / 1e6
        };
        let mut result = PhaseResult {
            rate,
            events: n as u64,
            published_rate: (published_rate * 10.0).round() / 10.0,
            publish_errors: published.errors,
            expected,
            received,
            lost,
            duplicates,
            misrouted,
            before_ack,
            // Negative: the last delivery beat the publisher's commit ack.
            backlog_ms: (backlog_ms.max(0.0) * 100.0).round() / 100.0,
            disconnects,
            latency: stats(latencies),
            cpu,
            server_side,
            server_counters,
            sustained: false,
            publisher_bound: false,
            verdict: String::new(),
        };
        let mut problems = Vec::new();
        if result.publish_errors > 0 {
            problems.push(format!("{} publish errors", result.publish_errors));
        }
        if lost > 0 {
            problems.push(format!("{lost} lost"));
        }
        if misrouted > 0 || duplicates > 0 {
            problems.push(format!("{misrouted} misrouted, {duplicates} duplicated"));
        }
        if disconnects > 0 {
            problems.push(format!("{disconnects} disconnects"));
        }
        for (name, v) in &result.server_counters {
            if name.contains("dropped") || name.contains("reconnects") {
                problems.push(format!("server {name} +{v}"));
            }
        }
        if backlog_ms > MAX_BACKLOG.as_secs_f64() * 1000.0 {
            problems.push(format!("backlog drained in {:.0} ms", backlog_ms));
        }
        result.sustained = problems.is_empty();
        result.publisher_bound = published_rate < rate as f64 * PUBLISH_SHORTFALL;
        let mut verdict = if problems.is_empty() {
            "sustained".to_string()
        } else {
            problems.join(", ")
        };
        if result.publisher_bound {
            verdict.push_str(&format!(
                " (publisher-bound: {published_rate:.0}/s committed)"
            ));
        }
        result.verdict = verdict;
        Ok(result)
    }

    /// Waits until nothing has arrived for a while (a failed step may leave
    /// a backlog behind), and the clients are all back.
    async fn settle(&self, kind: Kind) -> anyhow::Result<()> {
        let sink = match kind {
            Kind::Raw => &self.raw_sink,
            Kind::Bridge => &self.fleet.sink,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = sink.activity();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = sink.activity();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(500) {
                break;
            }
        }
        if kind == Kind::Bridge {
            self.fleet.wait_connected(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Doubles the rate from `start` until a step is not sustained, or two
    /// steps in a row could not get the asked rate committed (PostgreSQL,
    /// sharing the CPU, is the limit; one such step can be a dip), then
    /// bisects between the last sustained and the first unsustained rate
    /// until they are within 5%. The ceiling is the highest committed rate
    /// of a sustained step.
    async fn ceiling(&mut self, kind: Kind, start: u32, step: Duration) -> anyhow::Result<Ceiling> {
        let mut steps: Vec<PhaseResult> = Vec::new();
        let (mut lo, mut hi): (Option<u32>, Option<u32>) = (None, None);
        let mut rate = start;
        let mut bound_in_a_row = 0;
        loop {
            let r = self.step(kind, rate, step).await?;
            let (ok, bound) = (r.sustained, r.publisher_bound);
            steps.push(r);
            if ok {
                lo = Some(rate);
                bound_in_a_row = if bound { bound_in_a_row + 1 } else { 0 };
                if bound_in_a_row >= 2 || rate >= MAX_RATE {
                    break;
                }
                rate = rate.saturating_mul(2).min(MAX_RATE);
            } else {
                hi = Some(rate);
                if lo.is_some() || rate <= 250 {
                    break;
                }
                rate /= 2;
            }
        }
        for _ in 0..5 {
            let (Some(l), Some(h)) = (lo, hi) else { break };
            if h as f64 <= l as f64 * 1.05 {
                break;
            }
            let mid = (((l as u64 + h as u64) / 2).div_ceil(100) * 100) as u32;
            if mid <= l || mid >= h {
                break;
            }
            let r = self.step(kind, mid, step).await?;
            if r.sustained {
                lo = Some(mid);
            } else {
                hi = Some(mid);
            }
            steps.push(r);
        }
        let best = steps
            .iter()
            .filter(|s| s.sustained)
            .map(|s| s.published_rate.min(s.rate as f64))
            .fold(0.0, f64::max);
        Ok(Ceiling {
            events_per_s: best.round() as u32,
            steps,
        })
    }

    async fn step(
        &mut self,
        kind: Kind,
        rate: u32,
        length: Duration,
    ) -> anyhow::Result<PhaseResult> {
        self.settle(kind).await?;
        progress(&format!(
            "ceiling {}: {rate} events/s for {length:?}",
            kind.label()
        ));
        let r = self
            .phase(kind, rate, length, Duration::from_secs(5))
            .await?;
        progress(&format!(
            "  published {:.0}/s, {} of {} delivered, backlog {:.0} ms: {}",
            r.published_rate, r.received, r.expected, r.backlog_ms, r.verdict
        ));
        Ok(r)
    }
}

/// Events of `0..n` that go to user `u` when event `i` goes to `i % users`.
fn per_user_events(n: usize, users: usize, u: usize) -> u64 {
    (n / users + usize::from(u < n % users)) as u64
}

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

// ---------------------------------------------------------------- server --

/// The server this command started, and the database it created.
struct OwnServer {
    child: tokio::process::Child,
    pid: u32,
    api: String,
    admin_url: String,
    db: String,
}

fn with_db(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let mut out = match base[scheme_end..].find('/') {
        Some(i) => format!("{}/{db}", &base[..scheme_end + i]),
        None => format!("{base}/{db}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

async fn admin_sql(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, conn) = crate::db::connect(url, "ragctl-bench-admin").await?;
    let task = tokio::spawn(conn);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| anyhow!(crate::db::error_text(&e)));
    drop(client);
    let _ = task.await;
    result
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

async fn start_server(
    admin_url: &str,
    db: &str,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
) -> anyhow::Result<OwnServer> {
    let db_url = with_db(admin_url, db)?;
    let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "serve",
            "--no-workers",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .arg(format!("--ws-queue={}", args.ws_queue))
        .env("DATABASE_URL", &db_url)
        .env("RAG_JWT_SECRET", secret)
        .env("RAG_EVENTS_CHANNEL", channel)
        .env("RAG_LOG", if args.server_log { "info" } else { "warn" })
        .env_remove("RAG_LISTEN_DATABASE_URL")
        .env_remove("RAG_NO_REALTIME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `ragctl serve`")?;
    let pid = child.id().context("server exited at once")?;
    let stderr = child.stderr.take().expect("piped");
    let (api_tx, api_rx) = tokio::sync::oneshot::channel::<String>();
    let tail = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
    let tail_w = tail.clone();
    let copy = args.server_log;
    tokio::spawn(async move {
        let mut api_tx = Some(api_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("ragctl: API on ")
                && let Some(tx) = api_tx.take()
            {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            if copy {
                eprintln!("[server] {line}");
            }
            let mut t = tail_w.lock().expect("tail");
            t.push_back(line);
            if t.len() > 20 {
                t.pop_front();
            }
        }
    });
    let server = OwnServer {
        child,
        pid,
        api: String::new(),
        admin_url: admin_url.to_string(),
        db: db.to_string(),
    };
    let api = match tokio::time::timeout(Duration::from_secs(60), api_rx).await {
        Ok(Ok(api)) => api,
        _ => {
            let log: Vec<String> = tail.lock().expect("tail").iter().cloned().collect();
            server.stop().await;
            bail!(
                "the server did not start; its last log lines:\n{}",
                log.join("\n")
            );
        }
    };
    Ok(OwnServer { api, ..server })
}

impl OwnServer {
    async fn stop(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let drop_sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.db)
        );
        if let Err(e) = admin_sql(&self.admin_url, &drop_sql).await {
            eprintln!("bench: warning: could not drop database {}: {e:#}", self.db);
        }
    }
}

async fn wait_ready(api: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("{api}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if Instant::now() > deadline => bail!("{url} answered {}", r.status()),
            Err(e) if Instant::now() > deadline => bail!("{url}: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn endpoint(api: &str) -> anyhow::Result<Endpoint> {
    let Some(rest) = api.strip_prefix("http://") else {
        bail!("--server-url must be http://host:port (the benchmark does not speak TLS): {api}");
    };
    let host = rest.split('/').next().unwrap_or_default().to_string();
    let lookup = if host.contains(':') {
        host.clone()
    } else {
        format!("{host}:80")
    };
    let addr = tokio::net::lookup_host(&lookup)
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    Ok(Endpoint { addr, host })
}

// --------------------------------------------------------------- machine --

async fn machine(url: &str) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
    });
    let mem_total_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let postgres = async {
        let (client, conn) = crate::db::connect(url, "ragctl-bench-admin").await.ok()?;
        tokio::spawn(conn);
        let row = client.query_one("SHOW server_version", &[]).await.ok()?;
        Some(row.get::<_, String>(0))
    }
    .await;
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_mib,
        kernel,
        postgres,
    }
}

// ------------------------------------------------------------------- run --

pub async fn run(connect: ConnectOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let _ = super::serve::raise_nofile_limit();
    let channel = connect.channel()?;
    let cancel = CancellationToken::new();
    super::cancel_on_signal(cancel.clone());

    let (server, db_url, secret, api, pid) = match &args.server_url {
        Some(api) => {
            let api = api.trim_end_matches('/').to_string();
            (
                None,
                connect.database_url()?,
                connect.jwt_secret()?,
                api,
                args.server_pid,
            )
        }
        None => {
            let admin = connect
                .database_url()
                .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
            let db = format!("bench_{}_{}", std::process::id(), random_hex(4));
            admin_sql(&admin, &format!("CREATE DATABASE {}", quote_ident(&db)))
                .await
                .with_context(|| {
                    format!("cannot create the benchmark database on {}", redact(&admin))
                })?;
            let secret = random_hex(32);
            progress(&format!(
                "database {db} created; starting `ragctl serve --no-workers`"
            ));
            let server = match start_server(&admin, &db, &secret, &channel, &args).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = admin_sql(
                        &admin,
                        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db)),
                    )
                    .await;
                    return Err(e);
                }
            };
            let (api, pid) = (server.api.clone(), server.pid);
            (Some(server), with_db(&admin, &db)?, secret, api, Some(pid))
        }
    };

    let outcome = tokio::select! {
        r = bench(&args, &db_url, &secret, &channel, &api, pid) => Some(r),
        _ = cancel.cancelled() => None,
    };
    if let Some(server) = server {
        progress("stopping the server and dropping its database");
        server.stop().await;
    }
    let report = match outcome {
        None => {
            eprintln!("ragctl: interrupted");
            return Ok(ExitCode::from(130));
        }
        Some(r) => r?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let missed: Vec<&str> = report
        .targets
        .iter()
        .filter(|t| t.met == Some(false))
        .map(|t| t.key)
        .collect();
    if missed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::check(anyhow!(
            "missed targets: {} (see the report)",
            missed.join(", ")
        ))
        .into())
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

async fn bench(
    args: &BenchArgs,
    db_url: &str,
    secret: &str,
    channel: &str,
    api: &str,
    pid: Option<u32>,
) -> anyhow::Result<Report> {
    wait_ready(api).await?;
    let ep = endpoint(api).await?;
    let machine = machine(db_url).await;
    let clock = Clock(Instant::now());
    let token_for = |user: Uuid| -> anyhow::Result<Arc<str>> {
        Ok(Arc::from(crate::auth::mint(
            secret,
            user,
            Duration::from_secs(6 * 3600),
        )?))
    };

    // 1. Idle sockets, on a fresh server.
    let idle = if args.idle_sockets > 0 {
        let idle_users: Vec<Arc<str>> = (0..100)
            .map(|_| token_for(Uuid::new_v4()))
            .collect::<anyhow::Result<_>>()?;
        progress("idle sockets: warming up with 100 sockets");
        let (warm, _, _) = open_idle(&ep, &idle_users, 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = pid.and_then(rss_kib);
        progress(&format!("idle sockets: opening {}", args.idle_sockets));
        let (held, opened, failed) = open_idle(&ep, &idle_users, args.idle_sockets).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = pid.and_then(rss_kib);
        let per = match (before, after) {
            (Some(b), Some(a)) if opened > 0 => {
                Some(((a as f64 - b as f64) / opened as f64 * 100.0).round() / 100.0)
            }
            _ => None,
        };
        progress(&format!(
            "idle sockets: {opened} open, {failed} failed; RSS {} → {} KiB: {} KiB/socket",
            before.map_or("?".into(), |v| v.to_string()),
            after.map_or("?".into(), |v| v.to_string()),
            per.map_or("?".into(), |v| format!("{v:.2}"))
        ));
        drop(held);
        drop(warm);
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(IdleReport {
            requested: args.idle_sockets,
            opened,
            failed,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_socket: per,
        })
    } else {
        None
    };

    // Publishers, the raw listener and the bridge's clients.
    let publish_rt = PublishRuntime::start()?;
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let url = db_url.to_string();
        publishers.push(
            publish_rt
                .handle
                .spawn(async move { connect_publisher(&url).await })
                .await??,
        );
    }
    let raw_channel = format!("bench_raw_{}", std::process::id());
    let raw_sink = Arc::new(Sink::new(1));
    let _raw = raw_listener(db_url, &raw_channel, raw_sink.clone(), clock).await?;
    let users: Vec<Uuid> = (0..args.users).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<Arc<str>> = users
        .iter()
        .map(|&u| token_for(u))
        .collect::<anyhow::Result<_>>()?;
    progress(&format!(
        "connecting {} clients for {} users",
        args.clients, args.users
    ));
    let fleet = start_fleet(&ep, &tokens, args.clients as usize, clock).await?;
    let mut bench = Bench {
        clock,
        publish_rt,
        publishers,
        channel: channel.to_string(),
        raw_channel,
        raw_sink,
        fleet,
        users,
        next_phase: 0,
        server_pid: pid,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        api: api.to_string(),
    };

    // Warm-up: both paths, short, discarded.
    progress("warming up");
    bench
        .phase(
            Kind::Raw,
            args.rate.min(1000),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await?;
    bench.settle(Kind::Raw).await?;
    bench
        .phase(
            Kind::Bridge,
            args.rate.min(1000),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await?;
    bench.settle(Kind::Bridge).await?;

    // 2, 3. Latency at the chosen rate.
    progress(&format!(
        "raw NOTIFY → LISTEN: {} events/s for {:?}",
        args.rate, args.duration
    ));
    let raw = bench
        .phase(Kind::Raw, args.rate, args.duration, Duration::from_secs(10))
        .await?;
    progress(&phase_line(&raw));
    bench.settle(Kind::Raw).await?;
    progress(&format!(
        "bridge pg_notify → WebSocket: {} events/s for {:?} to {} clients / {} users",
        args.rate, args.duration, args.clients, args.users
    ));
    let bridge = bench
        .phase(
            Kind::Bridge,
            args.rate,
            args.duration,
            Duration::from_secs(10),
        )
        .await?;
    progress(&phase_line(&bridge));

    // 4. Ceilings.
    let ceiling = if args.no_ceiling {
        None
    } else {
        let raw_c = bench.ceiling(Kind::Raw, 2000, args.step).await?;
        let bridge_c = bench.ceiling(Kind::Bridge, 2000, args.step).await?;
        let ratio = if raw_c.events_per_s > 0 {
            bridge_c.events_per_s as f64 / raw_c.events_per_s as f64
        } else {
            0.0
        };
        Some(CeilingReport {
            raw: raw_c,
            bridge: bridge_c,
            ratio: (ratio * 1000.0).round() / 1000.0,
        })
    };

    let config = Config {
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        clients: args.clients,
        users: args.users,
        publishers: args.publishers,
        idle_sockets: args.idle_sockets,
        step_s: args.step.as_secs_f64(),
        server: match &args.server_url {
            Some(u) => u.clone(),
            None => format!(
                "started: ragctl serve --no-workers --ws-queue={}",
                args.ws_queue
            ),
        },
        ws_queue: args.server_url.is_none().then_some(args.ws_queue),
    };
    let targets = targets(&config, &raw, &bridge, ceiling.as_ref(), idle.as_ref());
    let ok = targets.iter().all(|t| t.met != Some(false));
    let disturbed = [("raw", &raw), ("bridge", &bridge)]
        .into_iter()
        .filter_map(|(label, p)| disturbance(label, p.cpu.as_ref()?))
        .collect();
    Ok(Report {
        machine,
        config,
        idle,
        raw,
        bridge,
        ceiling,
        targets,
        ok,
        disturbed,
    })
}

/// CPU taken by the hypervisor (steal) or unrelated processes above which a
/// phase is reported as disturbed, in % of one core.
const DISTURBED_PCT: f64 = 5.0;

/// Why a phase's numbers are not representative, if they are not. The
/// verdicts stand; this tells the reader to re-run on a quieter machine.
fn disturbance(label: &str, cpu: &CpuShare) -> Option<String> {
    (cpu.steal > DISTURBED_PCT || cpu.other > DISTURBED_PCT).then(|| {
        format!(
            "the {label} latency phase was disturbed: steal {:.0}%, other processes {:.0}% of one core (over {DISTURBED_PCT:.0}%); re-run on a quiet machine before reading its latency",
            cpu.steal, cpu.other
        )
    })
}

fn phase_line(r: &PhaseResult) -> String {
    match &r.latency {
        Some(s) => format!(
            "  {} events at {:.0}/s, {} of {} delivered, p50 {} µs, p99 {} µs, max {} µs",
            r.events, r.published_rate, r.received, r.expected, s.p50_us, s.p99_us, s.max_us
        ),
        None => format!("  {} events, nothing delivered", r.events),
    }
}

fn targets(
    config: &Config,
    raw: &PhaseResult,
    bridge: &PhaseResult,
    ceiling: Option<&CeilingReport>,
    idle: Option<&IdleReport>,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let at = format!(
        "{}/s, {} clients, {} users",
        config.rate, config.clients, config.users
    );
    let ms = |us: i64| format!("{:+.3} ms", us as f64 / 1000.0);
    match (&raw.latency, &bridge.latency) {
        (Some(r), Some(b)) => {
            let d50 = b.p50_us as i64 - r.p50_us as i64;
            let d99 = b.p99_us as i64 - r.p99_us as i64;
            out.push(TargetCheck {
                key: "latency_p50",
                name: format!("bridge p50 − raw p50 ({at})"),
                target: "≤ +0.5 ms".into(),
                measured: format!("{} ({} vs {} µs)", ms(d50), b.p50_us, r.p50_us),
                met: Some(d50 <= 500),
            });
            out.push(TargetCheck {
                key: "latency_p99",
                name: format!("bridge p99 − raw p99 ({at})"),
                target: "≤ +2 ms".into(),
                measured: format!("{} ({} vs {} µs)", ms(d99), b.p99_us, r.p99_us),
                met: Some(d99 <= 2000),
            });
        }
        _ => out.push(TargetCheck {
            key: "latency",
            name: "latency".into(),
            target: "deliveries to measure".into(),
            measured: "nothing delivered".into(),
            met: Some(false),
        }),
    }
    out.push(TargetCheck {
        key: "no_loss",
        name: format!("nothing lost in the latency runs ({at})"),
        target: "0 lost".into(),
        measured: format!(
            "raw {} lost, bridge {} lost of {}",
            raw.lost, bridge.lost, bridge.expected
        ),
        met: Some(
            raw.lost == 0 && bridge.lost == 0 && bridge.misrouted == 0 && bridge.duplicates == 0,
        ),
    });
    out.push(match ceiling {
        Some(c) => TargetCheck {
            key: "ceiling_ratio",
            name: "bridge ceiling / raw ceiling (zero loss)".into(),
            target: "≥ 90%".into(),
            measured: format!(
                "{:.1}% ({} vs {} events/s)",
                c.ratio * 100.0,
                c.bridge.events_per_s,
                c.raw.events_per_s
            ),
            met: Some(c.ratio >= 0.9),
        },
        None => TargetCheck {
            key: "ceiling_ratio",
            name: "bridge ceiling / raw ceiling (zero loss)".into(),
            target: "≥ 90%".into(),
            measured: "skipped (--no-ceiling)".into(),
            met: None,
        },
    });
    out.push(match idle.and_then(|i| i.kib_per_socket.map(|k| (i, k))) {
        Some((i, k)) => TargetCheck {
            key: "idle_rss",
            name: format!("RSS per idle socket ({} sockets)", i.opened),
            target: "≤ 32 KiB".into(),
            measured: format!("{k:.2} KiB"),
            met: Some(k <= 32.0 && i.opened == i.requested),
        },
        None => TargetCheck {
            key: "idle_rss",
            name: "RSS per idle socket".into(),
            target: "≤ 32 KiB".into(),
            measured: match idle {
                None => "skipped (--idle-sockets 0)".into(),
                Some(_) => "not measured (no server pid: pass --server-pid)".into(),
            },
            met: None,
        },
    });
    out
}

// ---------------------------------------------------------------- render --

fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r.machine;
    let c = &r.config;
    let _ = writeln!(
        s,
        "ragctl bench: {} events/s for {}s, {} clients over {} users, {} publishers",
        c.rate, c.duration_s, c.clients, c.users, c.publishers
    );
    let _ = writeln!(
        s,
        "machine: {} CPUs ({}), {} MiB RAM, Linux {}, PostgreSQL {}",
        m.cpus,
        m.cpu_model.as_deref().unwrap_or("?"),
        m.mem_total_mib.map_or("?".into(), |v| v.to_string()),
        m.kernel.as_deref().unwrap_or("?"),
        m.postgres.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(s, "server: {}", c.server);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency (µs)", "events", "frames", "lost", "p50", "p90", "p99", "max", "mean"
    );
    for (label, p) in [
        ("raw NOTIFY → LISTEN", &r.raw),
        ("bridge pg_notify → WS", &r.bridge),
    ] {
        let st = p.latency;
        let f = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
        let _ = writeln!(
            s,
            "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            label,
            p.events,
            p.received,
            p.lost,
            f(st.map(|x| x.p50_us)),
            f(st.map(|x| x.p90_us)),
            f(st.map(|x| x.p99_us)),
            f(st.map(|x| x.max_us)),
            f(st.map(|x| x.mean_us)),
        );
    }
    if let (Some(a), Some(b)) = (r.raw.latency, r.bridge.latency) {
        let d = |x: u32, y: u32| format!("{:+}", x as i64 - y as i64);
        let _ = writeln!(
            s,
            "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "bridge − raw",
            "",
            "",
            "",
            d(b.p50_us, a.p50_us),
            d(b.p90_us, a.p90_us),
            d(b.p99_us, a.p99_us),
            d(b.max_us, a.max_us),
            d(b.mean_us, a.mean_us),
        );
    }
    let _ = writeln!(
        s,
        "(published at {:.0} and {:.0} events/s; deliveries before the commit ack: raw {}, bridge {})",
        r.raw.published_rate, r.bridge.published_rate, r.raw.before_ack, r.bridge.before_ack
    );
    if let Some(ss) = &r.bridge.server_side {
        let le = |v: Option<f64>| v.map_or("> 5000".into(), |v| format!("≤ {v}"));
        let _ = writeln!(
            s,
            "server's own histogram (envelope ts → frame written, ms): p50 {}, p90 {}, p99 {} ({} frames)",
            le(ss.p50_le_ms),
            le(ss.p90_le_ms),
            le(ss.p99_le_ms),
            ss.frames
        );
    }
    for (label, p) in [("raw", &r.raw), ("bridge", &r.bridge)] {
        if let Some(cpu) = &p.cpu {
            let _ = writeln!(
                s,
                "CPU during {label:<6} (% of one core): {}",
                cpu_text(cpu)
            );
        }
    }
    if let Some(cr) = &r.ceiling {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "ceiling ({}s steps; sustained = nothing lost and the backlog drained ≤ 1 s after the last commit;\n ceiling = highest rate committed in a sustained step)",
            c.step_s
        );
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>11} {:>10} {:>10} {:>8} {:>8} {:>10} {:>22}  verdict",
            "path",
            "rate/s",
            "published/s",
            "expected",
            "received",
            "lost",
            "p99 µs",
            "backlog ms",
            "CPU% bench/srv/pg/oth"
        );
        for (label, ce) in [("raw", &cr.raw), ("bridge", &cr.bridge)] {
            for st in &ce.steps {
                let _ = writeln!(
                    s,
                    "{:<8} {:>9} {:>11.0} {:>10} {:>10} {:>8} {:>8} {:>10.0} {:>22}  {}",
                    label,
                    st.rate,
                    st.published_rate,
                    st.expected,
                    st.received,
                    st.lost,
                    st.latency.map_or("-".into(), |x| x.p99_us.to_string()),
                    st.backlog_ms,
                    st.cpu.map_or("-".into(), |c| format!(
                        "{:.0}/{}/{:.0}/{:.0}",
                        c.bench,
                        c.server.map_or("?".into(), |v| format!("{v:.0}")),
                        c.postgres,
                        c.other
                    )),
                    st.verdict
                );
            }
        }
        let _ = writeln!(
            s,
            "ceiling: raw {} events/s, bridge {} events/s ({} frames/s), ratio {:.1}%",
            cr.raw.events_per_s,
            cr.bridge.events_per_s,
            bridge_frames(cr.bridge.events_per_s, c),
            cr.ratio * 100.0
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(s);
        let kib = |v: Option<u64>| v.map_or("?".into(), |v| format!("{v} KiB"));
        let _ = writeln!(
            s,
            "idle sockets: {} of {} open ({} failed); server RSS {} → {}: {} KiB per socket",
            i.opened,
            i.requested,
            i.failed,
            kib(i.rss_before_kib),
            kib(i.rss_after_kib),
            i.kib_per_socket.map_or("?".into(), |v| format!("{v:.2}"))
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "targets");
    for t in &r.targets {
        let mark = match t.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(
            s,
            "  [{mark}] {}: {} (target {})",
            t.name, t.measured, t.target
        );
    }
    for d in &r.disturbed {
        let _ = writeln!(s, "warning: {d}");
    }
    s
}

fn cpu_text(c: &CpuShare) -> String {
    format!(
        "bench {:.0}%, server {}, postgres {:.0}%, irq+softirq {:.0}%, steal {:.0}%, other {:.0}%, idle {:.0}%",
        c.bench,
        c.server.map_or("?".into(), |v| format!("{v:.0}%")),
        c.postgres,
        c.irq,
        c.steal,
        c.other,
        c.idle
    )
}

fn bridge_frames(events: u32, c: &Config) -> u64 {
    // Each event goes to every socket of one user.
    (events as f64 * c.clients as f64 / c.users.min(c.clients) as f64).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_through_payload_and_frame() {
        let users = [Uuid::new_v4()];
        let p = &event_payload(7, 42, &users);
        assert_eq!(parse_tag(p), Some((7, 42)));
        let crate::events::WireMessage::Envelope(env) = crate::events::decode(p).unwrap() else {
            panic!("not an envelope")
        };
        assert_eq!(parse_tag(&env.frame_text()), Some((7, 42)));
        assert_eq!(parse_tag(r#"{"error_message":null}"#), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = stats((1..=100).collect()).unwrap();
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.max_us), (50, 90, 99, 100));
        assert!(stats(Vec::new()).is_none());
    }

    #[test]
    fn events_split_evenly_over_users() {
        assert_eq!((0..3).map(|u| per_user_events(10, 3, u)).sum::<u64>(), 10);
        assert_eq!(per_user_events(10, 3, 0), 4);
        assert_eq!(per_user_events(10, 3, 2), 3);
    }

    #[test]
    fn server_histogram_deltas_give_bucket_bounds() {
        let text = |counts: [u64; 4]| {
            format!(
                "# TYPE ragctl_bridge_delivery_seconds histogram\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.001\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.0025\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.005\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        let before = histogram(&text([10, 10, 10, 10]));
        let after = histogram(&text([60, 108, 109, 110]));
        let s = server_side(&before, &after).unwrap();
        assert_eq!(s.frames, 100);
        assert_eq!(
            (s.p50_le_ms, s.p90_le_ms, s.p99_le_ms),
            (Some(1.0), Some(2.5), Some(5.0))
        );
        let worse = histogram(&text([60, 108, 108, 120]));
        assert_eq!(server_side(&before, &worse).unwrap().p99_le_ms, None);
        assert!(server_side(&before, &before).is_none());
    }

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_db("postgres://u@h:5432/postgres?sslmode=disable", "bench_1").unwrap(),
            "postgres://u@h:5432/bench_1?sslmode=disable"
        );
        assert_eq!(with_db("postgres://u@h", "b").unwrap(), "postgres://u@h/b");
    }

    #[test]
    fn phases_with_steal_or_other_load_are_flagged() {
        let cpu = |steal, other| CpuShare {
            bench: 30.0,
            server: Some(25.0),
            postgres: 40.0,
            irq: 10.0,
            steal,
            other,
            idle: 95.0,
        };
        assert_eq!(disturbance("bridge", &cpu(0.0, 3.0)), None);
        let d = disturbance("bridge", &cpu(16.0, 0.0)).unwrap();
        assert!(d.contains("bridge") && d.contains("steal 16%"), "{d}");
        assert!(
            disturbance("raw", &cpu(0.0, 74.0))
                .unwrap()
                .contains("other processes 74%")
        );
    }
}
