//! The run: start or find the server, measure every phase in order,
//! report, and turn missed targets into the exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::abuse_report::{AbuseReport, render as abuse_render};
use super::args::BenchArgs;
use super::capacity;
use super::crowd::{Crowd, token};
use super::fleet::{Endpoint, open_idle, raw_listener, start_fleet};
use super::machine::machine;
use super::mass_report::{Judged, judge, render as mass_render};
use super::phase::{Bench, Kind};
use super::phases::PhasesReport;
use super::progress::progress;
use super::publish::{PublishRuntime, connect_publisher};
use super::record::{Clock, Sink};
use super::report::{CeilingReport, Config, IdleReport, PhaseResult, Report};
use super::sample::rss_kib;
use super::server::{Site, endpoint, wait_ready};
use crate::cli::failure::Failure;
use crate::config::ConnectOpts;

pub async fn run(connect: ConnectOpts, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let _ = crate::cli::serve::raise_nofile_limit();
    let channel = connect.channel()?;
    let cancel = CancellationToken::new();
    if let Some(n) = args.abuse_child {
        return super::abuse_child::child(n).await;
    }
    if args.mass_child {
        return super::mass_child::child().await;
    }
    crate::cli::signal::cancel_on_signal(cancel.clone());
    if let Some(length) = args.soak {
        let (users, sockets, json) = (args.soak_users, args.soak_sockets, args.json);
        let opts = super::soak::SoakOpts {
            length,
            users,
            sockets,
            json,
        };
        return super::soak::run(opts, cancel).await;
    }
    if args.abuse {
        // A fresh server per phase: the abuse run starts (and stops) its own.
        let outcome = tokio::select! {
            r = super::abuse::run(&connect, &args, &channel) => r,
            _ = cancel.cancelled() => {
                eprintln!("ragctl: interrupted");
                return Ok(ExitCode::from(130));
            }
        };
        return conclude(&args, &Outcome::Abuse(Box::new(outcome?)));
    }
    if args.queue {
        // A fresh server per configuration, as for --abuse.
        let outcome = tokio::select! {
            r = super::queue::run(&connect, &args, &channel) => r,
            _ = cancel.cancelled() => {
                eprintln!("ragctl: interrupted");
                return Ok(ExitCode::from(130));
            }
        };
        return conclude(&args, &Outcome::Queue(Box::new(outcome?)));
    }
    let fleet = args.sockets > 0 && args.instances > 1;
    if args.bus == crate::config::BusKind::Nats && !(fleet || args.capacity) {
        return Err(anyhow!(
            "--bus nats is measured by --capacity or by --sockets N --instances M (M > 1) only"
        ));
    }
    if fleet {
        if args.server_url.is_some() {
            return Err(anyhow!(
                "--instances starts its own servers: drop --server-url"
            ));
        }
        // The run starts (and stops) its own instances and database.
        let outcome = tokio::select! {
            r = super::mass_fleet::run(&connect, &args, &channel) => r,
            _ = cancel.cancelled() => {
                eprintln!("ragctl: interrupted");
                return Ok(ExitCode::from(130));
            }
        };
        let judged = super::mass_fleet_report::judge(outcome?);
        return conclude(&args, &Outcome::Fleet(Box::new(judged)));
    }
    if let Some(set) = &args.retrieval {
        // A fresh server per mode, as for --queue.
        let outcome = tokio::select! {
            r = super::retrieval::run(&connect, &args, &channel, set) => r,
            _ = cancel.cancelled() => {
                eprintln!("ragctl: interrupted");
                return Ok(ExitCode::from(130));
            }
        };
        return conclude(&args, &Outcome::Retrieval(Box::new(outcome?)));
    }
    let site = Site::open(&connect, &args, &channel).await?;
    let outcome = tokio::select! {
        r = pick(&args, &site, &channel) => Some(r),
        _ = cancel.cancelled() => None,
    };
    if let Some(server) = site.own {
        progress("stopping the server and dropping its database");
        server.stop().await;
    }
    let Some(report) = outcome else {
        eprintln!("ragctl: interrupted");
        return Ok(ExitCode::from(130));
    };
    conclude(&args, &report?)
}

/// What a run produced: the phases, or the `--sockets` run.
enum Outcome {
    Phases(Box<PhasesReport>),
    Mass(Box<Judged>),
    Fleet(Box<super::mass_fleet_report::FleetJudged>),
    Abuse(Box<AbuseReport>),
    Fanout(Box<super::fanout::FanoutReport>),
    Queue(Box<super::queue_report::QueueReport>),
    Retrieval(Box<super::retrieval_report::RetrievalReport>),
}

