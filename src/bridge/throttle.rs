//! One user's share of the router. Sending an event to a user costs the
//! router one write per socket of that user here, so a user with thousands
//! of sockets asks for thousands of writes per event, and everyone else's
//! events wait behind them. Each user has a token bucket of *frames*
//! (events × the user's sockets here): `--user-frame-rate` per second, up to
//! `--user-frame-burst`.
//!
//! Nothing is dropped silently. An event its user cannot pay for is skipped,
//! and the user is marked *dirty* since the oldest row stamp it skipped
//! (every event's payload carries its row's `updated_at` / `created_at`).
//! While dirty, all of the user's events are skipped (coalesced). Once the
//! bucket is full again, the user is healed from the rows: one snapshot of
//! every row of the user changed since that stamp, pushed as ordinary
//! state frames (the gap heal's machinery) and charged to the bucket. Later
//! live events older than what that heal sent are dropped (superseded),
//! as after a gap heal. The router never waits: the snapshot is read by a
//! task of the bridge's thread, one at a time, and handed back to it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::heal::HealConfig;
use super::hub::Hub;
use crate::db::changes::{self, Changes};
use crate::events::Envelope;
use crate::events::resume::{Sent, State, catch_up_states, state_of};

/// How long a throttle heal's states supersede older live events: longer
/// than any notification can sit in the listener's queue.
const SUPERSEDE_FOR: Duration = Duration::from_secs(60);

/// A throttle heal's query gets this long; a failed one is retried once
/// the user's bucket is full again.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `realtime.resync` reason when a throttled user's heal cannot send
/// everything (more rows than `--max-heal`, or healing is off).
pub const RESYNC_THROTTLED: &str = "throttled";

/// The per-user frame budget; `rate == 0` turns it off.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Frames per second one user's sockets here may be sent.
    pub rate: f64,
    /// Frames one user may be sent at once.
    pub burst: f64,
}

impl ThrottleConfig {
    pub const OFF: ThrottleConfig = ThrottleConfig {
        rate: 0.0,
        burst: 0.0,
    };

    fn on(&self) -> bool {
        self.rate > 0.0
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// The oldest row stamp of an event skipped and not yet healed.
    dirty: Option<DateTime<Utc>>,
    /// The stamp a heal in flight reads from.
    healing: Option<DateTime<Utc>>,
    /// What this user's last heal sent, superseding older live events.
    sent: Option<(Sent, Instant)>,
}

impl Bucket {
    fn new(cfg: &ThrottleConfig, now: Instant) -> Bucket {
        Bucket {
            tokens: cfg.burst,
            at: now,
            dirty: None,
            healing: None,
            sent: None,
        }
    }

    fn refill(&mut self, cfg: &ThrottleConfig, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * cfg.rate).min(cfg.burst);
        self.at = now;
    }

    fn full(&self, cfg: &ThrottleConfig) -> bool {
        self.tokens >= cfg.burst
    }

    /// How many of `events`, each costing `sockets` frames, the bucket pays
    /// for: as many as it holds, and one when it is full even if that one
    /// costs more than the burst (it goes into debt), so a user with more
    /// sockets than the burst still gets its events, at the rate.
    fn afford(&mut self, cfg: &ThrottleConfig, events: usize, sockets: usize) -> usize {
        let fit = (self.tokens.max(0.0) / sockets as f64).floor() as usize;
        let n = if fit == 0 && self.full(cfg) {
            1
        } else {
            fit.min(events)
        };
        self.tokens -= (n * sockets) as f64;
        n
    }

    fn mark(&mut self, at: DateTime<Utc>) {
        self.dirty = Some(self.dirty.map_or(at, |d| d.min(at)));
    }

    /// Nothing here that a fresh bucket would not have.
    fn idle(&self, cfg: &ThrottleConfig, now: Instant) -> bool {
        let refilled = self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * cfg.rate
            >= cfg.burst;
        refilled
            && self.dirty.is_none()
            && self.healing.is_none()
            && self.sent.as_ref().is_none_or(|(_, until)| now > *until)
    }
}

