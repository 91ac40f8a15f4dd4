//! `--fanout-attack N`: one user's fan-out against everyone else's latency
//! (issue #17, attack 7). A victim fleet (`--clients` sockets over
//! `--users` users) receives `--rate` events/s for `--duration`, first
//! alone, then while one attacker user holds N sockets and receives
//! `--attack-rate` events/s. The attacker's sockets read and discard raw
//! bytes (no WebSocket parsing: the bench must not be the bottleneck).
//! Run it with the server's `--user-frame-rate` bound and with
//! `RAG_USER_FRAME_RATE=0` (no bound) to compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::args::BenchArgs;
use super::crowd::{Crowd, token};
use super::fleet::{Endpoint, HANDSHAKES, ws_connect};
use super::phase::{Bench, Kind};
use super::progress::progress;
use super::publish::connect_publisher;
use super::report::{Machine, PhaseResult, TargetCheck};
use super::server::Site;

/// Documents the attacker's events are about (not rows: what the bench
/// measures is the router's fan-out, not the heal's query).
const ATTACK_DOCS: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub machine: Machine,
    /// The server's `RAG_USER_FRAME_RATE` as this process sees it, if set.
    pub user_frame_rate_env: Option<String>,
    pub attacker_sockets: usize,
    pub attacker_opened: usize,
    pub attack_rate: u32,
    /// Attacker events committed, and bytes its sockets read.
    pub attack_events: u64,
    pub attack_bytes: u64,
    pub baseline: PhaseResult,
    pub attacked: PhaseResult,
    pub targets: Vec<TargetCheck>,
}

/// The attacker: its sockets (held while the value lives) and what they read.
struct Attacker {
    opened: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

async fn open_attacker(ep: &Endpoint, jwt: Arc<str>, n: usize) -> anyhow::Result<Attacker> {
    let opened = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(HANDSHAKES));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (ep, jwt, gate) = (ep.clone(), jwt.clone(), gate.clone());
        let (opened, bytes) = (opened.clone(), bytes.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let Ok(ws) = ws_connect(&ep, &jwt).await else {
                return;
            };
            drop(permit);
            opened.fetch_add(1, Ordering::SeqCst);
            // Raw bytes, discarded: frames are never parsed.
            let mut tcp = ws.into_inner();
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(k) = tcp.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                bytes.fetch_add(k as u64, Ordering::Relaxed);
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Attacker {
        opened,
        bytes,
        _tasks: tasks,
    })
}

/// Publishes `rate` events/s for `user` until dropped; counts commits.
fn attack(
    db_url: String,
    channel: String,
    user: Uuid,
    rate: u32,
    sent: Arc<AtomicU64>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let Ok(p) = connect_publisher(&db_url).await else {
            progress("attack: cannot connect its publisher");
            return;
        };
        let docs: Vec<Uuid> = (0..ATTACK_DOCS).map(|_| Uuid::new_v4()).collect();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0usize.. {
            tick.tick().await;
            let env = crate::events::Envelope::new(
                user,
                crate::events::EventType::DocumentStatusUpdated,
                serde_json::json!({"document_id": docs[i % docs.len()], "status": "parsing",
                    "error_message": null, "updated_at": chrono::Utc::now()}),
                "bench:attack",
            );
            let payload = serde_json::to_string(&env).expect("an envelope serialises");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &payload];
            if p.client.execute(&p.stmt, &params).await.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    set
}

pub(super) async fn run(
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    ep: &Endpoint,
    machine: Machine,
) -> anyhow::Result<FanoutReport> {
    let crowd = Crowd {
        users: (0..args.users).map(|_| Uuid::new_v4()).collect(),
        clients: args.clients as usize,
    };
    let mut bench = Bench::connect(site, channel, ep, args.publishers, crowd).await?;
    let drain = Duration::from_secs(10);
    bench
        .phase(
            Kind::Bridge,
            args.rate.min(1000),
            Duration::from_secs(1),
            drain,
        )
        .await?;
    bench.settle(Kind::Bridge).await?;
    let load = (args.rate, args.duration);
    let baseline = bench
        .announced_phase(("victim alone", ""), Kind::Bridge, load, drain)
        .await?;
    bench.settle(Kind::Bridge).await?;
    let hit = under_attack(&mut bench, args, site, channel, ep).await?;
    Ok(FanoutReport {
        machine,
        user_frame_rate_env: std::env::var("RAG_USER_FRAME_RATE").ok(),
        attacker_sockets: args.fanout_attack,
        attacker_opened: hit.opened,
        attack_rate: args.attack_rate,
        attack_events: hit.events,
        attack_bytes: hit.bytes,
        targets: vec![ratio_target(&baseline, &hit.victim)],
        baseline,
        attacked: hit.victim,
    })
}

