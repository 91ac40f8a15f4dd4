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

mod backfill;
mod config;
mod embed;
mod failure;
mod finish;
mod job;
mod preempt;
mod slot;
mod wake;

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::Publisher;

pub use config::{WorkerConfig, owner_id, pool_size};
pub use failure::{JobError, LEASE_LAPSED};

/// Runs the worker's slots until `shutdown` is cancelled, then waits for
/// each to finish or hand back its job. Database outages are waited out,
/// never fatal.
pub async fn run(pool: Pool, events: Publisher, cfg: WorkerConfig, shutdown: CancellationToken) {
    let kind = cfg.kind.as_str();
    let listen_shutdown = shutdown.child_token();
    let listening = wake::listen(&cfg.listen_url, cfg.kinds(), listen_shutdown.clone());
    if let Some(embedder) = &cfg.embedder {
        backfill::spawn(
            pool.clone(),
            events.clone(),
            &cfg,
            embedder,
            shutdown.clone(),
        );
    }
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
