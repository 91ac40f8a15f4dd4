//! The job queue: Postgres only. Workers claim with `FOR UPDATE SKIP
//! LOCKED` under a lease they renew; a job whose lease ran out (its worker
//! died) is claimable again. [`start`] NOTIFYs `rag_jobs` so idle workers
//! start at once.
//!
//! Statuses are written as literals inside the queue's SQL on purpose: the
//! partial indexes (`WHERE status = 'queued'`, `'running'`) are only used
//! when the predicate is a literal. `tests/status_sql.rs` checks that the
//! [`JobStatus`] values are exactly the column's.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use super::queue_sql::{self, ATTEMPT_SECS};
pub use super::status::{JobKind, JobStatus};

/// NOTIFY channel the job queue uses to wake workers. Not an event channel:
/// its payload is just the job kind.
pub const JOBS_CHANNEL: &str = "rag_jobs";

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub document_id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub retry_count: i32,
    pub max_retries: i32,
    pub error_message: Option<String>,
    pub run_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "id, document_id, user_id, kind, status, retry_count, max_retries, \
                       error_message, run_after, created_at, updated_at";

impl Job {
    pub(crate) fn from_row(r: &Row) -> Job {
        Job {
            id: r.get("id"),
            document_id: r.get("document_id"),
            user_id: r.get("user_id"),
            kind: r.get("kind"),
            status: r.get("status"),
            retry_count: r.get("retry_count"),
            max_retries: r.get("max_retries"),
            error_message: r.get("error_message"),
            run_after: r.get("run_after"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// Queues a job for a document inside the caller's transaction. The job is
/// embargoed until [`start`] is called once the transaction committed and
/// its events were published, so that a worker's events never overtake the
/// ones announcing the job. If the caller dies first, the embargo simply
/// runs out.
pub async fn enqueue(
    tx: &impl GenericClient,
    document_id: Uuid,
    user_id: Uuid,
    kind: JobKind,
    max_retries: i32,
    embargo: std::time::Duration,
) -> Result<Job, DbError> {
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO jobs (id, document_id, user_id, kind, status, max_retries, run_after,
                                   created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'queued', $5, now() + make_interval(secs => $6),
                         clock_timestamp(), clock_timestamp())
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &document_id,
                &user_id,
                &kind.as_str(),
                &max_retries,
                &embargo.as_secs_f64(),
            ],
        )
        .await?;
    Ok(Job::from_row(&row))
}

/// Lifts a new job's embargo and wakes idle workers of its kind. Best
/// effort: the embargo expires on its own and workers also poll.
pub async fn start(client: &impl GenericClient, job: &Job) {
    if let Err(e) = client
        .execute(
            "UPDATE jobs SET run_after = now() WHERE id = $1 AND status = 'queued' AND run_after > now()",
            &[&job.id],
        )
        .await
    {
        tracing::warn!(error = %super::error_text(&e), "could not lift a job's embargo; it starts when the embargo ends");
    }
    wake(client, job.kind).await;
}

/// NOTIFYs workers of `kind` that there is work.
pub async fn wake(client: &impl GenericClient, kind: JobKind) {
    if let Err(e) = client
        .execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &kind.as_str()])
        .await
    {
        tracing::debug!(error = %super::error_text(&e), "job wake-up NOTIFY failed; workers will poll");
    }
}

/// A claimed job, and whether it was taken over from a worker whose lease
/// ran out.
pub struct Claimed {
    pub job: Job,
    pub reclaimed: bool,
}

/// Claims the next job of `kind`: first one whose lease ran out (its
/// worker died), else a due queued job of the user with the fewest running
/// jobs, then the one whose turn comes first (see [`queue_sql::fair_next`]
/// and docs/architecture.md): a user's turn key is when they started
/// waiting, pushed back by the service their slots got recently. So one
/// user's backlog cannot starve another's document, and a fresh account
/// cannot jump ahead of users already waiting. Records the queue wait.
pub async fn claim(
    client: &impl GenericClient,
    kind: JobKind,
    owner: &str,
    lease_secs: f64,
) -> Result<Option<Claimed>, DbError> {
    for next in [queue_sql::EXPIRED.to_string(), queue_sql::fair_next()] {
        let row = client
            .query_opt(&claim_sql(&next), &[&kind.as_str(), &owner, &lease_secs])
            .await?;
        if let Some(r) = row {
            let reclaimed = r.get::<_, JobStatus>("prev_status") == JobStatus::Running;
            if !reclaimed {
                let waited: f64 = r.get("waited");
                metrics::histogram!("ragctl_queue_wait_seconds", "kind" => kind.as_str())
                    .record(waited.max(0.0));
            }
            return Ok(Some(Claimed {
                reclaimed,
                job: Job::from_row(&r),
            }));
        }
    }
    Ok(None)
}

/// The fair claim statement, for `EXPLAIN` in tests.
#[doc(hidden)]
pub fn claim_plan_sql() -> String {
    claim_sql(&queue_sql::fair_next())
}

/// `COLUMNS` qualified with `j.`, for statements that join.
fn returning_j() -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("j.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn claim_sql(next: &str) -> String {
    queue_sql::claim(next, &returning_j())
}

/// The preemption statements (probe, decision), for `EXPLAIN` in tests.
#[doc(hidden)]
pub fn preempt_plan_sql() -> [String; 2] {
    [queue_sql::preempt_probe(), queue_sql::preempt(COLUMNS)]
}

