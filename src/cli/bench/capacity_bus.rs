//! `--capacity --bus nats`: the postgres bus, then the NATS bus, each with
//! 1, 2, 4 and 8 API instances sharing `--capacity-sockets` sockets (user
//! `u` on instance `u mod n`), at `--rate` for a few seconds each, the
//! same users, sockets and rate on both. Read per phase: PostgreSQL's CPU
//! (the database's backends, `pg_cpu`), each instance's, the relay's (a
//! `ragctl relay` of its own; the instances run `--relay off`) and
//! nats-server's, per event published; latency p50/p99. Then an instance
//! with no socket (after the first spread), the bridge's ceiling over NATS
//! with 8 instances, and the relay's failover (`failover`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::args::BenchArgs;
use super::capacity_bus_report::{BusCapacity, BusSpread, IdleCost, targets};
use super::fleet::start_fleet_on;
use super::pg_cpu::{PgCpu, PgSnap};
use super::phase::{Bench, Kind};
use super::progress::progress;
use super::relay_proc::{RelayProc, RelaySite, wait_leading};
use super::sample::cpu_ns;
use super::serve_cmd::BenchBus;
use super::server::{Instance, Site, endpoint, launch_on};
use crate::db::listener::API_LISTENER_NAME;
use crate::harness::NatsServer;

const SPREADS: [usize; 4] = [1, 2, 4, 8];
const FIXED: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(10);

/// What every measurement of the phase reads.
struct Cx<'a> {
    bench: &'a mut Bench,
    args: &'a BenchArgs,
    site: &'a Site,
    channel: &'a str,
    pg: PgCpu,
    /// Backends left out of PostgreSQL's CPU (listeners of other phases).
    skip: Vec<u32>,
    nats_pid: Option<u32>,
    relay_pid: Option<u32>,
}

/// An API instance of a spread: where, and its pid.
type Member = (String, u32);

pub(super) async fn measure(
    bench: &mut Bench,
    args: &BenchArgs,
    site: &Site,
    channel: &str,
) -> anyhow::Result<BusCapacity> {
    let Some(main_pid) = site.pid else {
        anyhow::bail!("--capacity needs the server's pid");
    };
    let own_nats = match &args.nats_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking(NatsServer::start)
                .await?
                .context("cannot start the benchmark's nats-server")?,
        ),
    };
    let nats_url = match (&args.nats_url, &own_nats) {
        (Some(u), _) => u.clone(),
        (None, Some(n)) => n.url(),
        (None, None) => unreachable!("started above"),
    };
    let pg = PgCpu::connect(&site.db_url).await?;
    let skip = pg.pids_of("ragctl-bench-raw").await?;
    let nats_pid = own_nats.as_ref().and_then(NatsServer::pid);
    let mut cx = Cx {
        bench,
        args,
        site,
        channel,
        pg,
        skip,
        nats_pid,
        relay_pid: None,
    };
    let mut owned = Vec::new();
    let first = (site.api.clone(), main_pid);
    let pg_half = half(&mut cx, &BenchBus::Postgres, Some(first), &mut owned).await;
    stop_all(&mut owned).await;
    let (mut spreads, pg_idle) = pg_half?;
    let relay_site = RelaySite {
        db_url: site.db_url.clone(),
        channel: channel.to_string(),
        nats_url: nats_url.clone(),
    };
    let nats = nats_half(&mut cx, &relay_site, &mut owned).await;
    stop_all(&mut owned).await;
    cx.bench.fleet.stop();
    let (nats_spreads, nats_idle, nats_ceiling) = nats?;
    spreads.extend(nats_spreads);
    let idle = vec![pg_idle, nats_idle];
    let failover = super::failover::measure(args, site, &relay_site, &cx.pg).await?;
    Ok(BusCapacity {
        sockets: args.capacity_sockets,
        users: args.capacity_users,
        rate: args.rate,
        targets: targets(&spreads, &idle, Some(&failover)),
        spreads,
        idle,
        nats_ceiling,
        failover: Some(failover),
    })
}

