//! The server the benchmark starts (and its database), or the one it
//! is pointed at.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::BenchArgs;
use super::fleet::Endpoint;
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

pub(super) async fn start_server(
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
    pub(super) async fn stop(mut self) {
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
