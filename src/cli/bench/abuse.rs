//! `ragctl bench --abuse`: each attack of issue #17 against 50 honest users.
//!
//! Every phase (the baseline, then each selected attack) gets a fresh
//! database and a fresh `ragctl serve` (so that its VmHWM is the phase's
//! peak), seeded with SQL; the honest users' sockets connect, the attack
//! starts and, once at full strength, the honest REST load and the honest
//! deliveries run side by side for `--abuse-duration`. The server's RSS is
//! watched every 100 ms: past `--abuse-rss-abort-mib` the attack is
//! stopped to protect the machine, and the phase fails its memory target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::abuse_child::Attackers;
use super::abuse_honest::{self as honest, Done, OPS_PER_S, User};
use super::abuse_report::ATTACKS;
use super::abuse_report::{AbuseConfig, AbusePhase, AbuseReport, judge};
use super::abuse_seed as seed;
use super::abuse_target::Target;
use super::args::BenchArgs;
use super::crowd::{Crowd, token};
use super::machine::machine;
use super::phase::{Bench, Kind};
use super::progress::progress;
use super::record::stats;
use super::report::PhaseResult;
use super::sample::{rss_kib, status_kib};
use super::server::{Site, endpoint, wait_ready};
use crate::config::ConnectOpts;

/// Honest users, each with one socket.
const HONEST_USERS: usize = 50;
/// Events per second published to the honest users (spread evenly).
const HONEST_EVENTS_PER_S: u32 = 100;
/// How long an attack may take to reach full strength.
const RAMP_PATIENCE: Duration = Duration::from_secs(120);
/// The honest deliveries still arriving this long after the last commit
/// are lost.
const DRAIN: Duration = Duration::from_secs(10);

pub(super) async fn run(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
) -> anyhow::Result<AbuseReport> {
    let attacks: Vec<u8> = ATTACKS
        .iter()
        .map(|a| a.0)
        .filter(|n| args.abuse_only.is_empty() || args.abuse_only.contains(n))
        .collect();
    let mut phases = Vec::new();
    let mut seen_machine = None;
    for attack in std::iter::once(0).chain(attacks) {
        let site = Site::open(connect, args, channel).await?;
        if seen_machine.is_none() {
            seen_machine = Some(machine(&site.db_url).await);
        }
        let measured = phase(&site, args, channel, attack).await;
        if let Some(server) = site.own {
            server.stop().await;
        }
        let p = measured?;
        progress(&format!(
            "{} {}: {}/{} ok, REST p99 {:?} µs, delivery p99 {:?} µs, peak RSS {:?} KiB",
            p.attack,
            p.name,
            p.ok,
            p.ops,
            p.rest.map(|s| s.p99_us),
            p.delivery.map(|s| s.p99_us),
            p.peak_rss_kib
        ));
        phases.push(p);
    }
    let targets = judge(&phases);
    Ok(AbuseReport {
        machine: seen_machine.expect("at least the baseline ran"),
        config: AbuseConfig {
            duration_s: args.abuse_duration.as_secs_f64(),
            honest_users: HONEST_USERS,
            honest_ops_per_s_per_user: OPS_PER_S,
            honest_events_per_s: HONEST_EVENTS_PER_S,
            serve_args: args.abuse_serve_args.clone(),
            rss_abort_mib: args.abuse_rss_abort_mib,
        },
        phases,
        targets,
    })
}

fn name_of(attack: u8) -> &'static str {
    ATTACKS
        .iter()
        .find(|a| a.0 == attack)
        .map_or("baseline", |a| a.1)
}

/// One phase on a fresh server: seed, connect the honest sockets, attack,
/// measure, stop the attack.
async fn phase(
    site: &Site,
    args: &BenchArgs,
    channel: &str,
    attack: u8,
) -> anyhow::Result<AbusePhase> {
    wait_ready(&site.api).await?;
    let ep = endpoint(&site.api).await?;
    progress(&format!("phase {attack} ({}): seeding", name_of(attack)));
    let (rows, target) = prepare(site, channel, attack).await?;
    let users = honest_users(&site.secret, &rows)?;
    let crowd = Crowd {
        users: rows.users.clone(),
        clients: HONEST_USERS,
    };
    let mut bench = Bench::connect(site, channel, &ep, 2, crowd).await?;
    let cancel = CancellationToken::new();
    let guard = RssGuard::start(site.pid, args.abuse_rss_abort_mib * 1024, cancel.clone());
    let attackers = match attack {
        0 => None,
        n => Some(Attackers::start(n, &target)?),
    };
    if let Some(a) = &attackers {
        ramp(attack, a, &cancel).await;
    }
    progress(&format!(
        "phase {attack}: honest load for {:?}",
        args.abuse_duration
    ));
    let length = args.abuse_duration;
    let measuring = async {
        let measured = tokio::join!(
            honest::run(&site.api, &ep, &users, length),
            bench.phase(Kind::Bridge, HONEST_EVENTS_PER_S, length, DRAIN)
        );
        cancel.cancel();
        measured
    };
    // The attack stops when the honest load is done, or earlier if the
    // RSS guard fires.
    let stopping = async {
        cancel.cancelled().await;
        match attackers {
            Some(a) => Some(a.stop().await),
            None => None,
        }
    };
    let ((done, delivered), attacker) = tokio::join!(measuring, stopping);
    let peak = site.pid.and_then(|p| status_kib(p, "VmHWM:"));
    let mut p = tally_phase(attack, &done?, peak.max(guard.peak()));
    p.aborted = guard.aborted();
    p.attacker = attacker;
    add_delivery(&mut p, delivered);
    Ok(p)
}