async fn stop_all(owned: &mut Vec<Instance>) {
    for i in owned.drain(..) {
        i.stop().await;
    }
}

/// The NATS half: the relay started and leading, the site server's
/// listener left out of PostgreSQL's CPU, the spreads, then the ceiling.
async fn nats_half(
    cx: &mut Cx<'_>,
    relay_site: &RelaySite,
    owned: &mut Vec<Instance>,
) -> anyhow::Result<(Vec<BusSpread>, IdleCost, u32)> {
    // The site server still LISTENs (the postgres bus): not NATS's cost.
    let site_listener = cx.pg.pids_of(API_LISTENER_NAME).await?;
    cx.skip.extend(site_listener);
    progress("capacity by bus: starting `ragctl relay`");
    let mut relay = RelayProc::spawn(relay_site)?;
    wait_leading(cx.pg.client(), &mut relay).await?;
    cx.relay_pid = Some(relay.pid);
    let bus = BenchBus::Nats {
        url: relay_site.nats_url.clone(),
        relay: false,
    };
    let (spreads, idle) = half(cx, &bus, None, owned).await?;
    let ceiling = match cx.args.no_ceiling {
        true => 0,
        false => {
            let c = cx.bench.ceiling(Kind::Bridge, 2000, cx.args.step).await?;
            progress(&format!(
                "capacity by bus: ceiling over NATS with 8 instances: {} events/s",
                c.events_per_s
            ));
            c.events_per_s
        }
    };
    relay.kill().await;
    Ok((spreads, idle, ceiling))
}

/// One bus: 1, 2, 4 and 8 instances (`first`, if given, is the first);
/// the idle cost is measured when the second starts, before it gets sockets.
async fn half(
    cx: &mut Cx<'_>,
    bus: &BenchBus,
    first: Option<Member>,
    owned: &mut Vec<Instance>,
) -> anyhow::Result<(Vec<BusSpread>, IdleCost)> {
    let mut members: Vec<Member> = first.into_iter().collect();
    let mut out = Vec::new();
    let mut idle = None;
    for n in SPREADS {
        while members.len() < n {
            progress(&format!(
                "capacity by bus: starting {} instance {}",
                bus.name(),
                members.len() + 1
            ));
            let names = ("bench_bus", cx.site.secret.as_str(), cx.channel);
            let i = launch_on(&cx.site.db_url, names, cx.args, bus).await?;
            members.push((i.api.clone(), i.pid));
            owned.push(i);
            if members.len() == 2 && idle.is_none() {
                idle = Some(idle_cost(cx, bus, members[1].1).await?);
            }
        }
        out.push(spread(cx, bus, &members).await?);
    }
    let idle = idle.context("measured when the second instance started")?;
    Ok((out, idle))
}

/// The CPU of `pid` (no sockets) while the fleet gets `--rate` events/s.
async fn idle_cost(cx: &mut Cx<'_>, bus: &BenchBus, pid: u32) -> anyhow::Result<IdleCost> {
    let read = || cpu_ns(pid).context("cannot read the idle instance's CPU");
    cx.bench.settle(Kind::Bridge).await?;
    // Its CPU with no events at all, over as long as the phase takes.
    let (quiet_from, at) = (read()?, std::time::Instant::now());
    tokio::time::sleep(FIXED).await;
    let quiet = read()?.saturating_sub(quiet_from) as f64 / at.elapsed().as_secs_f64();
    let (before, at) = (read()?, std::time::Instant::now());
    let phase = cx
        .bench
        .phase(Kind::Bridge, cx.args.rate, FIXED, DRAIN)
        .await?;
    let ns = read()?.saturating_sub(before) as f64;
    let events = phase.events.max(1) as f64;
    let background = quiet * at.elapsed().as_secs_f64();
    let cost = IdleCost {
        bus: bus.name(),
        events: phase.events,
        cpu_ms: round2(ns / 1e6),
        us_per_event: round2(ns / 1e3 / events),
        quiet_ms_per_s: round2(quiet / 1e6),
        marginal_us_per_event: round2((ns - background).max(0.0) / 1e3 / events),
    };
    progress(&format!(
        "capacity by bus: {} instance with no sockets: {:.2} µs per event ({:.2} ms/s with no events)",
        cost.bus, cost.us_per_event, cost.quiet_ms_per_s
    ));
    Ok(cost)
}

