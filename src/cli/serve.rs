//! `ragctl serve`: the API, the realtime bridge, and (unless `--no-workers`)
//! one parse and one ingest worker as child processes, restarted if they die.
//! With no database configured it starts the embedded local cluster.

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, HttpConfig, Shared, WsConfig};
use crate::auth::Verifier;
use crate::backoff::Backoff;
use crate::bridge::{self, BridgeConfig, Hub};
use crate::config::{ApiLimitOpts, ConnectOpts, RuntimeOpts, State};
use crate::db::embedded::Embedded;
use crate::events::{LocalDelivery, Publisher};
use crate::rag::LlmClient;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to bind.
    #[arg(long, env = "RAG_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Run the API alone; workers run elsewhere (`ragctl worker ...`).
    #[arg(long)]
    pub no_workers: bool,
    /// Disable the bridge and /ws. Business flows and REST are unaffected.
    #[arg(long, env = "RAG_NO_REALTIME")]
    pub no_realtime: bool,
    /// Bound of each WebSocket's outbound queue (frames).
    #[arg(long, env = "RAG_WS_QUEUE", default_value_t = 256)]
    pub ws_queue: usize,
    /// Server ping interval (seconds); peers silent for 3 intervals are dropped.
    #[arg(long, env = "RAG_WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// Close a WebSocket that sent nothing (no pong, no frame) this long
    /// (seconds, 4002); default 3 ping intervals.
    #[arg(long, env = "RAG_WS_IDLE_SECS")]
    pub ws_idle_secs: Option<u64>,
    /// Most WebSocket connections this process holds.
    #[arg(long, env = "RAG_WS_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub ws_max_connections: usize,
    /// Bound of the queue between the LISTEN socket and the router.
    #[arg(long, env = "RAG_BRIDGE_QUEUE", default_value_t = 16_384)]
    pub bridge_queue: usize,
    /// Most open client connections (HTTP and WebSocket); can only lower
    /// what the open-file limit allows, which is the default.
    #[arg(long, env = "RAG_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, from connecting or
    /// from the previous response (so also the keep-alive idle timeout).
    #[arg(long, env = "RAG_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Serve `/metrics` on this address (e.g. 127.0.0.1:9090) instead of
    /// the API port.
    #[arg(long, env = "RAG_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Most state frames a resuming WebSocket (`/ws?since=`) is sent
    /// before `realtime.resync` replaces the rest.
    #[arg(long, env = "RAG_MAX_CATCHUP", default_value_t = 10_000)]
    pub max_catchup: usize,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
    #[command(flatten)]
    pub limits: ApiLimitOpts,
}

/// Raises the open-file limit to the hard limit (each socket is a file);
/// returns the soft limit before and after.
pub(crate) fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!(error = %e, "cannot raise the open-file limit");
                return Ok((before, before));
            }
        }
        Ok((before, lim.rlim_cur))
    }
}

/// Raises the open-file limit and shares it out (logged: the numbers
/// every connection limit comes from).
fn fd_budget(args: &ServeArgs) -> anyhow::Result<api::FdBudget> {
    let (before, nofile) = raise_nofile_limit().context("cannot read the open-file limit")?;
    let budget = api::FdBudget::derive(
        nofile,
        args.runtime.pool_size,
        args.max_connections,
        args.ws_max_connections,
    )
    .map_err(anyhow::Error::msg)?;
    tracing::info!(
        nofile_before = before,
        nofile = budget.nofile,
        reserved = budget.reserved,
        max_connections = budget.connections,
        ws_max_connections = budget.websockets,
        ws_max_connections_flag = args.ws_max_connections,
        "connection limits (from the open-file limit)"
    );
    Ok(budget)
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ragctl_bridge_delivery_seconds".into()),
            &buckets,
        )
        .ok()?
        .install_recorder()
        .ok()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

