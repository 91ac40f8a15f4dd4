//! The parse and ingest workers. Each runs as its own OS process
//! (`ragctl worker parse|ingest`), any number side by side on any host.
//!
//! A worker wakes on a NOTIFY of `rag_jobs` (or its fallback poll), claims a
//! job under a lease it keeps renewing, does the work, and commits the
//! result and the job's new state in one transaction. Only then does it
//! publish the events: realtime never holds up or rolls back the work.
//!
//! Parsing runs in a child process under limits ([`rag::sandbox`]); a failure
//! is classified once ([`JobError`]): transient ones are retried with
//! backoff; deterministic ones fail the job at once, unless
//! `--retry-policy all` retries them too.

mod failure;
mod finish;
mod preempt;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::RetryPolicy;
use crate::db::DbError;
use crate::db::documents::{self, Document};
use crate::db::jobs::{self, JOBS_CHANNEL, Job, JobKind};
use crate::db::listener::{self, ListenItem, ListenerConfig};
use crate::db::status::DocumentStatus;
use crate::db::{blobs, texts};
use crate::events::{DocumentStatusUpdated, JobStatusUpdated, Publisher};
use crate::rag;
use crate::rag::sandbox::Limits;

pub use failure::JobError;
pub use finish::LEASE_LAPSED;
use finish::{Outcome, finish_failure, finish_success, release};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub kind: JobKind,
    /// Lease owner id: host, pid and a random suffix.
    pub owner: String,
    pub lease: Duration,
    pub poll: Duration,
    pub retry_backoff: Duration,
    pub chunk_size: usize,
    pub chunk_overlap: usize,
    pub listen_url: String,
    /// How long a job in progress may run on after SIGTERM before it is
    /// handed back to the queue.
    pub shutdown_grace: Duration,
    /// See [`jobs::enqueue`]: how long a job queued here waits for its events.
    pub embargo: Duration,
    /// Fault injection for crash tests: sleep this long inside each job.
    pub job_delay: Duration,
    /// Bounds of the parser child process.
    pub parse_limits: Limits,
    /// Which failures are retried (`--retry-policy`).
    pub retry_policy: RetryPolicy,
}

pub fn owner_id(kind: JobKind) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let suffix = Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{kind}:{}", std::process::id(), &suffix[..8])
}

/// Runs one worker until `shutdown` is cancelled. Database outages are
/// waited out, never fatal.
pub async fn run(pool: Pool, events: Publisher, cfg: WorkerConfig, shutdown: CancellationToken) {
    let kind = cfg.kind.as_str();
    let wake = Arc::new(Notify::new());
    let listen_shutdown = shutdown.child_token();
    let (listen_task, wake_task) = listen_for_work(&cfg, wake.clone(), listen_shutdown.clone());
    tracing::info!(owner = %cfg.owner, kind, "worker started");
    let mut idle_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        let claimed = match pool.get().await {
            Ok(client) => jobs::claim(&client, cfg.kind, &cfg.owner, cfg.lease.as_secs_f64()).await,
            Err(e) => Err(DbError::from(e)),
        };
        match claimed {
            Ok(Some(claimed)) if claimed.reclaimed => {
                idle_backoff.reset();
                take_over(&pool, &events, &cfg, &claimed.job).await;
            }
            Ok(Some(claimed)) => {
                idle_backoff.reset();
                let span = tracing::info_span!("job", job_id = %claimed.job.id, kind, document_id = %claimed.job.document_id);
                process(&pool, &events, &cfg, claimed.job, &shutdown)
                    .instrument(span)
                    .await;
            }
            Ok(None) => idle(&pool, &cfg, &wake, &shutdown).await,
            Err(e) => {
                let delay = idle_backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot claim jobs; database unavailable?");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    listen_shutdown.cancel();
    let _ = listen_task.await;
    wake_task.abort();
    tracing::info!(owner = %cfg.owner, "worker stopped");
}

/// LISTENs on the jobs channel and wakes the loop for jobs of this kind.
fn listen_for_work(
    cfg: &WorkerConfig,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let (queue_tx, mut queue_rx) = mpsc::channel::<ListenItem>(64);
    let (_handle, listen_task) = listener::spawn(
        ListenerConfig::new(
            &cfg.listen_url,
            &format!("ragctl-worker-{}", cfg.kind),
            &[JOBS_CHANNEL],
        ),
        queue_tx,
        shutdown,
    );
    let kind = cfg.kind.as_str();
    let wake_task = tokio::spawn(async move {
        while let Some(item) = queue_rx.recv().await {
            match item {
                ListenItem::Notification(n) if n.payload == kind => wake.notify_one(),
                // After a gap we may have missed a wake-up: look anyway.
                ListenItem::Gap(_) => wake.notify_one(),
                ListenItem::Notification(_) => {}
            }
        }
    });
    (listen_task, wake_task)
}

/// No due job: a retry in backoff has no NOTIFY to announce it, so sleep
/// until the earliest due job, the poll interval, or a wake-up.
async fn idle(pool: &Pool, cfg: &WorkerConfig, wake: &Notify, shutdown: &CancellationToken) {
    let nap = match pool.get().await {
        Ok(c) => jobs::next_due_in(&c, cfg.kind).await.ok().flatten(),
        Err(_) => None,
    }
    .map_or(cfg.poll, |due| due.min(cfg.poll));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = wake.notified() => {}
        _ = tokio::time::sleep(nap) => {}
    }
}

/// A job whose lease ran out: the attempt that held it ended without a
/// result (its worker died, or lost the database for a whole lease). It
/// counts as a failed attempt, so that a file that kills its worker ends
/// `failed` after the retries instead of taking workers down forever.
async fn take_over(pool: &Pool, events: &Publisher, cfg: &WorkerConfig, job: &Job) {
    tracing::warn!(job_id = %job.id, "took over a job whose lease ran out");
    metrics::counter!("ragctl_jobs_reclaimed_total", "kind" => cfg.kind.as_str()).increment(1);
    match finish_failure(pool, cfg, job, &JobError::LeaseLapsed).await {
        Ok(published) => {
            for out in published {
                events.emit_outgoing(out).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "could not record the lapsed attempt"),
    }
}

async fn process(
    pool: &Pool,
    events: &Publisher,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &CancellationToken,
) {
    events
        .emit_payload(job.user_id, &JobStatusUpdated::from(&job))
        .await;
    mark_working(pool, events, cfg, &job).await;
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
async fn mark_working(pool: &Pool, events: &Publisher, cfg: &WorkerConfig, job: &Job) {
    let working = cfg.kind.working_status();
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
/// worker owns the job.
fn spawn_renewer(
    pool: &Pool,
    cfg: &WorkerConfig,
    job: &Job,
    lost: CancellationToken,
) -> JoinHandle<()> {
    let (pool, owner) = (pool.clone(), cfg.owner.clone());
    let (id, lease) = (job.id, cfg.lease);
    tokio::spawn(async move {
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
    })
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
    match cfg.kind {
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
            Ok(Outcome::Chunks(chunks))
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
