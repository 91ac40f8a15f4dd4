//! `--sockets N --instances M [--bus postgres|nats]`: N WebSockets held
//! over M API instances (`serve --no-workers` on one fresh database), as
//! one process may hold only as many sockets as its open-file limit. The
//! run:
//!
//! 1. the instances start (with `--bus nats`, on a nats-server of the
//!    bench's own, all relay candidates); a sample fleet (`--sample`
//!    sockets in this process, one user each, user `u` on instance
//!    `u mod M`) connects; the instances' RSS is read;
//! 2. the rest open from `--client-procs` client processes (`mass_child`),
//!    socket `i` to instance `i mod M`, each for a user of its own;
//! 3. the instances' RSS (and the relay's, and the nats-server's) once all
//!    are held, then events at `--rate` to the sample for `--duration`;
//! 4. the client processes report whether any socket closed meanwhile.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::args::BenchArgs;
use super::crowd::{Crowd, token};
use super::fleet::{Endpoint, start_fleet_on};
use super::limits::Limits;
use super::machine::machine;
use super::mass::{hold_latency, per_socket_kib, rate};
use super::mass_child::{ChildTally, Clients, Share, shares};
use super::phase::Bench;
use super::progress::progress;
use super::report::{Machine, PhaseResult};
use super::sample::{gauge, rss_kib};
use super::serve_cmd::BenchBus;
use super::server::{Instance, Site, endpoint, launch_on, scratch_db, wait_ready};
use crate::config::BusKind;
use crate::config::ConnectOpts;
use crate::harness::{NatsServer, random_hex};

/// Sockets per client process when `--client-procs` is 0 (under its
/// 20,000 open files, with room for the runtime).
const PER_CLIENT_PROC: usize = 16_000;
/// Let the allocators and the servers settle before reading RSS.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub machine: Machine,
    pub limits: Limits,
    pub bus: String,
    pub instances: usize,
    pub client_procs: usize,
    /// `--sockets`: all the sockets asked for, the sample included.
    pub asked: usize,
    pub sample_sockets: usize,
    /// Sockets the client processes tried (the instances' caps may allow
    /// fewer than asked).
    pub tried: usize,
    pub opened: usize,
    pub failed: usize,
    pub errors: std::collections::BTreeMap<String, usize>,
    /// Client-process sockets accepted per second, all instances together.
    pub accept_per_s: f64,
    /// Sockets held at the end, the sample included.
    pub held: usize,
    /// Client-process sockets closed while held (must be 0).
    pub dropped: usize,
    /// Each instance's RSS with the sample only, and with all held.
    pub rss_base_kib: Vec<Option<u64>>,
    pub rss_held_kib: Vec<Option<u64>>,
    /// `ragctl_ws_sockets` of each instance while all are held.
    pub sockets_per_instance: Vec<Option<u64>>,
    /// The instances' RSS summed, with all held.
    pub rss_total_kib: Option<u64>,
    /// Growth of the summed RSS per client-process socket.
    pub kib_per_socket: Option<f64>,
    /// With `--bus nats`: which instance was the relay, and the RSS of it
    /// and of the nats-server.
    pub relay: Option<Relay>,
    /// The client processes' RSS summed (the clients' cost).
    pub clients_rss_kib: Option<u64>,
    pub sample: PhaseResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct Relay {
    /// Index of the instance whose `ragctl_relay_leader` was 1.
    pub instance: Option<usize>,
    pub rss_kib: Option<u64>,
    pub nats_server_rss_kib: Option<u64>,
}

/// The run on a fresh database, dropped at the end.
pub(super) async fn run(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
) -> anyhow::Result<FleetReport> {
    let db = scratch_db(connect).await?;
    progress(&format!("database {} created", db.name));
    let result = with_bus(&db.url, args, channel).await;
    if let Err(e) = db.drop_now().await {
        eprintln!("bench: warning: could not drop database {}: {e:#}", db.name);
    }
    result
}

