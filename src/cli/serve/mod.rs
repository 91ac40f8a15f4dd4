//! `ragctl serve`: the API, the realtime bridge, and (unless `--no-workers`)
//! one parse and one ingest worker as child processes, restarted if they die.
//! With no database configured it starts the embedded local cluster.

mod args;
mod heap;
mod state;
mod supervise;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::{ConnectOpts, State};
use crate::db::embedded::Embedded;
use crate::harness::Ready;
pub use args::ServeArgs;
pub use state::{Parts, build as build_state};

/// Raises the open-file limit (each socket is a file) to `fs.nr_open` when
/// the process may raise its hard limit, else to the hard limit; returns
/// the soft limit before and after.
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
        // Past the hard limit, up to `fs.nr_open`, if privileged
        // (CAP_SYS_RESOURCE); refused otherwise, and the hard limit stands.
        if let Some(nr_open) = nr_open().filter(|&n| n > lim.rlim_max) {
            let wide = libc::rlimit {
                rlim_cur: nr_open,
                rlim_max: nr_open,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wide) == 0 {
                return Ok((before, nr_open));
            }
        }
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

/// `fs.nr_open`: the highest open-file limit the kernel allows.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
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

pub async fn run(connect: ConnectOpts, mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    args.runtime.check()?;
    // A missing model directory or a malformed --embed-url stops serve
    // before anything starts (its ingest child would fail the same way);
    // the API embeds questions with this one.
    let embedder = args.runtime.embed.load()?;
    args.limits.check(args.runtime.max_upload_bytes)?;
    args.bus.check()?;
    args.limits.check_search_pool(args.runtime.pool_size)?;
    // Checked before anything starts; the state resolves it again.
    args.retrieval.resolve(embedder.is_some())?;
    // Checked before anything starts; the state reads it again.
    api::cors::Cors::parse(&args.cors_origins)?;
    api::limits::return_big_buffers_to_the_os();
    let budget = fd_budget(&args)?;
    let channel = connect.channel()?;
    let metrics = super::metrics::install();

    // The database: configured, or the embedded cluster.
    let (url, embedded) = match connect.configured_database_url() {
        Some(url) => (url, None),
        None => {
            let e = Embedded::start(&connect.state_dir).await?;
            (e.url.clone(), Some(e))
        }
    };
    // A local database is a local user's: the console is on.
    args.console |= embedded.is_some();
    let secret = match connect.configured_jwt_secret() {
        Some(s) => s,
        None => match State::load(&connect.state_dir)? {
            Some(s) if embedded.is_some() => s.jwt_secret,
            _ if embedded.is_some() => crate::harness::random_hex(32),
            _ => connect.jwt_secret()?,
        },
    };

    let site = Site {
        connect: &connect,
        args: &args,
        url: &url,
        secret: &secret,
        channel: &channel,
        embedded: embedded.is_some(),
        embedder,
    };
    let result = serve(site, metrics, budget).await;
    if let Some(e) = embedded {
        match e.stop().await {
            Ok(()) => tracing::info!("embedded PostgreSQL stopped"),
            Err(err) => tracing::warn!(error = %err, "could not stop the embedded PostgreSQL"),
        }
    }
    result
}

/// What `run` resolved: the database, the secret, the channel.
struct Site<'a> {
    connect: &'a ConnectOpts,
    args: &'a ServeArgs,
    url: &'a str,
    secret: &'a str,
    channel: &'a str,
    embedded: bool,
    embedder: Option<crate::embed::Embedder>,
}

