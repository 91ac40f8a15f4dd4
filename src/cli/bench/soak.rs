//! `ragctl bench --soak DURATION` (issue #20): everything at once for
//! DURATION against the real binary run as separate processes, on a
//! PostgreSQL cluster of the soak's own (so restarting it disturbs nothing
//! else): two `serve --no-workers` instances, a `worker parse` and a
//! `worker ingest`, `--soak-users` users uploading (some hostile files),
//! `--soak-sockets` WebSockets churning and resuming across both instances
//! with in-band token refreshes, and the faults of `soak_faults`, while
//! `soak_usage` watches each instance's memory and descriptors. Then the
//! load stops, the queue drains, and `soak_check` compares every socket's
//! view with REST; `soak_report` judges. The soak's folder (its logs) is
//! removed only if every check passed.
//!
//! Files: `soak_procs` (the cluster and the children, logs to files),
//! `soak_load`, `soak_ws` and `soak_view` (the sockets and what they
//! believe), `soak_faults`, `soak_usage`, `soak_check`, `soak_report`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::soak_check::{agree, drain, panics};
use super::soak_faults::{self as faults, Fleet, Plan};
use super::soak_load::Load;
use super::soak_procs::{Ground, Instances, say, url_of};
use super::soak_report::{SoakReport, judge, missed, render};
use super::soak_usage::{InstanceUsage, Span, watch};
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

pub async fn run(opts: SoakOpts, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let (ground, cluster) = Ground::open(crate::harness::random_hex(32)).await?;
    say(&format!(
        "own PostgreSQL on port {}; logs in {} (removed if every check passes)",
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
    let passed = matches!(&outcome, Some(Ok(r)) if missed(&r.checks).is_empty());
    tidy(&ground, passed);
    let Some(report) = outcome else {
        eprintln!("ragctl: interrupted");
        return Ok(ExitCode::from(130));
    };
    conclude(&opts, &report?)
}

/// The soak's folder (its logs, the ready files) goes once every check
/// passed; after a failure, an error or an interrupt it stays, named on
/// stderr.
fn tidy(ground: &Ground, passed: bool) {
    if !passed {
        say(&format!("logs kept in {}", ground.logs.display()));
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(&ground.dir) {
        say(&format!("could not remove {}: {e}", ground.dir.display()));
    }
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
    let urls: Instances = std::sync::Arc::new(std::sync::RwLock::new(
        apis.iter().map(|a| a.live()).collect(),
    ));
    let workers = vec![ground.worker("parse", 1)?, ground.worker("ingest", 1)?];
    Ok(Fleet {
        apis,
        workers,
        urls,
    })
}

/// What the load phase left: the faults' counts, the uploads, each API
/// instance's samples, how long it ran.
struct Loaded {
    faults: faults::FaultCounts,
    uploads: super::soak_load::LoadCounts,
    usage: Vec<InstanceUsage>,
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

/// The uploads and the faults for `o.length`, every API instance watched
/// (`soak_usage`): a reading a minute, and its growth from the warm-up
/// after its last start to the end, where that span is long enough.
async fn load(
    o: &SoakOpts,
    ground: &Ground,
    cluster: &Embedded,
    fleet: &mut Fleet,
    users: &[Uuid],
) -> anyhow::Result<Loaded> {
    let load = Load::start(&fleet.urls, &ground.secret, users)?;
    let span = Span {
        start: tokio::time::Instant::now(),
        length: o.length,
    };
    let stop = CancellationToken::new();
    let watchers: Vec<_> = (0..APIS)
        .map(|i| tokio::spawn(watch(i, fleet.urls.clone(), span, stop.clone())))
        .collect();
    let plan = Plan { length: o.length };
    let faults = faults::run(fleet, ground, cluster, &plan, &CancellationToken::new()).await;
    stop.cancel();
    let mut usage = Vec::new();
    for w in watchers {
        usage.push(w.await?);
    }
    let uploads = load.stop().await;
    Ok(Loaded {
        faults,
        uploads,
        usage,
        seconds: span.start.elapsed().as_secs_f64().round(),
    })
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