/// The honest users' tokens and conversations.
fn honest_users(secret: &str, rows: &seed::HonestRows) -> anyhow::Result<Vec<User>> {
    rows.users
        .iter()
        .zip(&rows.conversations)
        .map(|(&u, &conversation)| {
            Ok(User {
                token: token(secret, u)?,
                conversation,
            })
        })
        .collect()
}

/// The honest deliveries' numbers, or why they could not be measured.
fn add_delivery(p: &mut AbusePhase, delivered: anyhow::Result<PhaseResult>) {
    match delivered {
        Ok(r) => {
            p.delivery = r.latency;
            (p.delivery_expected, p.delivery_received) = (r.expected, r.received);
            p.delivery_disconnects = r.disconnects;
        }
        Err(e) => p.delivery_error = Some(format!("{e:#}")),
    }
}

/// Seeds the honest users and what `attack` needs; returns the honest rows
/// and the attack's target.
async fn prepare(
    site: &Site,
    channel: &str,
    attack: u8,
) -> anyhow::Result<(seed::HonestRows, Target)> {
    let started = Instant::now();
    let client = seed::connect(&site.db_url).await?;
    let rows = seed::honest(&client, HONEST_USERS).await?;
    let attacker = Uuid::new_v4();
    let conversation = match attack {
        1 | 2 => Some(seed::long_history(&client, attacker).await?),
        6 => Some(seed::corpus(&client, attacker).await?),
        _ => None,
    };
    seed::analyze(&client).await?;
    progress(&format!(
        "seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let target = Target {
        api: site.api.clone(),
        secret: site.secret.clone(),
        db_url: site.db_url.clone(),
        channel: channel.to_string(),
        attacker,
        conversation,
        first_slot: 0,
        slots: 0,
        ep: None,
    };
    Ok((rows, target))
}

/// Waits for the attack to reach full strength (or `RAMP_PATIENCE`), then
/// a second more for its effect to take hold.
async fn ramp(attack: u8, attackers: &Attackers, cancel: &CancellationToken) {
    let deadline = Instant::now() + RAMP_PATIENCE;
    while !attackers.ready() && !cancel.is_cancelled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(&format!(
        "attack {attack}: {}",
        match attackers.ready() {
            true => "at full strength",
            false => "NOT at full strength; measuring anyway",
        }
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The honest operations' numbers.
fn tally_phase(attack: u8, done: &[Done], peak_rss_kib: Option<u64>) -> AbusePhase {
    let rest: Vec<u32> = done
        .iter()
        .filter(|d| d.op.is_rest())
        .map(|d| d.us)
        .collect();
    AbusePhase {
        attack,
        name: name_of(attack),
        ops: done.len() as u64,
        ok: done.iter().filter(|d| d.failure.is_none()).count() as u64,
        rest: stats(rest),
        failures: honest::failures(done),
        peak_rss_kib,
        ..AbusePhase::default()
    }
}

/// Samples the server's VmRSS every 100 ms: keeps the peak, and stops the
/// attack (`cancel`) once it passes `limit_kib`.
struct RssGuard {
    peak: Arc<AtomicU64>,
    tripped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    limit_kib: u64,
}

impl RssGuard {
    fn start(pid: Option<u32>, limit_kib: u64, cancel: CancellationToken) -> RssGuard {
        let (peak, tripped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (p, t) = (peak.clone(), tripped.clone());
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            loop {
                let now = rss_kib(pid).unwrap_or(0);
                p.fetch_max(now, Ordering::SeqCst);
                if now > limit_kib && t.load(Ordering::SeqCst) == 0 {
                    t.store(now, Ordering::SeqCst);
                    progress(&format!(
                        "server RSS {} MiB: stopping the attack",
                        now / 1024
                    ));
                    cancel.cancel();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssGuard {
            peak,
            tripped,
            task,
            limit_kib,
        }
    }

    fn peak(&self) -> Option<u64> {
        Some(self.peak.load(Ordering::SeqCst)).filter(|&v| v > 0)
    }

    fn aborted(&self) -> Option<String> {
        match self.tripped.load(Ordering::SeqCst) {
            0 => None,
            kib => Some(format!(
                "server RSS {} MiB passed --abuse-rss-abort-mib {}",
                kib / 1024,
                self.limit_kib / 1024
            )),
        }
    }
}

impl Drop for RssGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
