//! A worker's configuration, and the names its slots hold leases under.

use std::time::Duration;

use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::db::jobs::JobKind;
use crate::embed::Embedder;
use crate::rag::sandbox::Limits;

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
    /// The ingest worker's embedder (`--embed-model` / `--embed-url`): it
    /// embeds chunks at ingest and runs `embed` jobs (backfill).
    pub embedder: Option<Embedder>,
    /// Retries of the `embed` jobs this worker queues (`--max-retries`).
    pub max_retries: i32,
}

impl WorkerConfig {
    /// The configuration of slot `n`: its own lease owner.
    pub(super) fn for_slot(&self, n: usize) -> WorkerConfig {
        WorkerConfig {
            owner: format!("{}#{n}", self.owner),
            ..self.clone()
        }
    }

    /// The kinds this worker's slots claim, in priority order: an ingest
    /// worker with an embedder also runs `embed` jobs, after new ingests.
    pub fn kinds(&self) -> &'static [JobKind] {
        match (self.kind, &self.embedder) {
            (JobKind::Ingest, Some(_)) => &[JobKind::Ingest, JobKind::Embed],
            (JobKind::Parse, _) => &[JobKind::Parse],
            (JobKind::Ingest, None) => &[JobKind::Ingest],
            (JobKind::Embed, _) => &[JobKind::Embed],
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