/// A throttle heal's snapshot: the users it is for (each with its own
/// stamp), and the rows, or why there are none.
pub(super) struct HealRead {
    users: Vec<(Uuid, DateTime<Utc>)>,
    rows: anyhow::Result<Changes>,
}

struct Counters {
    over_rate: metrics::Counter,
    coalesced: metrics::Counter,
    superseded: metrics::Counter,
    frames: metrics::Counter,
    dirty: metrics::Gauge,
}

pub(super) struct Throttle {
    cfg: ThrottleConfig,
    heal: Option<HealConfig>,
    buckets: HashMap<Uuid, Bucket>,
    /// Users dirty and not being healed: the candidates of the next heal.
    pending: HashSet<Uuid>,
    c: Counters,
}

impl Throttle {
    /// `heal` is where throttled users are healed from; without it (or
    /// with `--max-heal 0`) they get `realtime.resync` instead.
    pub(super) fn new(cfg: ThrottleConfig, heal: Option<HealConfig>) -> Throttle {
        let throttled = |r: &'static str| metrics::counter!("ragctl_bridge_user_throttled_total", "reason" => r);
        Throttle {
            cfg,
            heal: heal.filter(|h| h.max_rows > 0),
            buckets: HashMap::new(),
            pending: HashSet::new(),
            c: Counters {
                over_rate: throttled("over_rate"),
                coalesced: throttled("coalesced"),
                superseded: metrics::counter!("ragctl_bridge_heal_superseded_total"),
                frames: metrics::counter!("ragctl_bridge_throttle_heal_frames_total"),
                dirty: metrics::gauge!("ragctl_bridge_throttled_users"),
            },
        }
    }

    /// Whether a live event adds nothing to what its user's last throttle
    /// heal sent.
    pub(super) fn superseded(&mut self, env: &Envelope) -> bool {
        let Some(b) = self.buckets.get_mut(&env.user_id) else {
            return false;
        };
        let Some((sent, until)) = &b.sent else {
            return false;
        };
        if Instant::now() > *until {
            b.sent = None;
            return false;
        }
        let covered = sent.covers(env);
        if covered {
            self.c.superseded.increment(1);
        }
        covered
    }

    /// Keeps, in order, the envelopes their users can pay for now; the
    /// others are skipped and their users marked dirty. A user pays for the
    /// first of its events in the batch that fit its bucket (at least one
    /// when the bucket is full), and skips the rest.
    pub(super) fn admit(&mut self, envs: &mut Vec<Envelope>, hub: &Hub) {
        if !self.cfg.on() || envs.is_empty() {
            return;
        }
        let mut per_user: HashMap<Uuid, usize> = HashMap::new();
        for env in envs.iter() {
            *per_user.entry(env.user_id).or_default() += 1;
        }
        let now = Instant::now();
        // How many more of each user's events in this batch may go out.
        let mut allowed: HashMap<Uuid, usize> = HashMap::new();
        for (user, events) in per_user {
            let sockets = hub.sockets_of(user);
            if sockets == 0 {
                continue; // the hub counts it as having no recipient
            }
            let n = self.allow(user, events, sockets, now);
            if n < events {
                allowed.insert(user, n);
            }
        }
        if allowed.is_empty() {
            return;
        }
        envs.retain(|env| self.keep_or_mark(env, &mut allowed));
    }

    /// How many of `events` (each costing `sockets` frames) `user` pays for.
    fn allow(&mut self, user: Uuid, events: usize, sockets: usize, now: Instant) -> usize {
        let cfg = self.cfg;
        let b = self
            .buckets
            .entry(user)
            .or_insert_with(|| Bucket::new(&cfg, now));
        b.refill(&cfg, now);
        if b.dirty.is_some() || b.healing.is_some() {
            self.c.coalesced.increment(events as u64);
            return 0;
        }
        let n = b.afford(&cfg, events, sockets);
        self.c.over_rate.increment((events - n) as u64);
        n
    }

