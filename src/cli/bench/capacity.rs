//! `--capacity`: how many API instances one PostgreSQL feeds, and how many
//! events per second they forward, measured in the same run as the rest.
//!
//! Every instance LISTENs and reads every event, so the bus's work grows with
//! instances × event rate. This phase measures, on the benchmark's database:
//! the raw `NOTIFY → LISTEN` ceiling (the bus alone); the CPU an instance
//! with no socket for an event spends on it (its check and drop); and the
//! bridge's ceiling with 1, 2 and 4 instances sharing `--capacity-sockets`
//! sockets, each user's sockets on one instance (user `u` on instance
//! `u mod n`), so every event is delivered by one instance and dropped by
//! the others.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::args::BenchArgs;
use super::fleet::start_fleet_on;
use super::phase::{Bench, Kind};
use super::progress::progress;
use super::report::{Ceiling, PhaseResult};
use super::sample::{cpu_ns, scrape};
use super::server::{Instance, Site, endpoint, launch};

/// Instance counts the ceiling is measured with.
const SPREADS: [usize; 3] = [1, 2, 4];
/// Length of the fixed-rate phases.
const FIXED: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub sockets: usize,
    pub users: usize,
    /// Raw `NOTIFY → LISTEN` zero-loss ceiling, events/s.
    pub raw_ceiling: u32,
    pub drop: DropCost,
    pub spreads: Vec<Spread>,
}

/// What an instance with no socket for the events spent on them.
#[derive(Debug, Clone, Serialize)]
pub struct DropCost {
    pub rate: u32,
    /// `ragctl_events_no_recipient_total` of that instance over the phase.
    pub dropped: u64,
    /// Its CPU time over the phase (all threads, `/proc/<pid>/task/*/schedstat`), ms.
    pub cpu_ms: f64,
    pub us_per_event: Option<f64>,
}

/// `instances` sharing the sockets: a fixed-rate phase, then the ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub instances: usize,
    /// At `--rate`: every instance's CPU time per event published, µs
    /// (`/proc/<pid>/task/*/schedstat`; the first instance is the one the
    /// benchmark started first).
    pub us_per_event: Vec<f64>,
    pub fixed: PhaseResult,
    pub ceiling: Ceiling,
}

/// Runs the phase. `raw_ceiling` is reused when the run already has it.
pub(super) async fn measure(
    bench: &mut Bench,
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    raw_ceiling: Option<u32>,
) -> anyhow::Result<CapacityReport> {
    let raw_ceiling = match raw_ceiling {
        Some(c) => c,
        None => {
            bench
                .ceiling(Kind::Raw, 2000, args.step)
                .await?
                .events_per_s
        }
    };
    let Some(main_pid) = site.pid else {
        anyhow::bail!("--capacity needs the server's pid (--server-pid)");
    };
    let mut extras: Vec<Instance> = Vec::new();
    let result = spreads(bench, args, site, channel, main_pid, &mut extras).await;
    for i in extras {
        i.stop().await;
    }
    let (drop, spreads) = result?;
    Ok(CapacityReport {
        sockets: args.capacity_sockets,
        users: args.capacity_users,
        raw_ceiling,
        drop,
        spreads,
    })
}

/// 1 instance; then one more, whose drop cost is measured while it has no
/// sockets; then 2; then 4. Extra instances are pushed onto `extras`.
async fn spreads(
    bench: &mut Bench,
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    main_pid: u32,
    extras: &mut Vec<Instance>,
) -> anyhow::Result<(DropCost, Vec<Spread>)> {
    let mut out = Vec::new();
    let mut drop = None;
    for n in SPREADS {
        while extras.len() + 1 < n {
            progress(&format!(
                "capacity: starting API instance {}",
                extras.len() + 2
            ));
            extras.push(launch(&site.db_url, "bench_cap", &site.secret, channel, args).await?);
            if drop.is_none() {
                drop = Some(drop_cost(bench, args.rate, &extras[0]).await?);
            }
        }
        let mut apis = vec![site.api.clone()];
        apis.extend(extras.iter().map(|i| i.api.clone()));
        let mut pids = vec![main_pid];
        pids.extend(extras.iter().map(|i| i.pid));
        out.push(spread(bench, args, site, &apis, &pids).await?);
    }
    let drop = drop.expect("measured when the second instance started");
    Ok((drop, out))
}