async fn serve(
    site: Site<'_>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    budget: api::FdBudget,
) -> anyhow::Result<ExitCode> {
    let args = site.args;
    let pool = open_pool(args, site.url).await?;
    let listener = bind_api(args)?;
    let bound = listener.local_addr()?;
    let api_url = format!("http://{bound}");
    let console_user = if site.embedded {
        Some(site.save_state(&api_url)?)
    } else {
        None
    };
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(super::metrics::bind(addr, "--metrics-addr / RAG_METRICS_ADDR").await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    super::signal::cancel_on_signal(shutdown.clone());
    let parts = state::Parts {
        pool,
        url: site.url,
        secret: site.secret,
        channel: site.channel,
        metrics,
        budget,
        metrics_separate: metrics_listener.is_some(),
        shutdown: shutdown.clone(),
        embedder: site.embedder.clone(),
    };
    let (state, bridge_task) = state::build(args, parts)?;
    heap::spawn(shutdown.clone());
    let metrics_task = metrics_listener.map(|l| tokio::spawn(api::serve_metrics(l, state.clone())));
    // Before the children: a ready file that cannot be written stops here.
    announce(args, &api_url, bound.port())?;
    announce_console(args, &api_url, console_user, site.secret)?;
    let children = (!args.no_workers)
        .then(|| supervise::start(site.url, site.channel, &args.runtime, &shutdown));

    api::run(listener, state, Duration::from_secs(5)).await?;
    shutdown.cancel();
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    wind_down(metrics_task, children, bridge_task).await;
    Ok(ExitCode::SUCCESS)
}

impl Site<'_> {
    /// Records the embedded cluster and the API for the other subcommands;
    /// returns the console's user (the recorded one, else a new one).
    fn save_state(&self, api_url: &str) -> anyhow::Result<uuid::Uuid> {
        let previous = State::load(&self.connect.state_dir)?;
        let console_user = previous
            .and_then(|s| s.console_user)
            .unwrap_or_else(uuid::Uuid::new_v4);
        State {
            database_url: self.url.to_string(),
            jwt_secret: self.secret.to_string(),
            api_url: Some(api_url.to_string()),
            console_user: Some(console_user),
        }
        .save(&self.connect.state_dir)?;
        Ok(console_user)
    }
}

/// After shutdown: the metrics listener, the worker children, then the
/// bridge (at most 2 s).
async fn wind_down(
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    children: Option<tokio_util::task::TaskTracker>,
    bridge_task: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(children) = children {
        children.wait().await;
    }
    if let Some(task) = bridge_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

/// The API's pool, migrations applied.
async fn open_pool(args: &ServeArgs, url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let timeout = args.limits.statement_timeout();
    let pool =
        crate::db::pool_with_timeout(url, args.runtime.pool_size, "ragctl-api", timeout).await?;
    let applied = crate::db::migrate(&pool).await?;
    if applied > 0 {
        tracing::info!(applied, "migrations applied");
    }
    Ok(pool)
}

fn bind_api(args: &ServeArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "invalid --host / RAG_HOST and --port / PORT: {}:{}",
                args.host, args.port
            )
        })?;
    bind(addr)
        .with_context(|| format!("cannot bind {addr} (is another server running? try --port)"))
}

/// Says where the API is: the log, the human line, and the ready file
/// (the socket is listening, so connections queue from now on).
fn announce(args: &ServeArgs, api_url: &str, port: u16) -> anyhow::Result<()> {
    tracing::info!(%api_url, realtime = !args.no_realtime, workers = !args.no_workers, "ragctl serving");
    eprintln!("ragctl: API on {api_url} (Ctrl-C to stop)");
    if let Some(path) = &args.ready_file {
        let ready = Ready {
            url: api_url.to_string(),
            port,
            pid: std::process::id(),
        };
        ready
            .write(path)
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    Ok(())
}

/// How long the console link's token lasts.
const CONSOLE_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Says where the console is. With a local user (embedded database) the
/// link carries a token in its fragment, as Jupyter does: a fragment never
/// reaches a server or a log, and the page moves it out of the address bar.
fn announce_console(
    args: &ServeArgs,
    api_url: &str,
    user: Option<uuid::Uuid>,
    secret: &str,
) -> anyhow::Result<()> {
    if !args.console {
        return Ok(());
    }
    match user {
        Some(user) => {
            let token = crate::auth::mint(secret, user, CONSOLE_TOKEN_TTL)?;
            eprintln!("ragctl: console on {api_url}/#token={token}");
        }
        None => eprintln!(
            "ragctl: console on {api_url}/ (sign in with a token: `ragctl token --user UUID`)"
        ),
    }
    Ok(())
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