pub async fn run(connect: ConnectOpts, args: ServeArgs) -> anyhow::Result<ExitCode> {
    args.runtime.check()?;
    args.limits.check(args.runtime.max_upload_bytes)?;
    api::limits::return_big_buffers_to_the_os();
    let budget = fd_budget(&args)?;
    let channel = connect.channel()?;
    let metrics = install_metrics();

    // The database: configured, or the embedded cluster.
    let (url, embedded) = match connect.configured_database_url() {
        Some(url) => (url, None),
        None => {
            let e = Embedded::start(&connect.state_dir).await?;
            (e.url.clone(), Some(e))
        }
    };
    let secret = match connect.configured_jwt_secret() {
        Some(s) => s,
        None => match State::load(&connect.state_dir)? {
            Some(s) if embedded.is_some() => s.jwt_secret,
            _ if embedded.is_some() => random_secret(),
            _ => connect.jwt_secret()?,
        },
    };

    let result = serve(
        &connect,
        &args,
        &url,
        &secret,
        &channel,
        embedded.is_some(),
        metrics,
        budget,
    )
    .await;
    if let Some(e) = embedded {
        match e.stop().await {
            Ok(()) => tracing::info!("embedded PostgreSQL stopped"),
            Err(err) => tracing::warn!(error = %err, "could not stop the embedded PostgreSQL"),
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    connect: &ConnectOpts,
    args: &ServeArgs,
    url: &str,
    secret: &str,
    channel: &str,
    embedded: bool,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    budget: api::FdBudget,
) -> anyhow::Result<ExitCode> {
    let rt = &args.runtime;
    let timeout = args.limits.statement_timeout();
    let pool = crate::db::pool_with_timeout(url, rt.pool_size, "ragctl-api", timeout).await?;
    let applied = crate::db::migrate(&pool).await?;
    if applied > 0 {
        tracing::info!(applied, "migrations applied");
    }

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "invalid --host / RAG_HOST and --port / PORT: {}:{}",
                args.host, args.port
            )
        })?;
    let listener = bind(addr)
        .with_context(|| format!("cannot bind {addr} (is another server running? try --port)"))?;
    let bound = listener.local_addr()?;
    let api_url = format!("http://{bound}");
    if embedded {
        State {
            database_url: url.to_string(),
            jwt_secret: secret.to_string(),
            api_url: Some(api_url.clone()),
        }
        .save(&connect.state_dir)?;
    }

    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(bind_metrics(addr).await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    super::cancel_on_signal(shutdown.clone());
    let events = Publisher::new(pool.clone(), channel, "api", rt.publish_timeout());
    let (hub, bridge, bridge_task) = if args.no_realtime {
        tracing::info!("realtime disabled: no bridge, /ws answers 503");
        (None, None, None)
    } else {
        let hub = Hub::new(args.ws_queue);
        events.set_local_delivery(Arc::new(hub.clone()) as Arc<dyn LocalDelivery>);
        let (bridge, task) = bridge::start(
            BridgeConfig {
                listen_url: rt.listen_url(url),
                channel: channel.to_string(),
                queue: args.bridge_queue,
            },
            hub.clone(),
            shutdown.clone(),
        )
        .context("cannot start the realtime bridge's thread")?;
        (Some(hub), Some(bridge), Some(task))
    };
    let state = AppState(Arc::new(Shared {
        pool,
        events,
        verifier: Verifier::new(secret)?,
        max_upload_bytes: rt.max_upload_bytes,
        max_retries: rt.max_retries,
        llm: rt
            .llm_url
            .as_deref()
            .map(|u| LlmClient::new(u, &rt.llm_model, rt.llm_api_key.clone())),
        hub,
        bridge,
        metrics,
        ws: WsConfig {
            queue: args.ws_queue,
            ping_interval: Duration::from_secs(args.ws_ping_secs.max(1)),
            idle_timeout: Duration::from_secs(
                args.ws_idle_secs
                    .unwrap_or(args.ws_ping_secs.max(1) * 3)
                    .max(1),
            ),
            max_connections: budget.websockets,
            max_catchup: args.max_catchup,
            ..WsConfig::default()
        },
        ws_permits: Arc::new(Semaphore::new(budget.websockets)),
        sockets: TaskTracker::new(),
        shutdown: shutdown.clone(),
        limits: api::limits::Limits {
            uploads: api::limits::UploadBudget::new(
                args.limits.upload_budget_bytes,
                args.limits.user_upload_budget(rt.max_upload_bytes),
            ),
            canceller: crate::db::Canceller::new(url)?,
        },
        http: HttpConfig {
            max_connections: budget.connections,
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            metrics_separate: metrics_listener.is_some(),
        },
    }));
    let metrics_task = metrics_listener.map(|l| tokio::spawn(api::serve_metrics(l, state.clone())));

    let children = TaskTracker::new();
    if !args.no_workers {
        for kind in ["parse", "ingest"] {
            children.spawn(supervise(
                kind,
                url.to_string(),
                channel.to_string(),
                rt.clone(),
                shutdown.clone(),
            ));
        }
    }
    tracing::info!(%api_url, realtime = !args.no_realtime, workers = !args.no_workers, "ragctl serving");
    eprintln!("ragctl: API on {api_url} (Ctrl-C to stop)");

    api::run(listener, state, Duration::from_secs(5)).await?;
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    children.close();
    children.wait().await;
    if let Some(task) = bridge_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Pending connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`): a burst beyond tokio's default of 1,024 would
/// have its handshakes dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn bind_metrics(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid --metrics-addr / RAG_METRICS_ADDR: {addr}"))?;
    let listener = tokio::net::TcpListener::bind(parsed)
        .await
        .with_context(|| format!("cannot bind the metrics address {parsed}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "metrics served on their own listener, not on the API port");
    eprintln!("ragctl: metrics on http://{bound}/metrics");
    Ok(listener)
}

/// Runs one worker child, prefixing its log lines, restarting it with
/// backoff if it dies, and stopping it with SIGTERM on shutdown.
async fn supervise(
    kind: &'static str,
    url: String,
    channel: String,
    rt: RuntimeOpts,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the ragctl executable to start workers");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .arg(kind)
            .args(rt.to_args())
            .env("DATABASE_URL", &url)
            .env("RAG_EVENTS_CHANNEL", &channel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(kind, error = %e, "cannot start worker");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let prefix = format!("[worker {kind}]");
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{prefix} {line}");
                }
            });
        }
        let started = std::time::Instant::now();
        tokio::select! {
            status = child.wait() => {
                if shutdown.is_cancelled() {
                    return;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::error!(kind, status = ?status.ok(), restart_in = ?delay, "worker exited; restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            _ = shutdown.cancelled() => {
                if let Some(pid) = child.id() {
                    // SAFETY: signalling our own child by pid.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                    Ok(_) => tracing::info!(kind, "worker stopped"),
                    Err(_) => {
                        tracing::warn!(kind, "worker did not stop in 15 s; killing it");
                        let _ = child.kill().await;
                    }
                }
                return;
            }
        }
    }
}