/// How long a queued job must have been due, its user running nothing of
/// the kind, before that user is *starving* and a slot is freed for them.
pub const STARVING_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Hands job `id` (held by `owner`) back to the queue if the preemption
/// rule picks it (see [`queue_sql::preempt`]): some user is starving and
/// this job is one of the victims. `retry_count` stays; the attempt's wall
/// time goes to `service_secs`. `None`: keep running.
pub async fn preempt(
    client: &mut deadpool_postgres::Object,
    kind: JobKind,
    id: Uuid,
    owner: &str,
) -> Result<Option<Job>, DbError> {
    let starving = STARVING_AFTER.as_secs_f64();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&kind.as_str(), &id, &owner, &starving];
    // Most ticks end here, without taking the lock.
    let probe = client
        .query_one(&queue_sql::preempt_probe(), &params)
        .await?;
    if !probe.get::<_, bool>(0) {
        return Ok(None);
    }
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('ragctl-preempt:' || $1, 0))",
        &[&kind.as_str()],
    )
    .await?;
    let row = tx.query_opt(&queue_sql::preempt(COLUMNS), &params).await?;
    tx.commit().await?;
    let job = row.as_ref().map(Job::from_row);
    if job.is_some() {
        metrics::counter!("ragctl_jobs_preempted_total", "kind" => kind.as_str()).increment(1);
    }
    Ok(job)
}

/// How long until the earliest queued (or lease-expired) job of `kind` is
/// due; `None` when there is none.
pub async fn next_due_in(
    client: &impl GenericClient,
    kind: JobKind,
) -> Result<Option<std::time::Duration>, DbError> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM min(due) - clock_timestamp())::float8 FROM (
                SELECT min(run_after) AS due FROM jobs WHERE kind = $1 AND status = 'queued'
                UNION ALL
                SELECT min(lease_expires_at) FROM jobs WHERE kind = $1 AND status = 'running') t",
            &[&kind.as_str()],
        )
        .await?;
    let secs: Option<f64> = row.get(0);
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0) + 0.005)))
}

/// Extends the lease; `false` means another worker owns the job now.
pub async fn renew(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    lease_secs: f64,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE jobs SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
            &[&id, &owner, &lease_secs],
        )
        .await?;
    Ok(n == 1)
}

/// Marks a job done, if this worker still holds it.
pub async fn succeed(
    tx: &impl GenericClient,
    id: Uuid,
    owner: &str,
) -> Result<Option<Job>, DbError> {
    let row = tx
        .query_opt(
            &format!(
                "UPDATE jobs SET status = 'success', error_message = NULL, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = clock_timestamp(),
                    service_secs = service_secs + {ATTEMPT_SECS}
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'
                 RETURNING {COLUMNS}"
            ),
            &[&id, &owner],
        )
        .await?;
    Ok(row.as_ref().map(Job::from_row))
}

/// Whether a failed attempt may be retried, and the first retry's backoff.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// `false` for a failure no retry can change: the job fails at once.
    pub allowed: bool,
    pub backoff_secs: f64,
}

/// Records a failed attempt: back to `queued` with `retry_count + 1` and an
/// exponential backoff, or `failed` once `max_retries` retries are used or
/// when no retry is allowed (`retry_count` then stays as it was).
pub async fn fail(
    tx: &impl GenericClient,
    id: Uuid,
    owner: &str,
    error: &str,
    retry: Retry,
) -> Result<Option<Job>, DbError> {
    let row = tx
        .query_opt(
            &format!(
                "UPDATE jobs SET
                    status = CASE WHEN $5 AND retry_count < max_retries THEN 'queued' ELSE 'failed' END,
                    run_after = clock_timestamp()
                        + make_interval(secs => least($4 * power(2, retry_count), 300)),
                    retry_count = CASE WHEN $5 AND retry_count < max_retries THEN retry_count + 1 ELSE retry_count END,
                    error_message = $3, lease_owner = NULL, lease_expires_at = NULL,
                    updated_at = clock_timestamp(), service_secs = service_secs + {ATTEMPT_SECS}
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'
                 RETURNING {COLUMNS}"
            ),
            &[&id, &owner, &error, &retry.backoff_secs, &retry.allowed],
        )
        .await?;
    Ok(row.as_ref().map(Job::from_row))
}

/// Gives a job back untouched (graceful shutdown before it finished).
pub async fn release(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
) -> Result<Option<Job>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                    run_after = now(), updated_at = clock_timestamp(),
                    service_secs = service_secs + {ATTEMPT_SECS}
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'
                 RETURNING {COLUMNS}"
            ),
            &[&id, &owner],
        )
        .await?;
    let job = row.as_ref().map(Job::from_row);
    if let Some(j) = &job {
        wake(client, j.kind).await;
    }
    Ok(job)
}

pub async fn for_document(
    client: &impl GenericClient,
    user_id: Uuid,
    document_id: Uuid,
) -> Result<Vec<Job>, DbError> {
    super::query_all(
        client,
        &format!(
            "SELECT {COLUMNS} FROM jobs WHERE document_id = $1 AND user_id = $2
             ORDER BY created_at, id"
        ),
        &[&document_id, &user_id],
        Job::from_row,
    )
    .await
}