/// The sockets spread over `members`, a warm-up, then `--rate` for a few
/// seconds with every process's CPU read around it.
async fn spread(cx: &mut Cx<'_>, bus: &BenchBus, members: &[Member]) -> anyhow::Result<BusSpread> {
    move_fleet(cx, members).await?;
    let pids: Vec<u32> = members.iter().map(|m| m.1).collect();
    let backends = cx.pg.backends(&cx.skip).await?;
    let pg = PgSnap::take(&backends);
    let own = |p: Option<u32>| p.map(|p| (p, cpu_ns(p).unwrap_or(0)));
    let (relay, nats) = (own(cx.relay_pid), own(cx.nats_pid));
    let each: Vec<u64> = pids.iter().map(|&p| cpu_ns(p).unwrap_or(0)).collect();
    let f = cx
        .bench
        .phase(Kind::Bridge, cx.args.rate, FIXED, DRAIN)
        .await?;
    let per = |ns: u64| round2(ns as f64 / 1e3 / f.events.max(1) as f64);
    let since =
        |b: Option<(u32, u64)>| b.map(|(p, b)| per(cpu_ns(p).unwrap_or(b).saturating_sub(b)));
    let instance_us_per_event = pids
        .iter()
        .zip(&each)
        .map(|(&p, &b)| per(cpu_ns(p).unwrap_or(b).saturating_sub(b)))
        .collect();
    let sp = BusSpread {
        bus: bus.name(),
        instances: members.len(),
        events: f.events,
        lost: f.lost,
        p50_us: f.latency.map(|l| l.p50_us),
        p99_us: f.latency.map(|l| l.p99_us),
        pg_us_per_event: per(pg.since()),
        instance_us_per_event,
        relay_us_per_event: match bus {
            BenchBus::Nats { .. } => since(relay),
            BenchBus::Postgres => None,
        },
        nats_us_per_event: match bus {
            BenchBus::Nats { .. } => since(nats),
            BenchBus::Postgres => None,
        },
    };
    progress(&format!(
        "capacity by bus: {} × {}: {} lost, p50 {:?} µs, p99 {:?} µs, postgres {:.1} µs/event",
        sp.bus, sp.instances, sp.lost, sp.p50_us, sp.p99_us, sp.pg_us_per_event
    ));
    Ok(sp)
}

/// A new fleet over `members` (the old one closed first), fresh users, a
/// short discarded phase so that every subscription is in place.
async fn move_fleet(cx: &mut Cx<'_>, members: &[Member]) -> anyhow::Result<()> {
    let mut eps = Vec::new();
    for (api, _) in members {
        eps.push(endpoint(api).await?);
    }
    let users: Vec<Uuid> = (0..cx.args.capacity_users)
        .map(|_| Uuid::new_v4())
        .collect();
    let tokens: Vec<Arc<str>> = users
        .iter()
        .map(|&u| super::crowd::token(&cx.site.secret, u))
        .collect::<anyhow::Result<_>>()?;
    progress(&format!(
        "capacity by bus: {} sockets for {} users over {} instance(s)",
        cx.args.capacity_sockets,
        users.len(),
        members.len()
    ));
    let b = &mut *cx.bench;
    b.fleet.stop();
    b.fleet = start_fleet_on(&eps, &tokens, cx.args.capacity_sockets, b.clock).await?;
    b.users = users;
    b.server_pids = members.iter().map(|m| m.1).collect();
    b.api = members[0].0.clone();
    b.settle(Kind::Bridge).await?;
    b.phase(
        Kind::Bridge,
        cx.args.rate.min(1000),
        Duration::from_secs(1),
        DRAIN,
    )
    .await?;
    b.settle(Kind::Bridge).await
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