    /// Keeps `env` if its user may still be sent one; marks the user dirty
    /// since the event's row stamp otherwise.
    fn keep_or_mark(&mut self, env: &Envelope, allowed: &mut HashMap<Uuid, usize>) -> bool {
        let Some(left) = allowed.get_mut(&env.user_id) else {
            return true;
        };
        if *left > 0 {
            *left -= 1;
            return true;
        }
        // The contract requires the row's stamp; the event's own time
        // (after its commit, so after the row's) is a fallback only.
        let at = state_of(env).map_or(env.ts, |(_, at)| at.min(env.ts));
        let b = self.buckets.get_mut(&env.user_id).expect("bucket");
        b.mark(at);
        if b.healing.is_none() {
            self.pending.insert(env.user_id);
        }
        false
    }

    fn dirty_users(&self) -> usize {
        self.buckets
            .values()
            .filter(|b| b.dirty.is_some() || b.healing.is_some())
            .count()
    }

    /// Whether a user waits for a heal (checked on a tick by the router).
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts a heal of the dirty users whose bucket is full again, if any:
    /// the snapshot is read by a task, and [`Throttle::finish`] sends it.
    /// Without healing, they get `realtime.resync` at once.
    pub(super) fn start(&mut self, hub: &Hub) -> Option<JoinHandle<HealRead>> {
        let due = self.take_due(hub);
        if due.is_empty() {
            return None;
        }
        let Some(cfg) = self.heal.clone() else {
            self.resync(hub, &due, "disabled");
            for (user, _) in &due {
                if let Some(b) = self.buckets.get_mut(user) {
                    b.healing = None;
                }
            }
            return None;
        };
        Some(tokio::spawn(async move {
            let rows = read(&cfg, &due).await;
            HealRead { users: due, rows }
        }))
    }

    /// The dirty users with a full bucket, now marked healing, with the
    /// stamp each is healed from; users gone from this process are forgotten.
    fn take_due(&mut self, hub: &Hub) -> Vec<(Uuid, DateTime<Utc>)> {
        let now = Instant::now();
        let mut due = Vec::new();
        let cfg = self.cfg;
        self.pending.retain(|user| {
            let Some(b) = self.buckets.get_mut(user) else {
                return false;
            };
            if !hub.has_sockets(*user) {
                b.dirty = None;
                return false;
            }
            b.refill(&cfg, now);
            if !b.full(&cfg) {
                return true;
            }
            let since = b.dirty.take().expect("a pending user is dirty");
            b.healing = Some(since);
            due.push((*user, since));
            false
        });
        due
    }

