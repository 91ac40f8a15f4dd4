//! `ragctl bench --soak DURATION` (issue #20): everything at once for
//! DURATION against the real binary run as separate processes, on a
//! PostgreSQL cluster of the soak's own (so restarting it disturbs nothing
//! else): two `serve --no-workers` instances, a `worker parse` and a
//! `worker ingest`, `--soak-users` users uploading (some hostile files),
//! `--soak-sockets` WebSockets churning and resuming across both instances
//! with in-band token refreshes, and the faults of `soak_faults`. Then the
//! load stops, the queue drains, and `soak_check` compares every socket's
//! view with REST; `soak_report` judges.
//!
//! Files: `soak_procs` (the cluster and the children, logs to files),
//! `soak_load`, `soak_ws` and `soak_view` (the sockets and what they
//! believe), `soak_faults`, `soak_check`, `soak_report`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::soak_check::{agree, drain, panics};
use super::soak_faults::{self as faults, Fleet, Plan};
use super::soak_load::Load;
use super::soak_procs::{Ground, Urls, say, url_of, usage, usage_median};
use super::soak_report::{SoakReport, Usage, judge, missed, render};
use super::soak_ws::Sockets;
use crate::cli::failure::Failure;
use crate::db::embedded::Embedded;

/// What `--soak` was asked for.
pub struct SoakOpts {
    pub length: Duration,
    pub users: usize,
    pub sockets: usize,
    pub json: bool,
}

/// Instances of the API.
const APIS: usize = 2;
/// Readings of RSS and descriptors whose median is one sample.
const READINGS: usize = 5;

pub async fn run(opts: SoakOpts, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let (ground, cluster) = Ground::open(crate::harness::random_hex(32)).await?;
    say(&format!(
        "own PostgreSQL on port {}; logs in {}",
        cluster.port,
        ground.logs.display()
    ));
    let outcome = tokio::select! {
        r = soak(&opts, &ground, &cluster) => Some(r),
        _ = cancel.cancelled() => None,
    };
    if let Err(e) = cluster.stop().await {
        say(&format!("could not stop its PostgreSQL: {e}"));
    }
    let _ = std::fs::remove_dir_all(ground.dir.join("pg"));
    let Some(report) = outcome else {
        eprintln!("ragctl: interrupted");
        return Ok(ExitCode::from(130));
    };
    conclude(&opts, &report?)
}

fn conclude(opts: &SoakOpts, report: &SoakReport) -> anyhow::Result<ExitCode> {
    match opts.json {
        true => println!("{}", serde_json::to_string_pretty(report)?),
        false => print!("{}", render(report)),
    }
    let missed = missed(&report.checks);
    if missed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::check(anyhow!(
        "soak checks failed: {} (see the report)",
        missed.join(", ")
    ))
    .into())
}

/// The two instances (one after the other: the first migrates) and the
/// two workers.
async fn start_fleet(ground: &Ground) -> anyhow::Result<Fleet> {
    let mut apis = Vec::new();
    for i in 0..APIS {
        apis.push(ground.api(i, 1).await?);
    }
    let urls: Urls = std::sync::Arc::new(std::sync::RwLock::new(
        apis.iter().map(|a| a.url.clone()).collect(),
    ));
    let workers = vec![ground.worker("parse", 1)?, ground.worker("ingest", 1)?];
    Ok(Fleet {
        apis,
        workers,
        urls,
    })
}

/// After the warm-up: 10% of the run, at least a minute, at most the run.
fn warm_at(length: Duration) -> Duration {
    length
        .mul_f64(0.1)
        .max(Duration::from_secs(60))
        .min(length.mul_f64(0.9))
}

/// What the load phase left: the faults' counts, the uploads, the
/// samples of instance 1, how long it ran.
struct Loaded {
    faults: faults::FaultCounts,
    uploads: super::soak_load::LoadCounts,
    usage: Option<Usage>,
    seconds: f64,
}

