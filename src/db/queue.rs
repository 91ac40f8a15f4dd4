//! What the job queue holds right now, for `ragctl queue`: per kind the
//! queued, due and running counts, the oldest waiting job, the slots in use
//! per worker and the users with the most jobs.
//!
//! Read-only and bounded: every scan is one of the partial indexes on
//! `jobs` (`WHERE status = 'queued'` / `'running'`, so the statuses are
//! literals here) and stops after `scan_limit` rows; a count that reached
//! the limit is reported as capped rather than read to the end. All of a
//! snapshot is read in one REPEATABLE READ transaction, so its numbers agree
//! with each other and `now()` is one instant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use super::DbError;
use super::status::JobKind;

/// How much of the queue one snapshot reads, and how much it returns.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Rows read per scan (per kind and status) at most.
    pub scan_limit: i64,
    /// Users listed per kind.
    pub top_users: i64,
    /// Workers listed per kind.
    pub workers: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The database's clock when the snapshot was read.
    pub at: DateTime<Utc>,
    pub scan_limit: i64,
    pub kinds: Vec<KindQueue>,
}

/// The queue of one job kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindQueue {
    pub kind: JobKind,
    /// Every queued job, due or not (embargoed, backing off).
    pub queued: i64,
    /// Queued jobs whose `run_after` has passed: claimable now.
    pub due: i64,
    pub running: i64,
    /// Running jobs whose lease ran out (their worker is gone or stuck);
    /// the next claim takes them over.
    pub lease_expired: i64,
    /// Some scan stopped at `scan_limit`: the counts are lower bounds and
    /// the lists cover the rows read.
    pub capped: bool,
    /// `run_after` of the oldest due job: since when it has been waiting.
    pub oldest_due_at: Option<DateTime<Utc>>,
    pub oldest_due_age_secs: Option<f64>,
    /// Worker ids holding running jobs, most slots first.
    pub workers: Vec<WorkerSlots>,
    /// How many worker ids hold running jobs (`workers` may list fewer).
    pub workers_total: i64,
    /// Users by running + queued jobs, most first.
    pub top_users: Vec<UserJobs>,
    /// How many users have running or queued jobs.
    pub users_total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerSlots {
    /// The lease owner up to its last `#` (the slot number); an owner
    /// without `#` (one slot per process) is its own worker id.
    pub worker: String,
    pub slots: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserJobs {
    pub user_id: Uuid,
    pub running: i64,
    pub queued: i64,
}

/// Reads the queue of every kind, in one read-only transaction.
pub async fn snapshot(client: &mut Client, bounds: Bounds) -> Result<Snapshot, DbError> {
    let tx = super::read_snapshot(client).await?;
    let at: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
    let mut kinds = Vec::with_capacity(JobKind::ALL.len());
    for &kind in JobKind::ALL {
        kinds.push(kind_queue(&tx, kind, bounds, at).await?);
    }
    tx.commit().await?;
    Ok(Snapshot {
        at,
        scan_limit: bounds.scan_limit,
        kinds,
    })
}

async fn kind_queue(
    client: &Transaction<'_>,
    kind: JobKind,
    bounds: Bounds,
    at: DateTime<Utc>,
) -> Result<KindQueue, DbError> {
    let counts = client
        .query_one(COUNTS, &[&kind.as_str(), &bounds.scan_limit])
        .await?;
    let workers = client
        .query(
            WORKERS,
            &[&kind.as_str(), &bounds.scan_limit, &bounds.workers],
        )
        .await?;
    let users = client
        .query(
            TOP_USERS,
            &[&kind.as_str(), &bounds.scan_limit, &bounds.top_users],
        )
        .await?;
    let mut q = from_counts(kind, &counts, bounds.scan_limit);
    q.oldest_due_age_secs = q.oldest_due_age(at).map(|d| d.as_secs_f64());
    q.workers_total = total(&workers);
    q.workers = workers.iter().map(worker_from_row).collect();
    q.users_total = total(&users);
    q.top_users = users.iter().map(user_from_row).collect();
    Ok(q)
}

/// Each count reads at most `$2` index entries.
const COUNTS: &str = "
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM jobs
     WHERE kind = $1 AND status = 'queued' LIMIT $2) s) AS queued,
  (SELECT count(*) FROM (SELECT 1 FROM jobs
     WHERE kind = $1 AND status = 'queued' AND run_after <= now() LIMIT $2) s) AS due,
  (SELECT count(*) FROM (SELECT 1 FROM jobs
     WHERE kind = $1 AND status = 'running' LIMIT $2) s) AS running,
  (SELECT count(*) FROM (SELECT 1 FROM jobs
     WHERE kind = $1 AND status = 'running' AND lease_expires_at < now() LIMIT $2) s)
     AS lease_expired,
  (SELECT run_after FROM jobs
     WHERE kind = $1 AND status = 'queued' AND run_after <= now()
     ORDER BY run_after LIMIT 1) AS oldest_due_at";

/// Running jobs grouped by worker id: the owner with its `#slot` suffix
/// cut (an owner without `#` is left whole).
const WORKERS: &str = "
SELECT regexp_replace(coalesce(lease_owner, '(no owner)'), '#[^#]*$', '') AS worker,
       count(*) AS slots,
       count(*) OVER () AS total
FROM (SELECT lease_owner FROM jobs
      WHERE kind = $1 AND status = 'running' LIMIT $2) r
GROUP BY 1
ORDER BY slots DESC, worker
LIMIT $3";

/// Each user's running and queued jobs, from at most `$2` rows of each;
/// only `user_id` is read, which the per-user partial indexes hold.
const TOP_USERS: &str = "
SELECT user_id, sum(r) AS running, sum(q) AS queued, count(*) OVER () AS total
FROM ((SELECT user_id, 1 AS r, 0 AS q FROM jobs
       WHERE kind = $1 AND status = 'running' LIMIT $2)
      UNION ALL
      (SELECT user_id, 0, 1 FROM jobs
       WHERE kind = $1 AND status = 'queued' LIMIT $2)) j
GROUP BY user_id
ORDER BY count(*) DESC, running DESC, user_id
LIMIT $3";

fn from_counts(kind: JobKind, r: &Row, scan_limit: i64) -> KindQueue {
    let (queued, running): (i64, i64) = (r.get("queued"), r.get("running"));
    let oldest_due_at: Option<DateTime<Utc>> = r.get("oldest_due_at");
    KindQueue {
        kind,
        queued,
        due: r.get("due"),
        running,
        lease_expired: r.get("lease_expired"),
        capped: queued >= scan_limit || running >= scan_limit,
        oldest_due_at,
        oldest_due_age_secs: None,
        workers: vec![],
        workers_total: 0,
        top_users: vec![],
        users_total: 0,
    }
}

fn total(rows: &[Row]) -> i64 {
    rows.first().map_or(0, |r| r.get("total"))
}

fn worker_from_row(r: &Row) -> WorkerSlots {
    WorkerSlots {
        worker: r.get("worker"),
        slots: r.get("slots"),
    }
}

fn user_from_row(r: &Row) -> UserJobs {
    UserJobs {
        user_id: r.get("user_id"),
        running: r.get("running"),
        queued: r.get("queued"),
    }
}

impl KindQueue {
    /// How long the oldest due job has waited at `now` (zero if `now` is
    /// before it became due).
    pub fn oldest_due_age(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        self.oldest_due_at
            .map(|due| (now - due).to_std().unwrap_or_default())
    }
}
