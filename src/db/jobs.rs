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
/// jobs, then the user served least recently (round-robin), then the
/// user's oldest. One user's backlog cannot starve another's document.
pub async fn claim(
    client: &impl GenericClient,
    kind: JobKind,
    owner: &str,
    lease_secs: f64,
) -> Result<Option<Claimed>, DbError> {
    for next in [EXPIRED, FAIR_NEXT] {
        let row = client
            .query_opt(&claim_sql(next), &[&kind.as_str(), &owner, &lease_secs])
            .await?;
        if let Some(r) = row {
            return Ok(Some(Claimed {
                reclaimed: r.get::<_, JobStatus>("prev_status") == JobStatus::Running,
                job: Job::from_row(&r),
            }));
        }
    }
    Ok(None)
}

/// A running job whose lease ran out.
const EXPIRED: &str = "SELECT id, status AS prev_status FROM jobs
    WHERE kind = $1 AND status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT 1
    FOR UPDATE SKIP LOCKED";

/// The users with due jobs, one index probe each (a loose index scan); per
/// user their running count, last turn and four oldest due jobs; the first
/// of those not locked by another claimer. The due conditions are repeated
/// on `j` so that they are checked again on the locked row.
const FAIR_NEXT: &str = "WITH RECURSIVE users AS (
        (SELECT user_id FROM jobs
         WHERE kind = $1 AND status = 'queued' AND run_after <= now()
         ORDER BY user_id LIMIT 1)
        UNION ALL
        SELECT (SELECT q.user_id FROM jobs q
                WHERE q.kind = $1 AND q.status = 'queued' AND q.run_after <= now()
                  AND q.user_id > u.user_id
                ORDER BY q.user_id LIMIT 1)
        FROM users u WHERE u.user_id IS NOT NULL),
    turns AS (
        SELECT u.user_id,
            (SELECT count(*) FROM jobs r
             WHERE r.kind = $1 AND r.status = 'running' AND r.user_id = u.user_id) AS running,
            (SELECT c.claimed_at FROM jobs c
             WHERE c.kind = $1 AND c.user_id = u.user_id AND c.claimed_at IS NOT NULL
             ORDER BY c.claimed_at DESC LIMIT 1) AS served
        FROM users u WHERE u.user_id IS NOT NULL)
    SELECT j.id, j.status AS prev_status
    FROM turns t
    CROSS JOIN LATERAL (
        SELECT q.id FROM jobs q
        WHERE q.kind = $1 AND q.status = 'queued' AND q.run_after <= now()
          AND q.user_id = t.user_id
        ORDER BY q.run_after, q.created_at LIMIT 4) c
    JOIN jobs j ON j.id = c.id
    WHERE j.status = 'queued' AND j.run_after <= now()
    ORDER BY t.running, t.served NULLS FIRST, j.run_after, j.created_at
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED";

/// The fair claim statement, for `EXPLAIN` in tests.
#[doc(hidden)]
pub fn claim_plan_sql() -> String {
    claim_sql(FAIR_NEXT)
}

fn claim_sql(next: &str) -> String {
    let returning = COLUMNS
        .split(", ")
        .map(|c| format!("j.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH next AS ({next})
         UPDATE jobs j SET status = 'running', lease_owner = $2,
            lease_expires_at = clock_timestamp() + make_interval(secs => $3),
            claimed_at = clock_timestamp(), updated_at = clock_timestamp()
         FROM next WHERE j.id = next.id
         RETURNING next.prev_status, {returning}"
    )
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
                    lease_expires_at = NULL, updated_at = clock_timestamp()
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
                    updated_at = clock_timestamp()
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
                    run_after = now(), updated_at = clock_timestamp()
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