/// What the victim phase under attack measured, and the attacker's side.
struct UnderAttack {
    victim: PhaseResult,
    opened: usize,
    events: u64,
    bytes: u64,
}

/// The attacker's sockets open and its flood running, the victim's phase.
async fn under_attack(
    bench: &mut Bench,
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    ep: &Endpoint,
) -> anyhow::Result<UnderAttack> {
    let n = args.fanout_attack;
    let user = Uuid::new_v4();
    progress(&format!("attacker: opening {n} sockets of one user"));
    let attacker = open_attacker(ep, token(&site.secret, user)?, n).await?;
    let opened = attacker.opened.load(Ordering::SeqCst);
    progress(&format!(
        "attacker: {opened} open; {} events/s to it",
        args.attack_rate
    ));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = attack(
        site.db_url.clone(),
        channel.to_string(),
        user,
        args.attack_rate,
        sent.clone(),
    );
    // Let the flood reach its steady state before the victim is measured.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (load, drain) = ((args.rate, args.duration), Duration::from_secs(10));
    let victim = bench
        .announced_phase(("victim under attack", ""), Kind::Bridge, load, drain)
        .await?;
    drop(flood);
    Ok(UnderAttack {
        victim,
        opened,
        events: sent.load(Ordering::Relaxed),
        bytes: attacker.bytes.load(Ordering::Relaxed),
    })
}

/// The victim's p99 under attack within 10× (an order of magnitude) of
/// its p99 alone, and nothing lost.
fn ratio_target(base: &PhaseResult, hit: &PhaseResult) -> TargetCheck {
    let p99 = |r: &PhaseResult| r.latency.map(|s| s.p99_us);
    let (met, measured) = match (p99(base), p99(hit)) {
        (Some(b), Some(h)) => (
            Some(f64::from(h) <= 10.0 * f64::from(b.max(1)) && hit.lost == 0),
            format!("p99 {b} µs alone, {h} µs under attack; {} lost", hit.lost),
        ),
        _ => (Some(false), "no latency measured".into()),
    };
    TargetCheck {
        key: "victim_p99",
        name: "victim's delivery p99 under a fan-out attack".into(),
        target: "≤ 10× alone, none lost".into(),
        measured,
        met,
    }
}

pub(super) fn render(r: &FanoutReport) -> String {
    let line = |name: &str, p: &PhaseResult| {
        let s = p.latency;
        format!(
            "{name:<22} p50 {:>7} µs  p99 {:>7} µs  max {:>7} µs  received {}/{}  lost {}\n",
            s.map_or(0, |s| s.p50_us),
            s.map_or(0, |s| s.p99_us),
            s.map_or(0, |s| s.max_us),
            p.received,
            p.expected,
            p.lost
        )
    };
    let mut out = format!(
        "fan-out attack: {} of {} attacker sockets open, {} events/s to them ({} committed, {} bytes read); RAG_USER_FRAME_RATE={}\n",
        r.attacker_opened,
        r.attacker_sockets,
        r.attack_rate,
        r.attack_events,
        r.attack_bytes,
        r.user_frame_rate_env.as_deref().unwrap_or("(default)")
    );
    out += &line("victim alone", &r.baseline);
    out += &line("victim under attack", &r.attacked);
    for (k, v) in &r.attacked.server_counters {
        if k.contains("forwarded") || k.contains("throttle") || k.contains("dropped") {
            out += &format!("  server during the attack: {k} +{v}\n");
        }
    }
    for t in &r.targets {
        out += &format!(
            "target {}: {} ({}): {:?}\n",
            t.name, t.target, t.measured, t.met
        );
    }
    out
}
