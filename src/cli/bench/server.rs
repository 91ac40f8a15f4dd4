//! The server the benchmark starts (and its database), or the one it
//! is pointed at.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::args::BenchArgs;
use super::fleet::Endpoint;
use super::progress::progress;
use super::serve_cmd::{BenchBus, ready_url, serve_command};
use crate::config::ConnectOpts;
use crate::harness::{ScratchDb, random_hex};

/// The server this command started, and the database it created.
pub(super) struct OwnServer {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) api: String,
    pub(super) db: ScratchDb,
}

/// Database server used when none is configured.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server under test, and what the benchmark needs to reach it.
pub(super) struct Site {
    pub(super) db_url: String,
    pub(super) secret: String,
    pub(super) api: String,
    pub(super) pid: Option<u32>,
    /// The server this command started, to stop (and drop its database).
    pub(super) own: Option<OwnServer>,
}

impl Site {
    /// The server at --server-url, or one started on a fresh database.
    pub(super) async fn open(
        connect: &ConnectOpts,
        args: &BenchArgs,
        channel: &str,
    ) -> anyhow::Result<Site> {
        if let Some(api) = &args.server_url {
            return Ok(Site {
                db_url: connect.database_url()?,
                secret: connect.jwt_secret()?,
                api: api.trim_end_matches('/').to_string(),
                pid: args.server_pid,
                own: None,
            });
        }
        let db = scratch_db(connect).await?;
        let secret = random_hex(32);
        progress(&format!(
            "database {} created; starting `ragctl serve --no-workers`",
            db.name
        ));
        let server = start_server(db, &secret, channel, args).await?;
        Ok(Site {
            db_url: server.db.url.clone(),
            secret,
            api: server.api.clone(),
            pid: Some(server.pid),
            own: Some(server),
        })
    }
}

/// The URL without its credentials, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// `ragctl serve --no-workers --port 0` on `db_url` (`serve_cmd`), with
/// this run's flags, its log piped and its address written to `ready`.
fn spawn_serve(
    db_url: &str,
    ready: &Path,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
    bus: &BenchBus,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = serve_command(db_url, secret, ready)?;
    bus.apply(&mut cmd);
    cmd.arg(format!("--ws-queue={}", args.ws_queue))
        .args(
            args.resume
                .then(|| format!("--max-catchup={}", super::resume::ROWS)),
        )
        // Room for every socket of a --sockets run (the open-file limit
        // still caps it; the server says so in its log).
        .args((args.sockets > 0).then(|| format!("--ws-max-connections={}", args.sockets + 100)))
        // The fan-out fleets are one user's many sockets on purpose (1,000
        // with --sockets), past the default per-user shares of sockets and
        // router frames; the abuse and fan-out attack runs measure the
        // server's own defaults (RAG_USER_FRAME_RATE still applies there).
        .args((!args.abuse).then_some("--ws-max-per-user=1000000"))
        .args((!args.abuse && args.fanout_attack == 0).then_some("--user-frame-rate=0"))
        .args(&args.abuse_serve_args)
        .env("RAG_EVENTS_CHANNEL", channel)
        .env("RAG_LOG", if args.server_log { "info" } else { "warn" })
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `ragctl serve`")
}

/// The server's last log lines, kept to explain a failed start.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// Reads the server's log: keeps the last 20 lines, and copies them to
/// stderr if `copy`.
fn watch_log(stderr: tokio::process::ChildStderr, copy: bool) -> Tail {
    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let tail_w = tail.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
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
    tail
}

/// Starts the server on `db` and waits for its ready file; on failure
/// stops it and drops `db`.
pub(super) async fn start_server(
    db: ScratchDb,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
) -> anyhow::Result<OwnServer> {
    match launch(&db.url, &db.name, secret, channel, args).await {
        Ok(i) => Ok(OwnServer {
            child: i.child,
            pid: i.pid,
            api: i.api,
            db,
        }),
        Err(e) => {
            let _ = db.drop_now().await;
            Err(e)
        }
    }
}

/// One more `ragctl serve --no-workers` on the same database (the
/// capacity phase's extra API instances).
pub(super) struct Instance {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) api: String,
}

/// Starts a server on `db_url` and waits for its ready file (`name` names
/// the file); on failure stops it and returns its last log lines.
pub(super) async fn launch(
    db_url: &str,
    name: &str,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
) -> anyhow::Result<Instance> {
    launch_on(db_url, (name, secret, channel), args, &BenchBus::Postgres).await
}

/// [`launch`] on `bus`.
pub(super) async fn launch_on(
    db_url: &str,
    (name, secret, channel): (&str, &str, &str),
    args: &BenchArgs,
    bus: &BenchBus,
) -> anyhow::Result<Instance> {
    let ready_path = std::env::temp_dir().join(format!("{name}.{}.ready", random_hex(4)));
    let mut child = spawn_serve(db_url, &ready_path, secret, channel, args, bus)?;
    let pid = child.id().unwrap_or_default();
    let tail = watch_log(child.stderr.take().expect("piped"), args.server_log);
    let ready = ready_url(&mut child, &ready_path, Duration::from_secs(60)).await;
    let _ = std::fs::remove_file(&ready_path);
    let mut instance = Instance {
        child,
        pid,
        api: String::new(),
    };
    match ready {
        Some(url) => {
            instance.api = url;
            Ok(instance)
        }
        None => {
            let log: Vec<String> = tail.lock().expect("tail").iter().cloned().collect();
            instance.stop().await;
            bail!(
                "the server did not start; its last log lines:\n{}",
                log.join("\n")
            );
        }
    }
}

impl Instance {
    pub(super) async fn stop(mut self) {
        terminate(self.pid, &mut self.child).await;
    }
}

/// SIGTERM, then SIGKILL if it has not exited within 10 s.
async fn terminate(pid: u32, child: &mut tokio::process::Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

impl OwnServer {
    pub(super) async fn stop(mut self) {
        terminate(self.pid, &mut self.child).await;
        if let Err(e) = self.db.drop_now().await {
            eprintln!(
                "bench: warning: could not drop database {}: {e:#}",
                self.db.name
            );
        }
    }
}

pub(super) async fn wait_ready(api: &str) -> anyhow::Result<()> {
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

pub(super) async fn endpoint(api: &str) -> anyhow::Result<Endpoint> {
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

/// A fresh benchmark database on the configured server (or the local
/// default).
pub(super) async fn scratch_db(connect: &ConnectOpts) -> anyhow::Result<ScratchDb> {
    let admin = connect
        .database_url()
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
    let prefix = format!("bench_{}", std::process::id());
    ScratchDb::create(&admin, &prefix, None)
        .await
        .with_context(|| format!("cannot create the benchmark database on {}", redact(&admin)))
}
