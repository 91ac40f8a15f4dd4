//! Preemption watcher: while a slot's job is preemptible (its user has an
//! earlier running job of the kind), the slot checks every
//! [`CHECK_EVERY`] whether a starving user needs the slot; if the rule of
//! [`jobs::preempt`] picks this job, it is already back in the queue and
//! the watcher announces it (`job.status_updated`, queued) and cancels
//! `preempted`, so that the slot kills the parse and claims again at once.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use crate::db::jobs::{self, Job};
use crate::events::{JobStatusUpdated, Publisher};

/// How often a slot holding a preemptible job looks for starving users.
/// With [`jobs::STARVING_AFTER`] it bounds how long a waiting user goes
/// without a slot while another user holds two or more (~0.75 s).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Starts watching `job`; `preempted` is cancelled once it was handed back.
pub(super) fn spawn_watcher(
    pool: &Pool,
    events: &Publisher,
    cfg: &WorkerConfig,
    job: &Job,
    preempted: CancellationToken,
) -> JoinHandle<()> {
    let (pool, events) = (pool.clone(), events.clone());
    let (owner, kind, id) = (cfg.owner.clone(), cfg.kind, job.id);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: a short job ends before any check.
        tick.tick().await;
        loop {
            tick.tick().await;
            let checked = match pool.get().await {
                Ok(mut c) => jobs::preempt(&mut c, kind, id, &owner).await,
                Err(e) => Err(e.into()),
            };
            match checked {
                Ok(None) => {}
                Ok(Some(queued)) => {
                    tracing::info!(job_id = %id, "preempted: a starving user needs the slot");
                    preempted.cancel();
                    let event = JobStatusUpdated::from(&queued);
                    events.emit_payload(queued.user_id, &event).await;
                    return;
                }
                // A blip: the next tick tries again; the job keeps running.
                Err(e) => tracing::debug!(job_id = %id, error = %e, "preemption check failed"),
            }
        }
    })
}

/// Ends the watcher; once it preempted, lets it finish announcing the job.
pub(super) async fn stop(watcher: JoinHandle<()>, preempted: &CancellationToken) {
    if preempted.is_cancelled() {
        let _ = watcher.await;
    } else {
        watcher.abort();
    }
}
