//! The bridge heals its own gaps. When the listener reconnects (or its
//! queue overflowed), notifications committed in the gap are gone, but the
//! rows they described are not: one snapshot reads every row changed in the
//! gap window for every user with a socket on this process (one query per
//! table for all of them), and their current states go to the sockets as
//! ordinary Phase 5 frames. `realtime.resync` goes out only when that
//! cannot complete: more rows than `--max-heal`, or a failed query.
//!
//! The router runs the heal before it routes anything queued after the
//! gap, so no later live event is overtaken by an older healed state; and
//! for a while after, a queued live event whose row the heal already sent
//! at the same or a newer stamp is dropped (`superseded`), so a client
//! never steps back to a state it has passed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::hub::Hub;
use crate::db::changes::{self, Changes};
use crate::db::listener::Gap;
use crate::events::Envelope;
use crate::events::ops::{HEAL_OP, HealOutcome, HealReport, OPS_CHANNEL, OPS_VERSION};
use crate::events::resume::{Sent, catch_up_states};

/// How long the states a heal sent keep superseding older live events:
/// longer than any notification can sit in the listener's queue.
const SUPERSEDE_FOR: Duration = Duration::from_secs(60);

/// A heal's query and the report's publish each get this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `origin` of healed envelopes (never shown to clients).
const ORIGIN: &str = "heal";

#[derive(Clone)]
pub struct HealConfig {
    /// The API's pool: the heal's snapshot and the report's publish.
    pub pool: Pool,
    /// Most state frames one heal pushes; 0 turns healing off (every gap
    /// is a `realtime.resync`, as before healing existed).
    pub max_rows: usize,
    /// The event channel (named in the report).
    pub channel: String,
    /// `host:pid`, named in the report.
    pub instance: String,
    /// Waited before each heal's read (fault injection for tests; 0).
    pub delay: Duration,
}

impl std::fmt::Debug for HealConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealConfig")
            .field("max_rows", &self.max_rows)
            .field("channel", &self.channel)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// What one run found and did, before it becomes a report.
struct Run {
    users: usize,
    sockets: usize,
    rows: usize,
    frames: usize,
    to: Option<chrono::DateTime<Utc>>,
    outcome: HealOutcome,
    error: Option<String>,
}

impl Run {
    fn empty(users: usize, sockets: usize, outcome: HealOutcome) -> Run {
        Run {
            users,
            sockets,
            rows: 0,
            frames: 0,
            to: None,
            outcome,
            error: None,
        }
    }
}

pub(super) struct Healer {
    cfg: Option<HealConfig>,
    hub: Hub,
    /// What the last heal sent, and until when it supersedes live events.
    sent: Option<(Sent, Instant)>,
    /// A report is being published: the next one waits for no one and is
    /// dropped (counted) instead.
    publishing: Arc<AtomicBool>,
    superseded: metrics::Counter,
}

impl Healer {
    /// `cfg` is `None` when there is no pool to heal from (every gap is a
    /// resync).
    pub(super) fn new(cfg: Option<HealConfig>, hub: Hub) -> Healer {
        Healer {
            cfg,
            hub,
            sent: None,
            publishing: Arc::new(AtomicBool::new(false)),
            superseded: metrics::counter!("ragctl_bridge_heal_superseded_total"),
        }
    }

    /// Whether a live event adds nothing to what the last heal sent.
    pub(super) fn superseded(&mut self, env: &Envelope) -> bool {
        let Some((sent, until)) = &self.sent else {
            return false;
        };
        if Instant::now() > *until {
            self.sent = None;
            return false;
        }
        let covered = sent.covers(env);
        if covered {
            self.superseded.increment(1);
        }
        covered
    }

    /// Heals `gap`: pushes the states of the rows changed in it to the
    /// sockets of their users, or resyncs them when that cannot complete.
    pub(super) async fn heal(&mut self, gap: Gap) {
        let started = Instant::now();
        let run = match self.cfg.clone() {
            Some(cfg) if cfg.max_rows > 0 => self.run(&cfg, gap).await,
            _ => {
                let stats = self.hub.stats();
                Run::empty(stats.users, stats.sockets, HealOutcome::Disabled)
            }
        };
        if run.outcome.resynced() {
            // Clients that opted in refetch through REST.
            match gap.user {
                Some(user) => self
                    .hub
                    .resync_users(&HashSet::from([user]), gap.reason.as_str()),
                None => self.hub.resync(gap.reason.as_str()),
            }
        }
        let elapsed = started.elapsed();
        record(&run, elapsed);
        metrics::counter!("ragctl_bridge_heals_by_cause_total", "cause" => gap.reason.as_str())
            .increment(1);
        tracing::info!(
            reason = gap.reason.as_str(), from = %gap.since, users = run.users,
            rows = run.rows, frames = run.frames, outcome = run.outcome.as_str(),
            error = run.error.as_deref().unwrap_or(""), ms = elapsed.as_secs_f64() * 1e3,
            "bridge heal"
        );
        if let Some(cfg) = &self.cfg {
            self.publish(cfg, report(cfg, gap, &run, elapsed));
        }
    }

