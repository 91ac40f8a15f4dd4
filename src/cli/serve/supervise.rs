//! The worker children of `serve`: started, their output prefixed,
//! restarted with backoff when they die, stopped with SIGTERM on shutdown.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::RuntimeOpts;

/// The variables that can carry the JWT secret (`--jwt-secret`, the flag,
/// is not passed on: children get [`RuntimeOpts::to_args`] only).
const JWT_SECRET_VARS: [&str; 2] = ["RAG_JWT_SECRET", "SUPABASE_JWT_SECRET"];

/// The flags of the worker children: `serve`'s own, with the pool sized
/// for their slots (`--concurrency`) rather than the API's `--pool-size`:
/// a slot holds a connection for its job and one to renew its lease, and
/// the process one to publish, so the cap bounds what the children could
/// open beside the API's pool and grows with their slots.
fn worker_child_opts(rt: &RuntimeOpts) -> RuntimeOpts {
    RuntimeOpts {
        pool_size: crate::workers::pool_size(rt.concurrency),
        ..rt.clone()
    }
}

/// Starts one parse and one ingest child, each supervised until
/// `shutdown`; wait for the returned tracker after cancelling.
pub(super) fn start(
    url: &str,
    channel: &str,
    rt: &RuntimeOpts,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let children = TaskTracker::new();
    for kind in ["parse", "ingest"] {
        children.spawn(supervise(
            kind,
            url.to_string(),
            channel.to_string(),
            rt.clone(),
            shutdown.clone(),
        ));
    }
    children.close();
    children
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
    let exe = match crate::own_exe::path() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the ragctl executable to start workers");
            return;
        }
    };
    let args = worker_child_opts(&rt).to_args();
    while !shutdown.is_cancelled() {
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .arg(kind)
            .args(&args)
            .env("DATABASE_URL", &url)
            .env("RAG_EVENTS_CHANNEL", &channel);
        // Workers never verify tokens: a parser exploit that reached a
        // worker must not find the key that signs every user's token.
        for secret in JWT_SECRET_VARS {
            cmd.env_remove(secret);
        }
        // Two children cannot bind one metrics address.
        cmd.env_remove("RAG_WORKER_METRICS_ADDR");
        // URLs may hold passwords: environment, not command line.
        match &rt.listen_database_url {
            Some(listen) => cmd.env("RAG_LISTEN_DATABASE_URL", listen),
            None => cmd.env_remove("RAG_LISTEN_DATABASE_URL"),
        };
        // A key, like a password: environment, not command line.
        match &rt.embed.embed_api_key {
            Some(key) => cmd.env("RAG_EMBED_API_KEY", key),
            None => cmd.env_remove("RAG_EMBED_API_KEY"),
        };
        let mut child = match spawn_piped(cmd) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(kind, error = %e, "cannot start worker");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        forward_output(kind, &mut child);
        let started = std::time::Instant::now();
        tokio::select! {
            status = child.wait() => {
                let exited = Exited { kind, status: status.ok(), started };
                if !exited.wait_to_restart(&mut backoff, &shutdown).await {
                    return;
                }
            }
            _ = shutdown.cancelled() => return stop(kind, child).await,
        }
    }
}

/// A child that ended on its own.
struct Exited {
    kind: &'static str,
    status: Option<std::process::ExitStatus>,
    started: std::time::Instant,
}

impl Exited {
    /// Logs the exit and sleeps the backoff (reset after 30 s of life);
    /// false if shutdown came first.
    async fn wait_to_restart(self, backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
        if shutdown.is_cancelled() {
            return false;
        }
        if self.started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let (kind, status) = (self.kind, self.status);
        tracing::error!(kind, status = ?status, restart_in = ?delay, "worker exited; restarting");
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Spawns `cmd` with stdin closed and stdout and stderr piped (copied by
/// `forward_output`), killed if its handle is dropped.
fn spawn_piped(mut cmd: Command) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Copies the child's stdout and stderr lines to ours, prefixed.
fn forward_output(kind: &str, child: &mut Child) {
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
}

/// SIGTERM, then SIGKILL if the child is not gone in 15 s.
async fn stop(kind: &str, mut child: Child) {
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
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        rt: RuntimeOpts,
    }

    /// The children run `serve`'s --concurrency, with a pool that grows
    /// with it whatever the API's own --pool-size.
    #[test]
    fn children_follow_concurrency_and_size_their_pool_for_it() {
        let child_args = |concurrency: &str| {
            let argv = ["serve", "--pool-size=3", "--concurrency", concurrency];
            worker_child_opts(&Serve::try_parse_from(argv).unwrap().rt).to_args()
        };
        let one = child_args("1");
        assert!(one.contains(&"--concurrency=1".to_string()), "{one:?}");
        assert!(one.contains(&"--pool-size=4".to_string()), "{one:?}");
        let eight = child_args("8");
        assert!(eight.contains(&"--concurrency=8".to_string()), "{eight:?}");
        assert!(eight.contains(&"--pool-size=18".to_string()), "{eight:?}");
    }
}