async fn soak(o: &SoakOpts, ground: &Ground, cluster: &Embedded) -> anyhow::Result<SoakReport> {
    let mut fleet = start_fleet(ground).await?;
    let users: Vec<Uuid> = (0..o.users).map(|_| Uuid::new_v4()).collect();
    say(&format!(
        "{} users uploading, {} sockets, for {:?}",
        o.users, o.sockets, o.length
    ));
    let sockets = Sockets::start(fleet.urls.clone(), &ground.secret, &users, o.sockets)?;
    let loaded = load(o, ground, cluster, &mut fleet, &users).await?;
    say("load stopped; waiting for the queue to drain");
    let drained = drain(&ground.db_url).await?;
    say(&format!(
        "drained: {} (in {:.1} s); comparing every socket with REST",
        drained.drained, drained.seconds
    ));
    let agreement = agree(&sockets, &url_of(&fleet.urls, 1), &ground.secret, &users).await?;
    let ws = sockets.counters.snapshot();
    sockets.stop().await;
    stop_fleet(fleet).await;
    let (panics, panic_lines) = panics(&ground.log_files());
    let mut report = SoakReport {
        seconds: loaded.seconds,
        users: o.users,
        sockets: o.sockets,
        uploads: loaded.uploads,
        ws,
        faults: loaded.faults,
        drain: drained,
        agreement,
        usage: loaded.usage,
        panics,
        panic_lines,
        checks: vec![],
    };
    report.checks = judge(&report);
    Ok(report)
}

/// The uploads and the faults for `o.length`, instance 1 sampled after
/// the warm-up and at the end (it is never restarted: its growth is the
/// one judged).
async fn load(
    o: &SoakOpts,
    ground: &Ground,
    cluster: &Embedded,
    fleet: &mut Fleet,
    users: &[Uuid],
) -> anyhow::Result<Loaded> {
    let load = Load::start(&fleet.urls, &ground.secret, users)?;
    let (watched, warm) = (fleet.apis[1].proc.pid, warm_at(o.length));
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warm).await;
        usage_median(watched, READINGS).await
    });
    let started = std::time::Instant::now();
    let trail_stop = CancellationToken::new();
    let trail = tokio::spawn(trail(watched, trail_stop.clone()));
    let plan = Plan { length: o.length };
    let faults = faults::run(fleet, ground, cluster, &plan, &CancellationToken::new()).await;
    trail_stop.cancel();
    let trail = trail.await.unwrap_or_default();
    let warm_usage = sampler.await.ok().flatten();
    let end_usage = usage_median(watched, READINGS).await;
    let uploads = load.stop().await;
    let usage = judged_usage(warm, warm_usage, end_usage, trail);
    let seconds = started.elapsed().as_secs_f64().round();
    Ok(Loaded {
        faults,
        uploads,
        usage,
        seconds,
    })
}

/// Instance 1's two judged samples and its trajectory, if both were read.
fn judged_usage(
    warm: Duration,
    warm_usage: Option<(u64, u64)>,
    end_usage: Option<(u64, u64)>,
    trail: Vec<(u64, u64, u64)>,
) -> Option<Usage> {
    let ((rss_warm_kib, fds_warm), (rss_end_kib, fds_end)) = (warm_usage?, end_usage?);
    Some(Usage {
        process: "api-1".into(),
        warm_at_s: warm.as_secs_f64(),
        rss_warm_kib,
        rss_end_kib,
        fds_warm,
        fds_end,
        trail,
    })
}

/// One reading of `pid` a minute (s, RSS KiB, descriptors) until `stop`:
/// the trajectory between the two judged samples.
async fn trail(pid: u32, stop: CancellationToken) -> Vec<(u64, u64, u64)> {
    let (start, mut out) = (std::time::Instant::now(), Vec::new());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.cancelled() => return out,
        }
        if let Some((rss, fds)) = usage(pid) {
            out.push((start.elapsed().as_secs(), rss, fds));
        }
    }
}

async fn stop_fleet(fleet: Fleet) {
    for mut p in fleet
        .workers
        .into_iter()
        .chain(fleet.apis.into_iter().map(|a| a.proc))
    {
        p.stop().await;
    }
}