async fn pick(args: &BenchArgs, site: &Site, channel: &str) -> anyhow::Result<Outcome> {
    if args.sockets == 0 && args.fanout_attack == 0 {
        return Ok(Outcome::Phases(Box::new(bench(args, site, channel).await?)));
    }
    wait_ready(&site.api).await?;
    let ep = endpoint(&site.api).await?;
    let machine = machine(&site.db_url).await;
    if args.fanout_attack > 0 {
        let report = super::fanout::run(args, site, channel, &ep, machine).await?;
        return Ok(Outcome::Fanout(Box::new(report)));
    }
    let report = super::mass::run(args, site, channel, &ep, machine).await?;
    Ok(Outcome::Mass(Box::new(judge(report))))
}

/// Prints the report; a missed target is a failed check.
fn conclude(args: &BenchArgs, outcome: &Outcome) -> anyhow::Result<ExitCode> {
    let (json, text, targets) = match outcome {
        Outcome::Phases(r) => (
            serde_json::to_string_pretty(r)?,
            super::phases::render(r),
            &r.base.targets,
        ),
        Outcome::Mass(j) => (serde_json::to_string_pretty(j)?, mass_render(j), &j.targets),
        Outcome::Fleet(j) => (
            serde_json::to_string_pretty(j)?,
            super::mass_fleet_report::render(j),
            &j.targets,
        ),
        Outcome::Abuse(a) => (
            serde_json::to_string_pretty(a)?,
            abuse_render(a),
            &a.targets,
        ),
        Outcome::Fanout(f) => (
            serde_json::to_string_pretty(f)?,
            super::fanout::render(f),
            &f.targets,
        ),
        Outcome::Queue(q) => (
            serde_json::to_string_pretty(q)?,
            super::queue_report::render(q),
            &q.targets,
        ),
        Outcome::Retrieval(r) => (
            serde_json::to_string_pretty(r)?,
            super::retrieval_report::render(r),
            &r.targets,
        ),
    };
    if args.json {
        println!("{json}");
    } else {
        print!("{text}");
    }
    let mut missed: Vec<&str> = targets
        .iter()
        .filter(|t| t.met == Some(false))
        .map(|t| t.key)
        .collect();
    missed.dedup();
    if missed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::check(anyhow!(
        "missed targets: {} (see the report)",
        missed.join(", ")
    ))
    .into())
}

/// Every phase in order: the resume catch-up if selected and idle sockets
/// on the fresh server, a warm-up, the latency runs (raw, then bridge), the
/// ceilings.
async fn bench(args: &BenchArgs, site: &Site, channel: &str) -> anyhow::Result<PhasesReport> {
    wait_ready(&site.api).await?;
    let ep = endpoint(&site.api).await?;
    let machine = machine(&site.db_url).await;
    let resume = match args.resume {
        true => Some(super::resume::measure(&ep, &site.db_url, &site.secret, channel).await?),
        false => None,
    };
    let idle = match args.idle_sockets {
        0 => None,
        n => Some(idle_sockets(&ep, site, n).await?),
    };
    let mut bench = Bench::start(args, site, channel, &ep).await?;
    bench.warm_up(args.rate).await?;
    let (raw, bridge) = bench.latency(args).await?;
    let ceiling = match args.no_ceiling {
        true => None,
        false => Some(bench.ceilings(args.step).await?),
    };
    let raw_ceiling = ceiling.as_ref().map(|c| c.raw.events_per_s);
    let nats = args.bus == crate::config::BusKind::Nats;
    let capacity = match args.capacity && !nats {
        true => Some(capacity::measure(&mut bench, args, site, channel, raw_ceiling).await?),
        false => None,
    };
    let capacity_bus = match args.capacity && nats {
        true => Some(super::capacity_bus::measure(&mut bench, args, site, channel).await?),
        false => None,
    };
    let more_targets = super::phases::targets(resume.as_ref(), capacity_bus.as_ref());
    let base = Report::new(
        machine,
        Config::new(args),
        idle,
        raw,
        bridge,
        ceiling,
        more_targets,
    );
    Ok(PhasesReport {
        base,
        resume,
        capacity,
        capacity_bus,
    })
}