/// Starts the nats-server if asked, the instances, and runs.
async fn with_bus(db_url: &str, args: &BenchArgs, channel: &str) -> anyhow::Result<FleetReport> {
    let nats = match args.bus {
        BusKind::Nats => Some(NatsServer::start()?),
        BusKind::Postgres => None,
    };
    let bus = nats
        .as_ref()
        .map_or(BenchBus::Postgres, |n| BenchBus::Nats {
            url: n.url(),
            relay: true,
        });
    let secret = random_hex(32);
    let mut instances = Vec::new();
    let result = async {
        for k in 0..args.instances {
            progress(&format!(
                "starting API instance {} ({} bus)",
                k + 1,
                bus.name()
            ));
            let name = format!("bench_fleet{k}");
            instances.push(launch_on(db_url, (&name, &secret, channel), args, &bus).await?);
        }
        let site = Site {
            db_url: db_url.to_string(),
            secret: secret.clone(),
            api: instances[0].api.clone(),
            pid: Some(instances[0].pid),
            own: None,
        };
        held(args, &site, channel, &instances, nats.as_ref()).await
    }
    .await;
    progress("stopping the instances");
    for i in instances {
        i.stop().await;
    }
    result
}

/// How many client-process sockets, and in how many processes.
fn plan(args: &BenchArgs, limits: &Limits, sample: usize) -> (usize, usize) {
    let n = args.instances as usize;
    let cap = limits.server_ws_cap.map_or(usize::MAX, |c| c as usize);
    let mass = (args.sockets - sample).min(cap.saturating_mul(n).saturating_sub(sample));
    if mass + sample < args.sockets {
        progress(&format!(
            "the instances take at most {cap} WebSockets each: {} of the {} asked",
            mass + sample,
            args.sockets
        ));
    }
    let procs = match args.client_procs {
        0 => mass.div_ceil(PER_CLIENT_PROC).max(1),
        k => k,
    };
    (mass, procs)
}

/// Everything once the instances run.
async fn held(
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    instances: &[Instance],
    nats: Option<&NatsServer>,
) -> anyhow::Result<FleetReport> {
    let apis: Vec<String> = instances.iter().map(|i| i.api.clone()).collect();
    let pids: Vec<u32> = instances.iter().map(|i| i.pid).collect();
    let (eps, machine, limits) = survey(site, &apis).await?;
    let sample = args.sample.min(args.sockets);
    let (mass, procs) = plan(args, &limits, sample);
    let mut bench = sample_bench(args, site, channel, &eps, sample).await?;
    bench.server_pids = pids.clone();
    let base = settled_rss(&pids).await;
    let shares = shares(&apis, &site.secret, (0, mass), procs);
    let (clients, opened, opening) = open_mass(&shares, eps.len()).await?;
    let r = read_held(&apis, &pids, nats, &clients).await;
    let sample_result = hold_latency(&mut bench, args).await?;
    let last = ChildTally::sum(&clients.stop().await?);
    let total = sum(&r.rss_held_kib);
    let sample_held = bench.fleet.connected.load(Ordering::SeqCst);
    Ok(FleetReport {
        machine,
        limits,
        bus: args.bus.as_str().to_string(),
        instances: eps.len(),
        client_procs: procs,
        asked: args.sockets,
        sample_sockets: sample,
        tried: mass,
        opened: opened.opened,
        failed: opened.failed,
        accept_per_s: rate(opened.opened, opening),
        held: last.opened - last.dropped + sample_held,
        dropped: last.dropped,
        kib_per_socket: sum(&base)
            .zip(total)
            .filter(|_| opened.opened > 0)
            .map(|(b, a)| per_socket_kib(b, a, opened.opened)),
        errors: opened.errors,
        rss_base_kib: base,
        rss_total_kib: total,
        rss_held_kib: r.rss_held_kib,
        sockets_per_instance: r.sockets_per_instance,
        relay: r.relay,
        clients_rss_kib: r.clients_rss_kib,
        sample: sample_result,
    })
}

