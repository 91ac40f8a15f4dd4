//! Recording an attempt's end: the result and the job's new state in one
//! transaction, and the events that announce them, published after commit
//! by the caller.

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use super::config::WorkerConfig;
use super::failure::JobError;
use crate::db::DbError;
use crate::db::documents::{self, Document};
use crate::db::jobs::{self, Job, JobKind};
use crate::db::status::{DocumentStatus, JobStatus};
use crate::db::{chunks, texts, vectors};
use crate::events::{DocumentStatusUpdated, JobStatusUpdated, Outgoing, Publisher};

/// What a finished attempt produced.
pub(super) enum Outcome {
    Parsed(String),
    Chunks(Vec<String>, Vectors),
    /// An embed job's vectors, for the chunks `ids`.
    Embedded {
        model: String,
        ids: Vec<Uuid>,
        vecs: Vec<Vec<f32>>,
    },
}

/// The vectors of an ingest's chunks.
pub(super) enum Vectors {
    NoEmbedder,
    Made {
        model: String,
        vecs: Vec<Vec<f32>>,
    },
    /// The embedder failed: an embed job fills them in later.
    Failed,
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
    let (mut doc, mut next, mut later) = (None, None, None);
    match outcome {
        Outcome::Parsed(text) => (doc, next) = store_text(&tx, cfg, &done, &text).await?,
        Outcome::Chunks(chunks, vectors) => {
            (doc, later) = store_chunks(&tx, cfg, &done, &chunks, vectors).await?
        }
        Outcome::Embedded { model, ids, vecs } => {
            vectors::hold_for_result(&tx).await?;
            vectors::put_chunks(&tx, &model, &ids, &vecs).await?;
        }
    };
    tx.commit().await?;
    let mut out: Published = vec![Outgoing::new(job.user_id, &JobStatusUpdated::from(&done))];
    // Due after a backoff: announced, but not started at once.
    if let Some(later) = &later {
        out.push(Outgoing::new(job.user_id, &JobStatusUpdated::from(later)));
    }
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

/// Replaces the document's chunks and their vectors and marks it
/// `ingested`; chunks the embedder failed on get an embed job, due after
/// the retry backoff (returned, to announce).
async fn store_chunks(
    tx: &impl GenericClient,
    cfg: &WorkerConfig,
    done: &Job,
    chunks: &[String],
    made: Vectors,
) -> Result<(Option<Document>, Option<Job>), DbError> {
    chunks::replace(tx, done.document_id, done.user_id, chunks).await?;
    let later = match made {
        Vectors::Made { model, vecs } => {
            vectors::put_document(tx, done.document_id, &model, &vecs).await?;
            None
        }
        Vectors::Failed => {
            let after = cfg.retry_backoff.as_secs_f64();
            vectors::enqueue_one(tx, done.document_id, cfg.max_retries, after).await?
        }
        Vectors::NoEmbedder => None,
    };
    let ingested = DocumentStatus::Ingested;
    let doc = documents::set_status(tx, done.document_id, ingested, None).await?;
    Ok((doc.map(|(d, _)| d), later))
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
    // A failed embed job leaves the document `ingested`: BM25 still finds
    // it, and the next worker start queues its backfill again.
    let doc = if after.status == JobStatus::Failed && job.kind != JobKind::Embed {
        documents::set_status(&tx, job.document_id, DocumentStatus::Error, Some(&message))
            .await?
            .map(|(d, _)| d)
    } else {
        None
    };
    tx.commit().await?;
    metrics::counter!("ragctl_job_failures_total", "kind" => job.kind.as_str(), "final" => (after.status == JobStatus::Failed).to_string()).increment(1);
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