    /// Sends a finished heal's states to the sockets of its users, charged
    /// to their buckets; a failed read leaves them dirty, retried once their
    /// bucket is full again.
    pub(super) fn finish(&mut self, read: HealRead, hub: &Hub) {
        let max = self.heal.as_ref().map_or(0, |h| h.max_rows);
        let changes = match read.rows {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), users = read.users.len(), "throttle heal failed; retried later");
                self.outcome("failed");
                self.requeue(&read.users);
                return;
            }
        };
        let overflow = changes.rows() > max;
        let states = states_of(&changes, &read.users, max);
        let mut per_user: HashMap<Uuid, (Sent, usize)> = HashMap::new();
        for s in &states {
            let (sent, n) = per_user.entry(s.out.user_id).or_default();
            sent.note(s.key, s.at);
            *n += 1;
        }
        for (user, _) in &read.users {
            self.healed(*user, per_user.remove(user), hub.sockets_of(*user));
        }
        self.c.frames.increment(states.len() as u64);
        let envs: Vec<Envelope> = states
            .into_iter()
            .map(|s| s.into_envelope("throttle"))
            .collect();
        hub.deliver_heal(&envs);
        if overflow {
            self.resync(hub, &read.users, "overflow");
        } else {
            self.outcome("healed");
        }
        self.c.dirty.set(self.dirty_users() as f64);
    }

    /// Charges `user` for its heal (`sent`: what it was sent, and how many
    /// states) and makes it live again, or pending if it was skipped
    /// meanwhile.
    fn healed(&mut self, user: Uuid, sent: Option<(Sent, usize)>, sockets: usize) {
        let Some(b) = self.buckets.get_mut(&user) else {
            return;
        };
        let now = Instant::now();
        b.healing = None;
        b.refill(&self.cfg, now);
        let mut states = 0;
        if let Some((sent, n)) = sent {
            b.sent = Some((sent, now + SUPERSEDE_FOR));
            states = n;
        }
        // A heal costs at least what one event does, even if it found
        // nothing: a user whose events have no rows behind them cannot
        // make the bridge read the database at every tick.
        b.tokens -= (states.max(1) * sockets) as f64;
        if b.dirty.is_some() {
            self.pending.insert(user);
        }
    }

    /// A heal task that ended without an answer (it panicked): its users
    /// are dirty again from the stamps it was reading from.
    pub(super) fn abandon(&mut self) {
        let lost: Vec<(Uuid, DateTime<Utc>)> = self
            .buckets
            .iter()
            .filter_map(|(u, b)| b.healing.map(|at| (*u, at)))
            .collect();
        self.outcome("failed");
        self.requeue(&lost);
    }

    /// A failed heal's users are dirty again from the same stamps, and wait
    /// for a full bucket before the next try.
    fn requeue(&mut self, users: &[(Uuid, DateTime<Utc>)]) {
        for (user, at) in users {
            if let Some(b) = self.buckets.get_mut(user) {
                b.healing = None;
                b.tokens = 0.0;
                b.at = Instant::now();
                b.mark(*at);
                self.pending.insert(*user);
            }
        }
    }

    fn resync(&mut self, hub: &Hub, users: &[(Uuid, DateTime<Utc>)], outcome: &'static str) {
        self.outcome(outcome);
        let users: HashSet<Uuid> = users.iter().map(|(u, _)| *u).collect();
        hub.resync_users(&users, RESYNC_THROTTLED);
    }

    fn outcome(&self, outcome: &'static str) {
        metrics::counter!("ragctl_bridge_throttle_heals_total", "outcome" => outcome).increment(1);
    }

    /// Forgets the buckets a fresh one would equal, and those of users
    /// gone from this process: the map stays as large as the users here.
    pub(super) fn prune(&mut self, hub: &Hub) {
        let now = Instant::now();
        let cfg = self.cfg;
        self.buckets.retain(|user, b| {
            b.healing.is_some() || (hub.has_sockets(*user) && !b.idle(&cfg, now))
        });
        let buckets = &self.buckets;
        self.pending.retain(|u| buckets.contains_key(u));
        self.c.dirty.set(self.dirty_users() as f64);
    }
}

/// The states of `changes` each user is owed (rows changed at or after its
/// own stamp), oldest first, at most `max`.
fn states_of(changes: &Changes, users: &[(Uuid, DateTime<Utc>)], max: usize) -> Vec<State> {
    let since: HashMap<Uuid, DateTime<Utc>> = users.iter().copied().collect();
    let Some(oldest) = users.iter().map(|(_, at)| *at).min() else {
        return Vec::new();
    };
    let mut states = catch_up_states(changes, oldest);
    states.retain(|s| since.get(&s.out.user_id).is_some_and(|at| s.at >= *at));
    states.truncate(max);
    states
}