    async fn run(&mut self, cfg: &HealConfig, gap: Gap) -> Run {
        let (users, sockets) = match gap.user {
            // One user's gap (an envelope too large for NATS).
            Some(user) => match self.hub.sockets_of(user) {
                0 => (Vec::new(), 0),
                n => (vec![user], n),
            },
            None => self.hub.users(),
        };
        if users.is_empty() {
            return Run::empty(0, 0, HealOutcome::NoSockets);
        }
        let mut run = Run::empty(users.len(), sockets, HealOutcome::Healed);
        tokio::time::sleep(cfg.delay).await;
        let changes = match read(&cfg.pool, &users, gap, cfg.max_rows).await {
            Ok(c) => c,
            Err(e) => {
                run.outcome = HealOutcome::Failed;
                run.error = Some(format!("{e:#}"));
                return run;
            }
        };
        run.rows = changes.rows();
        run.to = changes.read_at;
        let mut states = catch_up_states(&changes, gap.since);
        if states.len() > cfg.max_rows {
            states.truncate(cfg.max_rows);
            run.outcome = HealOutcome::Overflow;
        }
        run.frames = states.len();
        let mut sent = Sent::default();
        for s in &states {
            sent.note(s.key, s.at);
        }
        let envs: Vec<Envelope> = states
            .into_iter()
            .map(|s| s.into_envelope(ORIGIN))
            .collect();
        self.hub.deliver_heal(&envs);
        self.sent = Some((sent, Instant::now() + SUPERSEDE_FOR));
        run
    }

    /// Publishes the report on the ops channel without making the router
    /// wait; one at a time, the rest dropped and counted.
    fn publish(&self, cfg: &HealConfig, report: HealReport) {
        if self.publishing.swap(true, Ordering::AcqRel) {
            metrics::counter!("ragctl_bridge_heal_reports_dropped_total").increment(1);
            return;
        }
        let (pool, busy) = (cfg.pool.clone(), self.publishing.clone());
        tokio::spawn(async move {
            let sent = tokio::time::timeout(QUERY_TIMEOUT, async {
                let client = pool.get().await?;
                client
                    .execute(
                        "SELECT pg_notify($1, $2)",
                        &[&OPS_CHANNEL, &report.to_json()],
                    )
                    .await?;
                anyhow::Ok(())
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                metrics::counter!("ragctl_bridge_heal_reports_dropped_total").increment(1);
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// One snapshot of every row of `users` changed since the gap began; one
/// more row per table than fits tells an overflow.
async fn read(pool: &Pool, users: &[Uuid], gap: Gap, max: usize) -> anyhow::Result<Changes> {
    tokio::time::timeout(QUERY_TIMEOUT, async {
        let mut client = pool.get().await?;
        Ok(changes::for_users(&mut client, users, gap.since, max as i64 + 1).await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {QUERY_TIMEOUT:?}"))?
}

fn record(run: &Run, elapsed: Duration) {
    let outcome = run.outcome.as_str();
    metrics::counter!("ragctl_bridge_heals_total", "outcome" => outcome).increment(1);
    metrics::histogram!("ragctl_bridge_heal_seconds").record(elapsed.as_secs_f64());
    metrics::counter!("ragctl_bridge_heal_rows_total").increment(run.rows as u64);
    metrics::counter!("ragctl_bridge_heal_frames_total").increment(run.frames as u64);
}

fn report(cfg: &HealConfig, gap: Gap, run: &Run, elapsed: Duration) -> HealReport {
    HealReport {
        v: OPS_VERSION,
        op: HEAL_OP.into(),
        channel: cfg.channel.clone(),
        instance: cfg.instance.clone(),
        reason: gap.reason.as_str().into(),
        from: gap.since,
        to: run.to,
        users: run.users,
        sockets: run.sockets,
        rows: run.rows,
        frames: run.frames,
        duration_ms: elapsed.as_secs_f64() * 1e3,
        outcome: run.outcome,
        error: run.error.clone(),
        at: Utc::now(),
    }
}

/// `host:pid` of this process, for reports.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}
