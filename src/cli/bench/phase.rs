//! The phases: publish a batch, collect its deliveries, judge them; and
//! the ceiling search built on them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::fleet::{Fleet, RawListener};
use super::progress::progress;
use super::publish::{Batch, PublishRuntime, Published, Publisher, publish};
use super::record::{Clock, Rec, Sink, stats};
use super::report::{Ceiling, CpuShare, PhaseResult, ServerSide};
use super::sample::{CpuSnap, Scrape, counter_deltas, scrape, server_side};

/// Highest rate the ceiling search tries.
pub(super) const MAX_RATE: u32 = 512_000;
/// A step whose publishers committed less than this share of the asked rate
/// is publisher-bound.
pub(super) const PUBLISH_SHORTFALL: f64 = 0.95;
/// A ceiling step is sustained if its backlog drained within this long.
pub(super) const MAX_BACKLOG: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Raw,
    Bridge,
}

impl Kind {
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Bridge => "bridge",
        }
    }
}

pub(super) struct Bench {
    pub(super) clock: Clock,
    pub(super) publish_rt: PublishRuntime,
    pub(super) publishers: Vec<Arc<Publisher>>,
    pub(super) channel: String,
    pub(super) raw_channel: String,
    pub(super) raw_sink: Arc<Sink>,
    /// The raw baseline's LISTEN connection, held for the run.
    pub(super) _raw: RawListener,
    pub(super) fleet: Fleet,
    pub(super) users: Vec<Uuid>,
    pub(super) next_phase: u32,
    /// The server processes whose CPU is sampled (summed).
    pub(super) server_pids: Vec<u32>,
    pub(super) http: reqwest::Client,
    pub(super) api: String,
}

/// What a phase measured, before any judging.
struct Measured {
    /// Events published.
    n: usize,
    /// Deliveries expected (events × sockets of the event's user).
    expected: u64,
    published: Published,
    /// Commit instant of each event (0: the publisher saw an error).
    commits: Arc<Vec<AtomicU64>>,
    /// Deliveries recorded, one vector per receiver.
    slots: Vec<Vec<Rec>>,
    /// Instant of the last delivery (0: none).
    last_ns: u64,
    cpu: Option<CpuShare>,
    server_side: Option<ServerSide>,
    server_counters: BTreeMap<String, f64>,
    disconnects: u64,
}

/// The deliveries counted against the commits.
#[derive(Default)]
struct Tally {
    received: u64,
    duplicates: u64,
    misrouted: u64,
    before_ack: u64,
    latencies_us: Vec<u32>,
}

impl Bench {
    /// [`Bench::phase`], announced on stderr ("{what}: R events/s for L",
    /// then `to` — the audience, if any) and its result line after.
    pub(super) async fn announced_phase(
        &mut self,
        (what, to): (&str, &str),
        kind: Kind,
        (rate, length): (u32, Duration),
        drain: Duration,
    ) -> anyhow::Result<PhaseResult> {
        progress(&format!("{what}: {rate} events/s for {length:?}{to}"));
        let result = self.phase(kind, rate, length, drain).await?;
        progress(&super::render::phase_line(&result));
        Ok(result)
    }

