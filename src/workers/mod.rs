//! The parse and ingest workers. Each runs as its own OS process
//! (`ragctl worker parse|ingest`), any number side by side on any host,
//! each with `--concurrency` slots (`slot.rs`) that claim and work jobs on
//! their own, under lease owners of their own (`{worker id}#{slot}`).
//!
//! A slot wakes on a NOTIFY of `rag_jobs` (one LISTEN connection per
//! process, `wake.rs`) or its fallback poll, claims a job under a lease it
//! keeps renewing, does the work, and commits the result and the job's new
//! state in one transaction. Only then does it publish the events:
//! realtime never holds up or rolls back the work.
//!
//! Parsing runs in a child process under limits ([`rag::sandbox`]); a failure
//! is classified once ([`JobError`]): transient ones are retried with
//! backoff; deterministic ones fail the job at once, unless
//! `--retry-policy all` retries them too.

mod failure;
mod finish;
mod preempt;
mod slot;
mod wake;

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::db::DbError;
use crate::db::documents::{self, Document};
use crate::db::jobs::{self, Job, JobKind};
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
    /// Lease owner: the worker id ([`owner_id`]: host, pid, kind and a
    /// random suffix) as given to [`run`]; `{worker id}#{slot}` in a slot.
    pub owner: String,
    /// Slots of this process (`--concurrency`), at least 1.
    pub concurrency: usize,
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

impl WorkerConfig {
    /// The configuration of slot `n`: its own lease owner.
    fn for_slot(&self, n: usize) -> WorkerConfig {
        WorkerConfig {
            owner: format!("{}#{n}", self.owner),
            ..self.clone()
        }
    }
}

/// The worker id: `{host}:{pid}:{kind}:{suffix8}`. Lease owners add
/// `#{slot}`, so the part before the last `#` names the process.
pub fn owner_id(kind: JobKind) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let suffix = Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{kind}:{}", std::process::id(), &suffix[..8])
}

/// Connections a worker process with `concurrency` slots may need at once:
/// each slot's job and its lease renewal, plus a publish and a look at the
/// queue's next due job.
pub fn pool_size(concurrency: usize) -> usize {
    2 * concurrency + 2
}

/// Runs the worker's slots until `shutdown` is cancelled, then waits for
/// each to finish or hand back its job. Database outages are waited out,
/// never fatal.
pub async fn run(pool: Pool, events: Publisher, cfg: WorkerConfig, shutdown: CancellationToken) {
    let kind = cfg.kind.as_str();
    let listen_shutdown = shutdown.child_token();
    let listening = wake::listen(&cfg.listen_url, cfg.kind, listen_shutdown.clone());
    tracing::info!(owner = %cfg.owner, kind, slots = cfg.concurrency, "worker started");
    let mut slots = Slots::default();
    let new_slot = |n: usize| slot::Slot {
        pool: pool.clone(),
        events: events.clone(),
        cfg: cfg.for_slot(n),
        wake: listening.wake.clone(),
    };
    for n in 0..cfg.concurrency.max(1) {
        slots.start(n, new_slot(n), Duration::ZERO, &shutdown);
    }
    // A slot ends on shutdown only; a panic is a bug: the process keeps its
    // other slots and starts that one again (after a pause, in case it
    // panics at once again).
    while let Some(crashed) = slots.next_crash().await {
        if !shutdown.is_cancelled() {
            tracing::error!(slot = crashed, "a worker slot crashed; restarting it");
            slots.start(
                crashed,
                new_slot(crashed),
                Duration::from_secs(1),
                &shutdown,
            );
        }
    }
    listen_shutdown.cancel();
    let _ = listening.listen_task.await;
    listening.wake_task.abort();
    tracing::info!(owner = %cfg.owner, "worker stopped");
}

/// The slot tasks, each known by its number.
#[derive(Default)]
struct Slots {
    tasks: JoinSet<()>,
    numbers: HashMap<tokio::task::Id, usize>,
}

impl Slots {
    fn start(&mut self, n: usize, slot: slot::Slot, after: Duration, shutdown: &CancellationToken) {
        let shutdown = shutdown.clone();
        let task = self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(after) => {}
            }
            slot::run(slot, shutdown).await
        });
        self.numbers.insert(task.id(), n);
    }

    /// Waits for a slot that panicked and returns its number; `None` once
    /// every slot has ended.
    async fn next_crash(&mut self) -> Option<usize> {
        loop {
            match self.tasks.join_next_with_id().await? {
                Ok((id, ())) => drop(self.numbers.remove(&id)),
                Err(e) => {
                    if let Some(n) = self.numbers.remove(&e.id()) {
                        tracing::error!(error = %e, slot = n, "worker slot task failed");
                        return Some(n);
                    }
                }
            }
        }
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
