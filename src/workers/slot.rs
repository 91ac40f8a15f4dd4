//! One slot of a worker process: a loop that claims a job under its own
//! lease owner (`{worker id}#{slot}`), works it, reports it and hands it
//! back on shutdown, on its own. A worker process runs `--concurrency` of
//! them side by side ([`super::run`]).

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::WorkerConfig;
use super::failure::JobError;
use super::finish::finish_failure;
use super::job::process;
use super::wake::Wake;
use crate::backoff::Backoff;
use crate::db::DbError;
use crate::db::jobs::{self, Claimed, Job};
use crate::events::Publisher;

/// What a slot works with; `cfg.owner` is the slot's own lease owner.
pub(super) struct Slot {
    pub pool: Pool,
    pub events: Publisher,
    pub cfg: WorkerConfig,
    pub wake: Wake,
}

/// Runs the slot until `shutdown` is cancelled; a job in progress then
/// finishes within the grace or is handed back ([`process`]). Database
/// outages are waited out, never fatal.
pub(super) async fn run(mut slot: Slot, shutdown: CancellationToken) {
    let gauge = SlotGauge::new(slot.cfg.kind.as_str());
    let _idle = gauge.idle();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        // Seen before the claim: a wake-up during the claim ends the nap.
        slot.wake.borrow_and_update();
        match claim(&slot).await {
            Ok(Some(claimed)) => {
                backoff.reset();
                let _busy = gauge.busy();
                work_on(&slot, claimed, &shutdown).await;
            }
            Ok(None) => nap(&mut slot, &shutdown).await,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot claim jobs; database unavailable?");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Claims a job of the worker's first kind that has one due (each kind
/// by its own fair claim).
async fn claim(slot: &Slot) -> Result<Option<Claimed>, DbError> {
    let client = slot.pool.get().await?;
    let cfg = &slot.cfg;
    for &kind in cfg.kinds() {
        if let Some(c) = jobs::claim(&client, kind, &cfg.owner, cfg.lease.as_secs_f64()).await? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

async fn work_on(slot: &Slot, claimed: Claimed, shutdown: &CancellationToken) {
    let (pool, events, cfg) = (&slot.pool, &slot.events, &slot.cfg);
    if claimed.reclaimed {
        return take_over(pool, events, cfg, &claimed.job).await;
    }
    let job = claimed.job;
    let span = tracing::info_span!("job", job_id = %job.id, kind = job.kind.as_str(), document_id = %job.document_id, owner = %cfg.owner);
    process(pool, events, cfg, job, shutdown)
        .instrument(span)
        .await;
}

/// No due job: a retry in backoff has no NOTIFY to announce it, so sleep
/// until the earliest due job, the poll interval, or a wake-up.
async fn nap(slot: &mut Slot, shutdown: &CancellationToken) {
    let mut nap = slot.cfg.poll;
    if let Ok(c) = slot.pool.get().await {
        for &kind in slot.cfg.kinds() {
            if let Ok(Some(due)) = jobs::next_due_in(&c, kind).await {
                nap = nap.min(due);
            }
        }
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        // An error means the listener is gone: the poll still runs.
        Ok(()) = slot.wake.changed() => {}
        _ = tokio::time::sleep(nap) => {}
    }
}

/// A job whose lease ran out: the attempt that held it ended without a
/// result (its worker died, or lost the database for a whole lease). It
/// counts as a failed attempt, so that a file that kills its worker ends
/// `failed` after the retries instead of taking workers down forever.
async fn take_over(pool: &Pool, events: &Publisher, cfg: &WorkerConfig, job: &Job) {
    tracing::warn!(job_id = %job.id, owner = %cfg.owner, "took over a job whose lease ran out");
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

/// `ragctl_worker_slots{kind,state}`: this process's slots, busy or idle.
/// A slot counts itself through guards, so a slot that ends, even by a
/// panic, is no longer counted.
struct SlotGauge {
    busy: metrics::Gauge,
    idle: metrics::Gauge,
}

impl SlotGauge {
    fn new(kind: &'static str) -> SlotGauge {
        SlotGauge {
            busy: metrics::gauge!("ragctl_worker_slots", "kind" => kind, "state" => "busy"),
            idle: metrics::gauge!("ragctl_worker_slots", "kind" => kind, "state" => "idle"),
        }
    }

    /// Counts one slot idle while the guard lives.
    fn idle(&self) -> Held {
        Held::new(&self.idle, 1.0)
    }

    /// Moves one idle slot to busy while the guard lives.
    fn busy(&self) -> (Held, Held) {
        (Held::new(&self.busy, 1.0), Held::new(&self.idle, -1.0))
    }
}

/// Adds `by` to a gauge while alive.
struct Held(metrics::Gauge, f64);

impl Held {
    fn new(g: &metrics::Gauge, by: f64) -> Held {
        g.increment(by);
        Held(g.clone(), by)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.decrement(self.1);
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn slots(rendered: &str, state: &str) -> f64 {
        rendered
            .lines()
            .find(|l| l.starts_with("ragctl_worker_slots") && l.contains(state))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {state} line in {rendered}"))
    }

    #[test]
    fn the_gauge_follows_slots_between_idle_and_busy() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = metrics::with_local_recorder(&recorder, || SlotGauge::new("parse"));
        let count = || {
            let r = handle.render();
            (slots(&r, "state=\"busy\""), slots(&r, "state=\"idle\""))
        };
        let (a, b) = (gauge.idle(), gauge.idle());
        assert_eq!(count(), (0.0, 2.0));
        let job = gauge.busy();
        assert_eq!(count(), (1.0, 1.0));
        drop(job);
        assert_eq!(count(), (0.0, 2.0));
        drop((a, b));
        assert_eq!(count(), (0.0, 0.0));
    }
}