    /// Publishes `rate × length` events and collects their deliveries, at
    /// most `drain` past the last commit: measure, analyse, verdict.
    pub(super) async fn phase(
        &mut self,
        kind: Kind,
        rate: u32,
        length: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseResult> {
        let n = ((rate as f64 * length.as_secs_f64()).round() as usize).max(1);
        let m = self.measure(kind, rate, n, drain).await?;
        let tally = analyse(&m, kind, self.users.len());
        Ok(verdict(kind, rate, m, tally))
    }

    /// Where a phase's events go: the sink that records them, the channel
    /// to publish on, and how many deliveries to expect.
    async fn target(&self, kind: Kind, n: usize) -> anyhow::Result<(Arc<Sink>, String, u64)> {
        match kind {
            Kind::Raw => Ok((self.raw_sink.clone(), self.raw_channel.clone(), n as u64)),
            Kind::Bridge => {
                self.fleet.wait_connected(Duration::from_secs(60)).await?;
                let u = self.users.len();
                let expected = (0..self.fleet.clients)
                    .map(|c| per_user_events(n, u, c % u))
                    .sum::<u64>();
                Ok((self.fleet.sink.clone(), self.channel.clone(), expected))
            }
        }
    }

    /// Publishes events `0..n` of a new phase at `rate` and records what
    /// arrives, with the CPU, the server's metrics and the disconnects.
    async fn measure(
        &mut self,
        kind: Kind,
        rate: u32,
        n: usize,
        drain: Duration,
    ) -> anyhow::Result<Measured> {
        let phase = self.next_phase;
        self.next_phase += 1;
        let batch = Arc::new(Batch {
            phase,
            n,
            users: Arc::new(self.users.clone()),
        });
        let commits: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let (sink, channel, expected) = self.target(kind, n).await?;
        let disconnects_before = self.fleet.disconnects.load(Ordering::SeqCst);
        let scrape_before = match kind {
            Kind::Bridge => scrape(&self.http, &self.api).await,
            Kind::Raw => None,
        };
        let cpu_before = CpuSnap::take(&self.server_pids);
        sink.begin(phase);
        let published = publish(
            &self.publish_rt.handle,
            &self.publishers,
            &channel,
            batch,
            commits.clone(),
            rate,
            self.clock,
        )
        .await?;
        // Wait for the deliveries, at most `drain` past the last commit.
        let drain_until = published.last_commit_ns + drain.as_nanos() as u64;
        while sink.hits.load(Ordering::Relaxed) < expected && self.clock.ns() < drain_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last_ns = sink.last_ns.load(Ordering::Relaxed);
        let slots = sink.end();
        let cpu = cpu_before.and_then(|b| Some(b.share(&CpuSnap::take(&self.server_pids)?)));
        let (server_side, server_counters) = self.server_view(scrape_before.as_ref()).await;
        Ok(Measured {
            n,
            expected,
            published,
            commits,
            slots,
            last_ns,
            cpu,
            server_side,
            server_counters,
            disconnects: self.fleet.disconnects.load(Ordering::SeqCst) - disconnects_before,
        })
    }

    /// The server's delivery histogram and counters since `before`.
    async fn server_view(
        &self,
        before: Option<&Scrape>,
    ) -> (Option<ServerSide>, BTreeMap<String, f64>) {
        let Some(before) = before else {
            return (None, BTreeMap::new());
        };
        match scrape(&self.http, &self.api).await {
            Some(after) => (
                server_side(&before.buckets, &after.buckets),
                counter_deltas(before, &after),
            ),
            None => (None, BTreeMap::new()),
        }
    }

    /// Waits until nothing has arrived for a while (a failed step may leave
    /// a backlog behind), and the clients are all back.
    pub(super) async fn settle(&self, kind: Kind) -> anyhow::Result<()> {
        let sink = match kind {
            Kind::Raw => &self.raw_sink,
            Kind::Bridge => &self.fleet.sink,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = sink.activity();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = sink.activity();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(500) {
                break;
            }
        }
        if kind == Kind::Bridge {
            self.fleet.wait_connected(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Doubles the rate from `start` until a step is not sustained, or two
    /// steps in a row could not get the asked rate committed (PostgreSQL,
    /// sharing the CPU, is the limit; one such step can be a dip), then
    /// bisects between the last sustained and the first unsustained rate
    /// until they are within 5%. The ceiling is the highest committed rate
    /// of a sustained step.
    pub(super) async fn ceiling(
        &mut self,
        kind: Kind,
        start: u32,
        step: Duration,
    ) -> anyhow::Result<Ceiling> {
        let mut steps: Vec<PhaseResult> = Vec::new();
        let bounds = self.climb(kind, start, step, &mut steps).await?;
        self.bisect(kind, bounds, step, &mut steps).await?;
        let best = steps
            .iter()
            .filter(|s| s.sustained)
            .map(|s| s.published_rate.min(s.rate as f64))
            .fold(0.0, f64::max);
        Ok(Ceiling {
            events_per_s: best.round() as u32,
            steps,
        })
    }

    /// The doubling (or, from a failed start, halving) part of the search:
    /// the last sustained and the first unsustained rate, where found.
    async fn climb(
        &mut self,
        kind: Kind,
        start: u32,
        step: Duration,
        steps: &mut Vec<PhaseResult>,
    ) -> anyhow::Result<(Option<u32>, Option<u32>)> {
        let (mut lo, mut hi) = (None, None);
        let mut rate = start;
        let mut bound_in_a_row = 0;
        loop {
            let r = self.step(kind, rate, step).await?;
            let (ok, bound) = (r.sustained, r.publisher_bound);
            steps.push(r);
            if ok {
                lo = Some(rate);
                bound_in_a_row = if bound { bound_in_a_row + 1 } else { 0 };
                if bound_in_a_row >= 2 || rate >= MAX_RATE {
                    return Ok((lo, hi));
                }
                rate = rate.saturating_mul(2).min(MAX_RATE);
            } else {
                hi = Some(rate);
                if lo.is_some() || rate <= 250 {
                    return Ok((lo, hi));
                }
                rate /= 2;
            }
        }
    }

    /// Narrows `(lo, hi)` to within 5% (five steps at most), on rates
    /// rounded to hundreds.
    async fn bisect(
        &mut self,
        kind: Kind,
        (mut lo, mut hi): (Option<u32>, Option<u32>),
        step: Duration,
        steps: &mut Vec<PhaseResult>,
    ) -> anyhow::Result<()> {
        for _ in 0..5 {
            let (Some(l), Some(h)) = (lo, hi) else { break };
            if h as f64 <= l as f64 * 1.05 {
                break;
            }
            let mid = (((l as u64 + h as u64) / 2).div_ceil(100) * 100) as u32;
            if mid <= l || mid >= h {
                break;
            }
            let r = self.step(kind, mid, step).await?;
            if r.sustained {
                lo = Some(mid);
            } else {
                hi = Some(mid);
            }
            steps.push(r);
        }
        Ok(())
    }

    pub(super) async fn step(
        &mut self,
        kind: Kind,
        rate: u32,
        length: Duration,
    ) -> anyhow::Result<PhaseResult> {
        self.settle(kind).await?;
        progress(&format!(
            "ceiling {}: {rate} events/s for {length:?}",
            kind.label()
        ));
        let r = self
            .phase(kind, rate, length, Duration::from_secs(5))
            .await?;
        progress(&format!(
            "  published {:.0}/s, {} of {} delivered, backlog {:.0} ms: {}",
            r.published_rate, r.received, r.expected, r.backlog_ms, r.verdict
        ));
        Ok(r)
    }
}

/// Matches each delivery to its commit: received, duplicated, misrouted
/// (a bridge frame on a socket of another user), and the latencies.
fn analyse(m: &Measured, kind: Kind, users: usize) -> Tally {
    let mut t = Tally {
        latencies_us: Vec::with_capacity(m.expected as usize),
        ..Tally::default()
    };
    for (slot, recs) in m.slots.iter().enumerate() {
        let mut seqs: Vec<&Rec> = recs.iter().collect();
        seqs.sort_unstable_by_key(|r| r.seq);
        let mut prev = None;
        for r in seqs {
            if prev == Some(r.seq) {
                t.duplicates += 1;
                continue;
            }
            prev = Some(r.seq);
            if kind == Kind::Bridge && r.seq as usize % users != slot % users {
                t.misrouted += 1;
                continue;
            }
            t.received += 1;
            let commit = m
                .commits
                .get(r.seq as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            if commit == 0 {
                continue; // the publisher saw an error for an event that arrived
            }
            if r.ns < commit {
                t.before_ack += 1;
            }
            let us = r.ns.saturating_sub(commit) / 1000;
            t.latencies_us.push(us.min(u32::MAX as u64) as u32);
        }
    }
    t
}

/// The phase's result, judged: sustained (nothing lost, no drops, no
/// disconnects, backlog drained in time) and publisher-bound or not.
fn verdict(kind: Kind, rate: u32, m: Measured, t: Tally) -> PhaseResult {
    let p = &m.published;
    let window_s = (p.last_commit_ns.saturating_sub(p.first_ns)) as f64 / 1e9;
    let published_rate = if window_s > 0.0 {
        m.n as f64 / window_s
    } else {
        f64::INFINITY
    };
    let backlog_ms = if m.last_ns == 0 {
        0.0
    } else {
        (m.last_ns as f64 - p.last_commit_ns as f64) / 1e6
    };
    let lost = m.expected.saturating_sub(t.received);
    let problems = problems(&m, &t, lost, backlog_ms);
    let publisher_bound = published_rate < rate as f64 * PUBLISH_SHORTFALL;
    let mut verdict = if problems.is_empty() {
        "sustained".to_string()
    } else {
        problems.join(", ")
    };
    if publisher_bound {
        verdict.push_str(&format!(
            " (publisher-bound: {published_rate:.0}/s committed)"
        ));
    }
    PhaseResult {
        rate,
        events: m.n as u64,
        published_rate: (published_rate * 10.0).round() / 10.0,
        publish_errors: p.errors,
        expected: m.expected,
        received: t.received,
        lost,
        duplicates: t.duplicates,
        misrouted: t.misrouted,
        before_ack: t.before_ack,
        // Negative: the last delivery beat the publisher's commit ack.
        backlog_ms: (backlog_ms.max(0.0) * 100.0).round() / 100.0,
        disconnects: m.disconnects,
        latency: stats(t.latencies_us),
        server_us_per_frame: per_frame(kind, m.cpu.as_ref(), t.received),
        cpu: m.cpu,
        server_side: m.server_side,
        server_counters: m.server_counters,
        sustained: problems.is_empty(),
        publisher_bound,
        verdict,
    }
}

/// Why a phase was not sustained; empty when it was.
fn problems(m: &Measured, t: &Tally, lost: u64, backlog_ms: f64) -> Vec<String> {
    let mut problems = Vec::new();
    if m.published.errors > 0 {
        problems.push(format!("{} publish errors", m.published.errors));
    }
    if lost > 0 {
        problems.push(format!("{lost} lost"));
    }
    if t.misrouted > 0 || t.duplicates > 0 {
        problems.push(format!(
            "{} misrouted, {} duplicated",
            t.misrouted, t.duplicates
        ));
    }
    if m.disconnects > 0 {
        problems.push(format!("{} disconnects", m.disconnects));
    }
    for (name, v) in &m.server_counters {
        if name.contains("dropped") || name.contains("reconnects") {
            problems.push(format!("server {name} +{v}"));
        }
    }
    if backlog_ms > MAX_BACKLOG.as_secs_f64() * 1000.0 {
        problems.push(format!("backlog drained in {:.0} ms", backlog_ms));
    }
    problems
}

/// Events of `0..n` that go to user `u` when event `i` goes to `i % users`.
pub(super) fn per_user_events(n: usize, users: usize, u: usize) -> u64 {
    (n / users + usize::from(u < n % users)) as u64
}

/// The server's CPU per delivered frame, µs: all of its CPU over the phase
/// (the listener, the router, the writes, its idle sockets) over the frames
/// the clients received.
pub(super) fn per_frame(kind: Kind, cpu: Option<&CpuShare>, frames: u64) -> Option<f64> {
    let ms = cpu?.server_ms?;
    (kind == Kind::Bridge && frames > 0)
        .then(|| (ms * 1000.0 / frames as f64 * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_evenly_over_users() {
        assert_eq!((0..3).map(|u| per_user_events(10, 3, u)).sum::<u64>(), 10);
        assert_eq!(per_user_events(10, 3, 0), 4);
        assert_eq!(per_user_events(10, 3, 2), 3);
    }
}