/// The server's RSS before and after opening `n` sockets that only answer
/// pings, after a warm-up of 100.
async fn idle_sockets(ep: &Endpoint, site: &Site, n: usize) -> anyhow::Result<IdleReport> {
    let tokens: Vec<Arc<str>> = (0..100)
        .map(|_| token(&site.secret, Uuid::new_v4()))
        .collect::<anyhow::Result<_>>()?;
    progress("idle sockets: warming up with 100 sockets");
    let (warm, _, _) = open_idle(ep, &tokens, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = site.pid.and_then(rss_kib);
    progress(&format!("idle sockets: opening {n}"));
    let (held, opened, failed) = open_idle(ep, &tokens, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = site.pid.and_then(rss_kib);
    let per = match (before, after) {
        (Some(b), Some(a)) if opened > 0 => {
            Some(((a as f64 - b as f64) / opened as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let known = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    progress(&format!(
        "idle sockets: {opened} open, {failed} failed; RSS {} → {} KiB: {} KiB/socket",
        known(before),
        known(after),
        per.map_or("?".into(), |v| format!("{v:.2}"))
    ));
    drop(held);
    drop(warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(IdleReport {
        requested: n,
        opened,
        failed,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_socket: per,
    })
}

impl Bench {
    /// The publishers, the raw listener and the bridge's clients, connected.
    async fn start(
        args: &BenchArgs,
        site: &Site,
        channel: &str,
        ep: &Endpoint,
    ) -> anyhow::Result<Bench> {
        let users: Vec<Uuid> = (0..args.users).map(|_| Uuid::new_v4()).collect();
        let fleet = Crowd {
            users,
            clients: args.clients as usize,
        };
        Bench::connect(site, channel, ep, args.publishers, fleet).await
    }

    /// A bench whose fleet is `crowd`: client `c` for user `c % users`.
    pub(super) async fn connect(
        site: &Site,
        channel: &str,
        ep: &Endpoint,
        publishers: u64,
        crowd: Crowd,
    ) -> anyhow::Result<Bench> {
        let clock = Clock(Instant::now());
        let publish_rt = PublishRuntime::start()?;
        let mut conns = Vec::new();
        for _ in 0..publishers {
            let url = site.db_url.clone();
            let connecting = publish_rt
                .handle
                .spawn(async move { connect_publisher(&url).await });
            conns.push(connecting.await??);
        }
        let raw_channel = format!("bench_raw_{}", std::process::id());
        let raw_sink = Arc::new(Sink::new(1));
        let raw = raw_listener(&site.db_url, &raw_channel, raw_sink.clone(), clock).await?;
        let tokens: Vec<Arc<str>> = crowd
            .users
            .iter()
            .map(|&u| token(&site.secret, u))
            .collect::<anyhow::Result<_>>()?;
        progress(&format!(
            "connecting {} clients for {} users",
            crowd.clients,
            crowd.users.len()
        ));
        let fleet = start_fleet(ep, &tokens, crowd.clients, clock).await?;
        Ok(Bench {
            clock,
            publish_rt,
            publishers: conns,
            channel: channel.to_string(),
            raw_channel,
            raw_sink,
            _raw: raw,
            fleet,
            users: crowd.users,
            next_phase: 0,
            server_pids: site.pid.into_iter().collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            api: site.api.clone(),
        })
    }

    /// Both paths, short, discarded.
    async fn warm_up(&mut self, rate: u32) -> anyhow::Result<()> {
        progress("warming up");
        for kind in [Kind::Raw, Kind::Bridge] {
            let (length, drain) = (Duration::from_secs(1), Duration::from_secs(3));
            self.phase(kind, rate.min(1000), length, drain).await?;
            self.settle(kind).await?;
        }
        Ok(())
    }

    /// Latency at the chosen rate: raw NOTIFY → LISTEN, then the bridge.
    async fn latency(&mut self, args: &BenchArgs) -> anyhow::Result<(PhaseResult, PhaseResult)> {
        let drain = Duration::from_secs(10);
        let load = (args.rate, args.duration);
        let raw = self
            .announced_phase(("raw NOTIFY → LISTEN", ""), Kind::Raw, load, drain)
            .await?;
        self.settle(Kind::Raw).await?;
        let to = format!(" to {} clients / {} users", args.clients, args.users);
        let what = ("bridge pg_notify → WebSocket", to.as_str());
        let bridge = self
            .announced_phase(what, Kind::Bridge, load, drain)
            .await?;
        Ok((raw, bridge))
    }

    /// The zero-loss ceiling of each path, and their ratio.
    async fn ceilings(&mut self, step: Duration) -> anyhow::Result<CeilingReport> {
        let raw = self.ceiling(Kind::Raw, 2000, step).await?;
        let bridge = self.ceiling(Kind::Bridge, 2000, step).await?;
        let ratio = if raw.events_per_s > 0 {
            bridge.events_per_s as f64 / raw.events_per_s as f64
        } else {
            0.0
        };
        Ok(CeilingReport {
            raw,
            bridge,
            ratio: (ratio * 1000.0).round() / 1000.0,
        })
    }
}
