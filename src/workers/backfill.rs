//! Backfill: when an ingest worker with an embedder starts, every
//! `ingested` document with chunks lacking a vector for its model id gets
//! an `embed` job, run by the ingest workers' slots like any job (progress
//! in `ragctl queue` and `tap`). Idempotent: at most one pending embed job
//! per document (a partial unique index), so two workers starting at once
//! queue each document once.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use crate::backoff::Backoff;
use crate::db::DbError;
use crate::db::jobs::{self, JobKind};
use crate::db::vectors;
use crate::embed::Embedder;
use crate::events::{JobStatusUpdated, Publisher};

/// Queues the backfill in the background, retrying while the database is
/// unavailable.
pub(super) fn spawn(
    pool: Pool,
    events: Publisher,
    cfg: &WorkerConfig,
    embedder: &Embedder,
    shutdown: CancellationToken,
) {
    let model = embedder.id().to_string();
    let retries = cfg.max_retries;
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match queue(&pool, &events, &model, retries).await {
                Ok(n) => {
                    tracing::info!(documents = n, model, "embedding backfill queued");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot queue the embedding backfill yet"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    });
}

/// Inserts the jobs (embargoed), announces them, then lifts the embargo
/// and wakes the slots, as `jobs::enqueue` and `jobs::start` do.
async fn queue(
    pool: &Pool,
    events: &Publisher,
    model: &str,
    retries: i32,
) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let embargo = events.embargo().as_secs_f64();
    let queued = vectors::enqueue_backfill(&mut client, model, retries, embargo).await?;
    for job in &queued {
        events
            .emit_payload(job.user_id, &JobStatusUpdated::from(job))
            .await;
    }
    if !queued.is_empty() {
        let ids: Vec<_> = queued.iter().map(|j| j.id).collect();
        vectors::start_all(&client, &ids).await?;
        jobs::wake(&client, JobKind::Embed).await;
    }
    Ok(queued.len())
}