/// The instances' endpoints once ready, the machine, the limits.
async fn survey(site: &Site, apis: &[String]) -> anyhow::Result<(Vec<Endpoint>, Machine, Limits)> {
    let mut eps = Vec::new();
    for api in apis {
        wait_ready(api).await?;
        eps.push(endpoint(api).await?);
    }
    let machine = machine(&site.db_url).await;
    let mut limits = Limits::take(site.pid);
    limits.server_ws_cap = gauge(&site.api, "ragctl_ws_connections_limit")
        .await
        .map(|v| v as u64);
    progress(&limits.describe());
    Ok((eps, machine, limits))
}

/// Starts the client processes and waits for each to report its sockets
/// open (or failed): their tallies summed, and how long it took.
async fn open_mass(
    shares: &[Share],
    instances: usize,
) -> anyhow::Result<(Clients, ChildTally, Duration)> {
    let mass: usize = shares.iter().map(|s| s.count).sum();
    progress(&format!(
        "opening {mass} sockets from {} client processes over {instances} instances",
        shares.len()
    ));
    let started = Instant::now();
    let mut clients = Clients::start(shares)?;
    let opened = ChildTally::sum(&clients.next().await?);
    let opening = started.elapsed();
    progress(&format!(
        "{} open, {} failed after {:.1} s",
        opened.opened,
        opened.failed,
        opening.as_secs_f64()
    ));
    Ok((clients, opened, opening))
}

/// What is read once all are held: the instances' RSS and sockets, the
/// relay's, the clients'. The rest of the report is filled in by `held`.
async fn read_held(
    apis: &[String],
    pids: &[u32],
    nats: Option<&NatsServer>,
    clients: &Clients,
) -> Readings {
    let rss = settled_rss(pids).await;
    let on_each = per_instance(apis, "ragctl_ws_sockets").await;
    progress(&format!(
        "sockets per instance: {on_each:?}; RSS KiB: {rss:?}"
    ));
    Readings {
        relay: relay(apis, &rss, nats).await,
        clients_rss_kib: Some(clients.pids().into_iter().filter_map(rss_kib).sum()),
        rss_held_kib: rss,
        sockets_per_instance: on_each,
    }
}

/// What `read_held` read.
struct Readings {
    rss_held_kib: Vec<Option<u64>>,
    sockets_per_instance: Vec<Option<u64>>,
    relay: Option<Relay>,
    clients_rss_kib: Option<u64>,
}

/// The publishers and the sample fleet: `sample` sockets, one user each,
/// user `u` on instance `u mod M`.
async fn sample_bench(
    args: &BenchArgs,
    site: &Site,
    channel: &str,
    eps: &[Endpoint],
    sample: usize,
) -> anyhow::Result<Bench> {
    let users: Vec<Uuid> = (0..sample).map(|_| Uuid::new_v4()).collect();
    let crowd = Crowd {
        users: users.clone(),
        clients: 0,
    };
    let mut bench = Bench::connect(site, channel, &eps[0], args.publishers, crowd).await?;
    let tokens = users
        .iter()
        .map(|&u| token(&site.secret, u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    progress(&format!(
        "sample: {sample} sockets over {} instances",
        eps.len()
    ));
    bench.fleet = start_fleet_on(eps, &tokens, sample, bench.clock).await?;
    Ok(bench)
}

/// Each instance's RSS, once settled.
async fn settled_rss(pids: &[u32]) -> Vec<Option<u64>> {
    tokio::time::sleep(SETTLE).await;
    pids.iter().map(|&p| rss_kib(p)).collect()
}

fn sum(v: &[Option<u64>]) -> Option<u64> {
    v.iter().copied().sum()
}

/// An unlabelled metric of every instance.
async fn per_instance(apis: &[String], name: &str) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for api in apis {
        out.push(gauge(api, name).await.map(|v| v as u64));
    }
    out
}

/// The relay (the instance leading it) and the nats-server, with `--bus nats`.
async fn relay(apis: &[String], rss: &[Option<u64>], nats: Option<&NatsServer>) -> Option<Relay> {
    let nats = nats?;
    let leaders = per_instance(apis, "ragctl_relay_leader").await;
    let instance = leaders.iter().position(|l| *l == Some(1));
    Some(Relay {
        instance,
        rss_kib: instance.and_then(|k| rss[k]),
        nats_server_rss_kib: nats.pid().and_then(rss_kib),
    })
}
