//! The server the benchmark starts (and its database), or the one it
//! is pointed at.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::fleet::Endpoint;
use super::{BenchArgs, progress};
use crate::config::ConnectOpts;
use crate::db::listener::quote_ident;

/// The server this command started, and the database it created.
pub(super) struct OwnServer {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) api: String,
    pub(super) admin_url: String,
    pub(super) db: String,
}

pub(super) fn with_db(url: &str, db: &str) -> anyhow::Result<String> {
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

pub(super) async fn admin_sql(url: &str, sql: &str) -> anyhow::Result<()> {
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

pub(super) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
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
        let server = match start_server(&admin, &db, &secret, channel, args).await {
            Ok(s) => s,
            Err(e) => {
                let _ = admin_sql(&admin, &drop_database(&db)).await;
                return Err(e);
            }
        };
        Ok(Site {
            db_url: with_db(&admin, &db)?,
            secret,
            api: server.api.clone(),
            pid: Some(server.pid),
            own: Some(server),
        })
    }
}

fn drop_database(db: &str) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db))
}

/// The URL without its credentials, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// `ragctl serve --no-workers --port 0` on `db_url`, its log piped.
fn spawn_serve(
    db_url: &str,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
    tokio::process::Command::new(exe)
        .args([
            "serve",
            "--no-workers",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .arg(format!("--ws-queue={}", args.ws_queue))
        .env("DATABASE_URL", db_url)
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
        .context("cannot start `ragctl serve`")
}

/// The server's last log lines, kept to explain a failed start.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// Reads the server's log: sends the API's address once it is announced,
/// keeps the last 20 lines, and copies them to stderr if `copy`.
fn watch_log(
    stderr: tokio::process::ChildStderr,
    copy: bool,
) -> (tokio::sync::oneshot::Receiver<String>, Tail) {
    let (api_tx, api_rx) = tokio::sync::oneshot::channel::<String>();
    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let tail_w = tail.clone();
    tokio::spawn(async move {
        let mut api_tx = Some(api_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("ragctl: API on ")
                && let Some(tx) = api_tx.take()
            {
                let api = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(api.to_string());
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
    (api_rx, tail)
}

pub(super) async fn start_server(
    admin_url: &str,
    db: &str,
    secret: &str,
    channel: &str,
    args: &BenchArgs,
) -> anyhow::Result<OwnServer> {
    let mut child = spawn_serve(&with_db(admin_url, db)?, secret, channel, args)?;
    let pid = child.id().context("server exited at once")?;
    let stderr = child.stderr.take().expect("piped");
    let (api_rx, tail) = watch_log(stderr, args.server_log);
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
    pub(super) async fn stop(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if let Err(e) = admin_sql(&self.admin_url, &drop_database(&self.db)).await {
            eprintln!("bench: warning: could not drop database {}: {e:#}", self.db);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_db("postgres://u@h:5432/postgres?sslmode=disable", "bench_1").unwrap(),
            "postgres://u@h:5432/bench_1?sslmode=disable"
        );
        assert_eq!(with_db("postgres://u@h", "b").unwrap(), "postgres://u@h/b");
    }
}
