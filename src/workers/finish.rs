//! Recording an attempt's end: the result and the job's new state in one
//! transaction, and the events that announce them, published after commit
//! by the caller.

use deadpool_postgres::{GenericClient, Pool};

use super::config::WorkerConfig;
use super::failure::JobError;
use crate::db::DbError;
use crate::db::documents::{self, Document};
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

/// Commits the result; returns the events to publish and the job it
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
    let (doc, next) = match outcome {
        Outcome::Parsed(text) => store_text(&tx, cfg, &done, &text).await?,
        Outcome::Chunks(chunks) => (store_chunks(&tx, &done, &chunks).await?, None),
    };
    tx.commit().await?;
    let mut out: Published = vec![Outgoing::new(job.user_id, &JobStatusUpdated::from(&done))];
    if let Some(doc) = &doc {
        out.push(Outgoing::new(
            job.user_id,
            &DocumentStatusUpdated::from(doc),
        ));
    }
    if let Some(next) = &next {
        out.push(Outgoing::new(job.user_id, &JobStatusUpdated::from(next)));
    }
    Ok((out, next))
}

/// Stores the parsed text, marks the document `parsed` and queues its
/// ingest job; nothing more if the document is gone.
async fn store_text(
    tx: &impl GenericClient,
    cfg: &WorkerConfig,
    done: &Job,
    text: &str,
) -> Result<(Option<Document>, Option<Job>), DbError> {
    texts::put(tx, done.document_id, text).await?;
    let parsed = DocumentStatus::Parsed;
    let Some((doc, _)) = documents::set_status(tx, done.document_id, parsed, None).await? else {
        return Ok((None, None));
    };
    let (kind, retries) = (JobKind::Ingest, done.max_retries);
    let next = jobs::enqueue(tx, doc.id, doc.user_id, kind, retries, cfg.embargo).await?;
    Ok((Some(doc), Some(next)))
}

/// Replaces the document's chunks and marks it `ingested`.
async fn store_chunks(
    tx: &impl GenericClient,
    done: &Job,
    chunks: &[String],
) -> Result<Option<Document>, DbError> {
    chunks::replace(tx, done.document_id, done.user_id, chunks).await?;
    let ingested = DocumentStatus::Ingested;
    let doc = documents::set_status(tx, done.document_id, ingested, None).await?;
    Ok(doc.map(|(d, _)| d))
}

pub(super) async fn finish_failure(
    pool: &Pool,
    cfg: &WorkerConfig,
    job: &Job,
    error: &JobError,
) -> Result<Published, DbError> {
    let message: String = error.to_string().chars().take(1000).collect();
    let retry = cfg.retry_policy.retries(error.is_transient());
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
