//! PostgreSQL's CPU on the benchmark's database alone: the client backends
//! serving it (publishers, LISTEN connections, the relay's), read per pid
//! from `/proc/<pid>/task/*/schedstat`. `CpuSnap`'s postgres share counts
//! every postgres process of the machine instead, which another cluster
//! (the soak's) would inflate.

use anyhow::Context;

use super::sample::cpu_ns;

/// A connection to the benchmark's database that lists its backends.
pub(super) struct PgCpu {
    db: tokio_postgres::Client,
    _conn: tokio::task::JoinHandle<()>,
}

/// The backends' CPU time at one moment, ns by pid.
pub(super) struct PgSnap(Vec<(u32, u64)>);

impl PgCpu {
    pub(super) async fn connect(db_url: &str) -> anyhow::Result<PgCpu> {
        let (db, conn) = crate::db::connect(db_url, "ragctl-bench-pgcpu").await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(PgCpu { db, _conn: conn })
    }

    pub(super) fn client(&self) -> &tokio_postgres::Client {
        &self.db
    }

    /// Pids of the client backends of the database but this one's, and
    /// but those in `skip` (listeners that are not part of what is measured).
    pub(super) async fn backends(&self, skip: &[u32]) -> anyhow::Result<Vec<u32>> {
        let rows = self
            .db
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND backend_type = 'client backend'",
                &[],
            )
            .await
            .context("listing the benchmark database's backends")?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, i32>(0) as u32)
            .filter(|p| !skip.contains(p))
            .collect())
    }

    /// Pids of the backends whose `application_name` is `app`.
    pub(super) async fn pids_of(&self, app: &str) -> anyhow::Result<Vec<u32>> {
        let rows = self
            .db
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                &[&app],
            )
            .await
            .context("listing backends by application_name")?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }
}

impl PgSnap {
    pub(super) fn take(pids: &[u32]) -> PgSnap {
        PgSnap(pids.iter().map(|&p| (p, cpu_ns(p).unwrap_or(0))).collect())
    }

    /// CPU ns the same backends used since `self` (one that exited counts
    /// nothing past its last reading).
    pub(super) fn since(&self) -> u64 {
        self.0
            .iter()
            .map(|&(p, b)| cpu_ns(p).map_or(0, |a| a.saturating_sub(b)))
            .sum()
    }
}
