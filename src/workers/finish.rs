//! Recording an attempt's end: the result and the job's new state in one
//! transaction, and the events that announce them, published after commit
//! by the caller.

use deadpool_postgres::Pool;

use super::{JobError, WorkerConfig};
use crate::db::DbError;
use crate::db::documents;
use crate::db::jobs::{self, Job, JobKind};
use crate::db::status::{DocumentStatus, JobStatus};
use crate::db::{chunks, texts};
use crate::events::{DocumentStatusUpdated, JobStatusUpdated, Outgoing, Publisher};

/// What a finished attempt produced.
pub(super) enum Outcome {
    Parsed(String),
    Chunks(Vec<String>),
}

/// The events to publish once the transaction committed.
pub(super) type Published = Vec<Outgoing>;

/// Commits the result; returns the events to publish and the kind of job it
/// queued next, if any.
pub(super) async fn finish_success(
    pool: &Pool,
    cfg: &WorkerConfig,
    job: &Job,
    outcome: Outcome,
) -> Result<(Published, Option<Job>), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(done) = jobs::succeed(&tx, job.id, &cfg.owner).await? else {
        tracing::warn!(job_id = %job.id, "job was taken over before it finished; result discarded");
        return Ok((vec![], None));
    };
    let mut out: Published = vec![Outgoing::new(job.user_id, &JobStatusUpdated::from(&done))];
    let doc = match outcome {
        Outcome::Parsed(text) => {
            texts::put(&tx, job.document_id, &text).await?;
            let doc =
                documents::set_status(&tx, job.document_id, DocumentStatus::Parsed, None).await?;
            if let Some((d, _)) = &doc {
                let next = jobs::enqueue(
                    &tx,
                    d.id,
                    d.user_id,
                    JobKind::Ingest,
                    done.max_retries,
                    cfg.embargo,
                )
                .await?;
                tx.commit().await?;
                out.push(Outgoing::new(job.user_id, &DocumentStatusUpdated::from(d)));
                out.push(Outgoing::new(job.user_id, &JobStatusUpdated::from(&next)));
                return Ok((out, Some(next)));
            }
            tx.commit().await?;
            doc
        }
        Outcome::Chunks(chunks) => {
            chunks::replace(&tx, job.document_id, job.user_id, &chunks).await?;
            let doc =
                documents::set_status(&tx, job.document_id, DocumentStatus::Ingested, None).await?;
            tx.commit().await?;
            doc
        }
    };
    if let Some((doc, _)) = doc {
        out.push(Outgoing::new(
            job.user_id,
            &DocumentStatusUpdated::from(&doc),
        ));
    }
    Ok((out, None))
}

/// The error recorded for an attempt whose lease ran out.
pub const LEASE_LAPSED: &str =
    "the worker running this attempt stopped before finishing (its lease expired)";

pub(super) async fn finish_failure(
    pool: &Pool,
    cfg: &WorkerConfig,
    job: &Job,
    error: &JobError,
) -> Result<Published, DbError> {
    let message: String = error.to_string().chars().take(1000).collect();
    let retry = error.is_transient() || cfg.retry_all_failures;
    tracing::warn!(error = %message, retry, retry_count = job.retry_count, "job attempt failed");
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(after) = jobs::fail(
        &tx,
        job.id,
        &cfg.owner,
        &message,
        jobs::Retry {
            allowed: retry,
            backoff_secs: cfg.retry_backoff.as_secs_f64(),
        },
    )
    .await?
    else {
        tracing::warn!(job_id = %job.id, "job was taken over before it failed; nothing recorded");
        return Ok(vec![]);
    };
    let doc = if after.status == JobStatus::Failed {
        documents::set_status(&tx, job.document_id, DocumentStatus::Error, Some(&message))
            .await?
            .map(|(d, _)| d)
    } else {
        None
    };
    tx.commit().await?;
    metrics::counter!("ragctl_job_failures_total", "kind" => cfg.kind.as_str(), "final" => (after.status == JobStatus::Failed).to_string()).increment(1);
    let mut out: Published = vec![Outgoing::new(job.user_id, &JobStatusUpdated::from(&after))];
    if let Some(doc) = doc {
        out.push(Outgoing::new(
            job.user_id,
            &DocumentStatusUpdated::from(&doc),
        ));
    }
    Ok(out)
}

pub(super) async fn release(pool: &Pool, events: &Publisher, cfg: &WorkerConfig, job: &Job) {
    let released = match pool.get().await {
        Ok(c) => jobs::release(&c, job.id, &cfg.owner).await,
        Err(e) => Err(e.into()),
    };
    match released {
        Ok(Some(j)) => {
            tracing::info!(job_id = %job.id, "job handed back to the queue");
            events
                .emit_payload(j.user_id, &JobStatusUpdated::from(&j))
                .await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "could not hand the job back; its lease will expire")
        }
    }
}
