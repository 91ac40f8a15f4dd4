//! One attempt at a job, in a slot: announce it, mark the document,
//! keep the lease, watch for preemption, do the work, record the result.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::config::WorkerConfig;
use super::embed;
use super::failure::JobError;
use super::finish::{Outcome, finish_failure, finish_success, release};
use super::preempt;
use crate::db::DbError;
use crate::db::documents::{self, Document};
use crate::db::jobs::{self, Job, JobKind};
use crate::db::status::DocumentStatus;
use crate::db::{blobs, texts};
use crate::events::{DocumentStatusUpdated, JobStatusUpdated, Publisher};
use crate::rag;

pub(super) async fn process(
    pool: &Pool,
    events: &Publisher,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &CancellationToken,
) {
    events
        .emit_payload(job.user_id, &JobStatusUpdated::from(&job))
        .await;
    mark_working(pool, events, &job).await;
    // Renew the lease while the work runs; losing it, or being handed back
    // to a starving user (`preempted` is `lost`'s parent), cancels the work.
    let preempted = CancellationToken::new();
    let lost = preempted.child_token();
    let renewer = spawn_renewer(pool, cfg, &job, lost.clone());
    let watcher = preempt::spawn_watcher(pool, events, cfg, &job, preempted.clone());
    let work = work(pool, cfg, &job);
    tokio::pin!(work);
    let result = tokio::select! {
        r = &mut work => Some(r),
        _ = lost.cancelled() => None,
        _ = shutdown.cancelled() => {
            tracing::info!(grace = ?cfg.shutdown_grace, "shutting down; letting the job finish");
            tokio::select! {
                r = &mut work => Some(r),
                _ = lost.cancelled() => None,
                _ = tokio::time::sleep(cfg.shutdown_grace) => {
                    release(pool, events, cfg, &job).await;
                    None
                }
            }
        }
    };
    renewer.abort();
    preempt::stop(watcher, &preempted).await;
    if let Some(result) = result {
        record(pool, events, cfg, &job, result).await;
    }
}

/// Sets the document to the kind's working status (`parsing`, `ingesting`).
async fn mark_working(pool: &Pool, events: &Publisher, job: &Job) {
    let Some(working) = job.kind.working_status() else {
        return;
    };
    match set_document_status(pool, job.document_id, working, None).await {
        Ok(Some((doc, true))) => {
            events
                .emit_payload(doc.user_id, &DocumentStatusUpdated::from(&doc))
                .await
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not mark document {working}"),
    }
}

/// Renews the job's lease every third of it; cancels `lost` once another
/// worker owns the job. Stops when dropped, so that a slot that panics
/// stops renewing and its job's lease runs out.
fn spawn_renewer(
    pool: &Pool,
    cfg: &WorkerConfig,
    job: &Job,
    lost: CancellationToken,
) -> AbortOnDropHandle<()> {
    let (pool, owner) = (pool.clone(), cfg.owner.clone());
    let (id, lease) = (job.id, cfg.lease);
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let renewed = match pool.get().await {
                Ok(c) => jobs::renew(&c, id, &owner, lease.as_secs_f64()).await,
                Err(e) => Err(e.into()),
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job_id = %id, "lease lost to another worker; abandoning");
                    lost.cancel();
                    return;
                }
                // A blip: keep trying until the lease itself runs out.
                Err(e) => tracing::warn!(job_id = %id, error = %e, "lease renewal failed"),
            }
        }
    }))
}

/// Commits the attempt's result, publishes its events, then starts the
/// job it queued next, if any.
async fn record(
    pool: &Pool,
    events: &Publisher,
    cfg: &WorkerConfig,
    job: &Job,
    result: Result<Outcome, JobError>,
) {
    let finished = match result {
        Ok(outcome) => finish_success(pool, cfg, job, outcome).await,
        Err(error) => finish_failure(pool, cfg, job, &error)
            .await
            .map(|p| (p, None)),
    };
    match finished {
        Ok((published, next)) => {
            for out in published {
                events.emit_outgoing(out).await;
            }
            if let (Some(next), Ok(client)) = (next, pool.get().await) {
                jobs::start(&client, &next).await;
            }
        }
        // The lease will run out and another attempt will pick it up.
        Err(e) => tracing::error!(error = %e, "could not record the job's result"),
    }
}

/// The work itself; an `Err` is what is recorded on the job.
async fn work(pool: &Pool, cfg: &WorkerConfig, job: &Job) -> Result<Outcome, JobError> {
    if !cfg.job_delay.is_zero() {
        tokio::time::sleep(cfg.job_delay).await;
    }
    let client = pool.get().await?;
    let gone = || JobError::Document("document no longer exists".into());
    match job.kind {
        JobKind::Parse => {
            let doc = documents::get(&client, job.user_id, job.document_id)
                .await?
                .ok_or_else(gone)?;
            let bytes = blobs::read(&client, job.document_id)
                .await?
                .ok_or_else(|| JobError::Document("uploaded bytes are missing".into()))?;
            drop(client);
            // In a child process: a hostile file can exhaust or crash only it.
            let text = rag::sandbox::extract(&bytes, &doc.mime_type, &cfg.parse_limits)
                .await
                .inspect_err(|e| {
                    metrics::counter!("ragctl_parse_failures_total", "reason" => e.label())
                        .increment(1)
                })?;
            Ok(Outcome::Parsed(text))
        }
        JobKind::Ingest => {
            let text = texts::get(&client, job.document_id).await?.ok_or_else(|| {
                JobError::Document("no parsed text for this document; parse it first".into())
            })?;
            drop(client);
            let (size, overlap) = (cfg.chunk_size, cfg.chunk_overlap);
            let chunks =
                tokio::task::spawn_blocking(move || rag::chunk::chunk_text(&text, size, overlap))
                    .await
                    .map_err(|e| JobError::Chunker(e.to_string()))?;
            if chunks.is_empty() {
                return Err(JobError::Document("document has no text to ingest".into()));
            }
            let vectors = embed::at_ingest(cfg.embedder.as_ref(), &chunks).await;
            Ok(Outcome::Chunks(chunks, vectors))
        }
        JobKind::Embed => {
            let embedder = cfg.embedder.as_ref().ok_or_else(|| {
                JobError::Document("this worker has no embedder for embed jobs".into())
            })?;
            embed::missing(&client, embedder, job.document_id).await
        }
    }
}

async fn set_document_status(
    pool: &Pool,
    id: Uuid,
    status: DocumentStatus,
    error: Option<&str>,
) -> Result<Option<(Document, bool)>, DbError> {
    let client = pool.get().await?;
    documents::set_status(&client, id, status, error).await
}