/// The CPU of `idle` (an instance with no sockets) while the current fleet
/// receives `rate` events/s for a few seconds.
async fn drop_cost(bench: &mut Bench, rate: u32, idle: &Instance) -> anyhow::Result<DropCost> {
    progress(&format!(
        "capacity: drop cost on an instance with no sockets, {rate} events/s"
    ));
    let metric = "ragctl_events_no_recipient_total";
    let count = |s: Option<super::sample::Scrape>| {
        s.and_then(|s| s.counters.into_iter().find(|(n, _)| n == metric))
            .map_or(0.0, |(_, v)| v)
    };
    bench.settle(Kind::Bridge).await?;
    let before = count(scrape(&bench.http, &idle.api).await);
    let cpu_before = cpu_ns(idle.pid);
    bench
        .phase(Kind::Bridge, rate, FIXED, Duration::from_secs(10))
        .await?;
    let dropped = (count(scrape(&bench.http, &idle.api).await) - before).max(0.0) as u64;
    let cpu_ms = match (cpu_before, cpu_ns(idle.pid)) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / 1e6,
        _ => anyhow::bail!("cannot read the CPU time of instance {}", idle.pid),
    };
    let us_per_event = (dropped > 0).then(|| round2(cpu_ms * 1000.0 / dropped as f64));
    progress(&format!(
        "capacity: {dropped} events dropped for {cpu_ms:.0} ms of CPU: {} µs each",
        us_per_event.map_or("?".into(), |v| v.to_string())
    ));
    Ok(DropCost {
        rate,
        dropped,
        cpu_ms: round2(cpu_ms),
        us_per_event,
    })
}

/// The sockets spread over the instances at `apis`: their CPU at `--rate`,
/// then the bridge's ceiling.
async fn spread(
    bench: &mut Bench,
    args: &BenchArgs,
    site: &Site,
    apis: &[String],
    pids: &[u32],
) -> anyhow::Result<Spread> {
    let n = apis.len();
    let mut eps = Vec::new();
    for api in apis {
        eps.push(endpoint(api).await?);
    }
    let users: Vec<Uuid> = (0..args.capacity_users).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<Arc<str>> = users
        .iter()
        .map(|&u| super::crowd::token(&site.secret, u))
        .collect::<anyhow::Result<_>>()?;
    progress(&format!(
        "capacity: {} sockets for {} users over {n} instance(s)",
        args.capacity_sockets, args.capacity_users
    ));
    // The old fleet goes first: its sockets would be idle weight.
    bench.fleet.stop();
    bench.fleet = start_fleet_on(&eps, &tokens, args.capacity_sockets, bench.clock).await?;
    bench.users = users;
    bench.server_pids = pids.to_vec();
    bench.settle(Kind::Bridge).await?;
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let fixed = bench
        .phase(Kind::Bridge, args.rate, FIXED, Duration::from_secs(10))
        .await?;
    let events = fixed.events.max(1) as f64;
    let us_per_event = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| match (b, cpu_ns(p)) {
            (Some(b), Some(a)) => round2(a.saturating_sub(*b) as f64 / 1e3 / events),
            _ => f64::NAN,
        })
        .collect();
    progress(&super::render::phase_line(&fixed));
    let ceiling = bench.ceiling(Kind::Bridge, 2000, args.step).await?;
    progress(&format!(
        "capacity: {n} instance(s): ceiling {} events/s",
        ceiling.events_per_s
    ));
    Ok(Spread {
        instances: n,
        us_per_event,
        fixed,
        ceiling,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The capacity section of the table.
pub(super) fn render(c: &CapacityReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncapacity: {} sockets over {} users, each user's sockets on one instance",
        c.sockets, c.users
    );
    let _ = writeln!(s, "raw NOTIFY → LISTEN ceiling: {} events/s", c.raw_ceiling);
    let _ = writeln!(
        s,
        "instance with no sockets: {} events dropped at {}/s for {:.0} ms of CPU: {} µs per event",
        c.drop.dropped,
        c.drop.rate,
        c.drop.cpu_ms,
        c.drop
            .us_per_event
            .map_or("?".into(), |v| format!("{v:.1}"))
    );
    let _ = writeln!(
        s,
        "{:>9} {:>12} {:>9} | at {}/s: {:>6} {:>8} {:>10}  µs/event each, µs/frame all",
        "instances", "ceiling ev/s", "frames/s", c.drop.rate, "lost", "p99 µs", "postgres%"
    );
    let fan = c.sockets as f64 / c.users as f64;
    for sp in &c.spreads {
        let each: Vec<String> = sp.us_per_event.iter().map(|v| format!("{v:.1}")).collect();
        let f = &sp.fixed;
        let _ = writeln!(
            s,
            "{:>9} {:>12} {:>9.0} | {:>14} {:>8} {:>10}  {}, {}",
            sp.instances,
            sp.ceiling.events_per_s,
            sp.ceiling.events_per_s as f64 * fan,
            f.lost,
            f.latency.map_or("-".into(), |l| l.p99_us.to_string()),
            f.cpu.map_or("?".into(), |c| format!("{:.0}", c.postgres)),
            each.join("/"),
            f.server_us_per_frame
                .map_or("?".into(), |v| format!("{v:.1}"))
        );
    }
    s
}
