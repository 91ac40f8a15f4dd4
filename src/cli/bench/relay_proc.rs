//! The `ragctl relay` processes of `--capacity --bus nats`: a process of
//! their own, so that the relay's CPU is read alone and its leader can be
//! killed; and which of them leads, read off PostgreSQL (the leader is the
//! one whose LISTEN backend exists).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::bus::relay::RELAY_LISTENER_NAME;

/// How long a relay may take to lead before the run gives up.
const PATIENCE: Duration = Duration::from_secs(60);

pub(super) struct RelayProc {
    pub(super) child: Child,
    pub(super) pid: u32,
}

/// The place a relay runs: its database, channel and NATS server.
#[derive(Clone)]
pub(super) struct RelaySite {
    pub(super) db_url: String,
    pub(super) channel: String,
    pub(super) nats_url: String,
}

impl RelayProc {
    /// Starts `ragctl relay` (it leads if no other relay does).
    pub(super) fn spawn(site: &RelaySite) -> anyhow::Result<RelayProc> {
        let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["relay", "--nats-url", &site.nats_url])
            .env("DATABASE_URL", &site.db_url)
            .env("RAG_EVENTS_CHANNEL", &site.channel)
            .env("RAG_LOG", "warn")
            .env_remove("RAG_LISTEN_DATABASE_URL")
            .env_remove("RAG_RELAY_METRICS_ADDR")
            .env_remove("RAG_NATS_PREFIX")
            .env_remove("RAG_NATS_CREDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().context("cannot start `ragctl relay`")?;
        let pid = child.id().unwrap_or_default();
        Ok(RelayProc { child, pid })
    }

    /// SIGKILL, no goodbye (the failover's fault).
    pub(super) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Backends of the database whose `application_name` is `app` (the
/// relay's LISTEN connection: 1 once a relay leads; its lock sessions: one
/// per relay running).
pub(super) async fn sessions(db: &tokio_postgres::Client, app: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&app],
        )
        .await
        .context("counting the relay's backends")?;
    Ok(row.get(0))
}

/// Waits until a relay leads (its LISTEN backend is there), while `relay` runs.
pub(super) async fn wait_leading(
    db: &tokio_postgres::Client,
    relay: &mut RelayProc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if sessions(db, RELAY_LISTENER_NAME).await? >= 1 {
            return Ok(());
        }
        if let Ok(Some(status)) = relay.child.try_wait() {
            bail!("`ragctl relay` exited ({status}) before it led");
        }
        if Instant::now() > deadline {
            bail!("no relay led within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
