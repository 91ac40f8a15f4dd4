//! The `ragctl serve` the benchmark phases (`server`) and the soak
//! (`soak_procs`) start: one command line, so both measure the same server.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::sample::metrics_token;
use crate::harness::Ready;

/// `ragctl serve --no-workers` on 127.0.0.1, a free port, its address
/// written to `ready`: on `db_url` with `secret`, `/metrics` on the API
/// port for the bearer of [`metrics_token`], and none of the caller's
/// variables that would change what is measured (a listen URL of its own,
/// realtime off, a bus). The caller adds its flags (`BenchBus::apply`)
/// and its log's destination.
pub(super) fn serve_command(db_url: &str, secret: &str, ready: &Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--no-workers",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    .arg("--ready-file")
    .arg(ready)
    .env("DATABASE_URL", db_url)
    .env("RAG_JWT_SECRET", secret)
    .env("RAG_METRICS_TOKEN", metrics_token())
    .env_remove("RAG_LISTEN_DATABASE_URL")
    .env_remove("RAG_NO_REALTIME");
    for var in [
        "RAG_BUS",
        "RAG_NATS_URL",
        "RAG_NATS_CREDS",
        "RAG_NATS_PREFIX",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// The bus a started server runs on: the postgres bus (the default), or
/// NATS at `url`, each server a relay candidate when `relay` (else
/// `--relay off`: the capacity benchmark runs the relay as a process of
/// its own, so that its CPU is read alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BenchBus {
    Postgres,
    Nats { url: String, relay: bool },
}

impl BenchBus {
    /// Adds the bus's flags to a `serve_command`.
    pub(super) fn apply(&self, cmd: &mut Command) {
        if let BenchBus::Nats { url, relay } = self {
            cmd.args(["--bus", "nats", "--nats-url", url]);
            if !relay {
                cmd.args(["--relay", "off"]);
            }
        }
    }

    /// `postgres` or `nats`, for reports.
    pub(super) fn name(&self) -> &'static str {
        match self {
            BenchBus::Postgres => "postgres",
            BenchBus::Nats { .. } => "nats",
        }
    }
}

/// The URL in `ready` once the server wrote it, waited on while `child`
/// runs, within `limit`; `None` if it exited or the limit passed first.
pub(super) async fn ready_url(child: &mut Child, ready: &Path, limit: Duration) -> Option<String> {
    let waited = Ready::wait(ready, limit, || matches!(child.try_wait(), Ok(None))).await;
    match waited {
        Ok(Some(r)) => Some(r.url),
        _ => None,
    }
}