/// One snapshot of every row of `users` changed since the oldest of their
/// stamps; one more row per table than fits tells an overflow.
async fn read(cfg: &HealConfig, users: &[(Uuid, DateTime<Utc>)]) -> anyhow::Result<Changes> {
    let ids: Vec<Uuid> = users.iter().map(|(u, _)| *u).collect();
    let since = users.iter().map(|(_, at)| *at).min().expect("a user");
    tokio::time::timeout(QUERY_TIMEOUT, async {
        let mut client = cfg.pool.get().await?;
        Ok(changes::for_users(&mut client, &ids, since, cfg.max_rows as i64 + 1).await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {QUERY_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: ThrottleConfig = ThrottleConfig {
        rate: 100.0,
        burst: 50.0,
    };

    #[test]
    fn a_bucket_pays_within_its_budget_and_a_full_one_pays_one_event_whatever_it_costs() {
        let t0 = Instant::now();
        let mut b = Bucket::new(&CFG, t0);
        assert_eq!(b.afford(&CFG, 3, 10), 3);
        assert_eq!(b.afford(&CFG, 5, 10), 2, "20 left: two of five");
        assert_eq!(b.afford(&CFG, 1, 10), 0);
        b.refill(&CFG, t0 + Duration::from_millis(100)); // +10
        assert_eq!(b.afford(&CFG, 4, 10), 1);
        b.refill(&CFG, t0 + Duration::from_secs(10));
        assert_eq!(b.tokens, CFG.burst, "never above the burst");
        assert_eq!(b.afford(&CFG, 3, 500), 1, "a full bucket pays one event");
        assert_eq!(b.tokens, -450.0, "and owes it");
        b.refill(&CFG, t0 + Duration::from_secs(11));
        assert_eq!(b.afford(&CFG, 1, 1), 0, "still in debt a second later");
    }

    fn env(user: Uuid, at: DateTime<Utc>) -> Envelope {
        Envelope::new(
            user,
            crate::events::EventType::DocumentStatusUpdated,
            serde_json::json!({"document_id": Uuid::new_v4(), "status": "parsed",
                "error_message": null, "updated_at": at}),
            "test",
        )
    }

    #[tokio::test]
    async fn a_user_over_budget_keeps_its_first_events_and_is_dirty_since_the_first_skipped() {
        let hub = Hub::new(8);
        let (many, one) = (Uuid::new_v4(), Uuid::new_v4());
        let mut guards = vec![];
        for user in std::iter::repeat_n(many, 10).chain([one]) {
            let (server, _client) = tokio::io::duplex(64);
            let (_read, write) = tokio::io::split(server);
            guards.push(hub.register(user, false, super::super::outlet::Sink::stream(write)));
        }
        let cfg = ThrottleConfig {
            rate: 0.001,
            burst: 25.0,
        };
        let mut t = Throttle::new(cfg, None);
        // Rows stamped before their events (as commits always are).
        let t0 = Utc::now() - chrono::Duration::seconds(60);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let batch = [
            env(many, at(1)),
            env(many, at(2)),
            env(many, at(4)),
            env(one, at(0)),
            env(many, at(3)),
        ];
        let mut envs = batch.to_vec();
        t.admit(&mut envs, &hub);
        let kept: Vec<Uuid> = envs.iter().map(|e| e.id).collect();
        assert_eq!(
            kept,
            [batch[0].id, batch[1].id, batch[3].id],
            "25 tokens pay two events of 10 sockets"
        );
        assert!(t.waiting());
        assert_eq!(
            t.buckets[&many].dirty,
            Some(at(3)),
            "the oldest skipped row stamp"
        );
        // While dirty, everything of that user is coalesced; others go on.
        let mut envs = vec![env(many, at(5)), env(one, at(5))];
        t.admit(&mut envs, &hub);
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].user_id, one);
        assert_eq!(t.buckets[&many].dirty, Some(at(3)));
    }

    #[test]
    fn dirty_keeps_the_oldest_stamp() {
        let mut b = Bucket::new(&CFG, Instant::now());
        let t = Utc::now();
        b.mark(t);
        b.mark(t + chrono::Duration::seconds(1));
        b.mark(t - chrono::Duration::seconds(1));
        assert_eq!(b.dirty, Some(t - chrono::Duration::seconds(1)));
        assert!(!b.idle(&CFG, Instant::now()));
    }
}
