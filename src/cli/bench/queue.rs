//! `ragctl bench --queue` (issue #18): the job queue under 50 honest users
//! and one hostile user who keeps 10 CPU-bomb PDFs queued.
//!
//! Each configuration (worker processes × slots per process) gets a fresh
//! database and `ragctl serve --no-workers`, plus that many `worker parse`
//! and `worker ingest` processes (slots in `RAG_WORKER_CONCURRENCY`). The
//! hostile user's bombs go first; once one is running, the honest users
//! upload their documents through the REST API; the run ends when every
//! honest document is `ingested` or `error` (or after a drain limit). Then
//! a parse-bound sub-phase queues text PDFs and times one `worker parse`
//! with 1 slot, then 2. The numbers come from the database (see
//! `queue_measure`); the report and its targets from `queue_report`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::BenchArgs;
use super::crowd::token;
use super::machine::machine;
use super::progress::progress;
use super::queue_docs::{BOMB, note, text_pdf};
use super::queue_load::{Tally, Uploader, honest, keep_bombs};
use super::queue_measure::{self as measure, Sampler, connect};
use super::queue_report::{
    Hostile, ParseRun, QueueConfig, QueueReport, QueueRun, Scaling, judge, load_1m, scaling_factor,
};
use super::queue_workers::{Spec, Workers};
use super::server::{Site, wait_ready};
use crate::config::ConnectOpts;

/// Honest users, and the hostile user's bombs kept queued.
const USERS: usize = 50;
const BOMBS: usize = 10;
/// After the last honest upload, how long the queue may take to drain.
const DRAIN: Duration = Duration::from_secs(600);
/// How long the first bomb may take to be claimed.
const FIRST_BOMB: Duration = Duration::from_secs(60);
/// Users of the parse-bound sub-phase; its PDFs' pages are
/// `--queue-parse-pages`.
const PDF_USERS: usize = 20;
/// Slots of the parse-bound runs, interleaved against the machine's drift.
const SCALING_RUNS: [usize; 4] = [1, 2, 1, 2];

pub(super) async fn run(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
) -> anyhow::Result<QueueReport> {
    let mut runs = Vec::new();
    let mut seen_machine = None;
    for &processes in &args.queue_processes {
        for &slots in &args.queue_slots {
            let (processes, slots) = (usize::from(processes), usize::from(slots));
            let site = Site::open(connect, args, channel).await?;
            if seen_machine.is_none() {
                seen_machine = Some(machine(&site.db_url).await);
            }
            progress(&format!("queue: {processes} process(es) × {slots} slot(s)"));
            let measured = configuration(&site, args, channel, processes, slots).await;
            if let Some(server) = site.own {
                server.stop().await;
            }
            runs.push(measured?);
        }
    }
    let scaling = match args.queue_parse_docs {
        0 => None,
        n => Some(scaling(connect, args, channel, n).await?),
    };
    let targets = judge(&runs, scaling.as_ref());
    Ok(QueueReport {
        machine: seen_machine.expect("at least one configuration"),
        config: QueueConfig {
            docs: args.queue_docs,
            honest_users: USERS,
            rate: args.queue_rate,
            bombs: BOMBS,
            doc_bytes: note(0).len(),
            bomb_bytes: BOMB.len(),
        },
        runs,
        scaling,
        targets,
    })
}

/// The database, the events channel, the server's log flag.
fn spec<'a>(site: &'a Site, channel: &'a str, args: &BenchArgs) -> Spec<'a> {
    Spec {
        db_url: &site.db_url,
        channel,
        copy_log: args.server_log,
    }
}

/// One configuration on a fresh server.
async fn configuration(
    site: &Site,
    args: &BenchArgs,
    channel: &str,
    processes: usize,
    slots: usize,
) -> anyhow::Result<QueueRun> {
    wait_ready(&site.api).await?;
    let mut workers = Workers::start(
        &spec(site, channel, args),
        &["parse", "ingest"],
        processes,
        slots,
    )?;
    let measured = load(site, args, &mut workers, processes, slots).await;
    workers.stop().await;
    measured
}

/// The bombs, then the honest load until drained; then the numbers.
async fn load(
    site: &Site,
    args: &BenchArgs,
    workers: &mut Workers,
    processes: usize,
    slots: usize,
) -> anyhow::Result<QueueRun> {
    let db = connect(&site.db_url).await?;
    let up = Arc::new(Uploader::new(&site.api)?);
    let hostile = Uuid::new_v4();
    let sampler = Sampler::start(&site.db_url).await?;
    let stop = CancellationToken::new();
    let bombs = tokio::spawn(keep_bombs(
        up.clone(),
        token(&site.secret, hostile)?,
        connect(&site.db_url).await?,
        hostile,
        BOMBS,
        stop.clone(),
    ));
    let _stop_bombs = stop.clone().drop_guard();
    let loaded = honest_load(site, args, workers, &db, &up, hostile).await?;
    let mut h = Hostile::default();
    let slot_source = measure::hostile(&db, hostile, &mut h).await?;
    stop.cancel();
    let bomb_tally = bombs.await?;
    (h.uploaded, h.upload_failures) = (bomb_tally.ok, bomb_tally.failures);
    h.upload_retries = bomb_tally.retried;
    let honest = measure::honest(&db, hostile).await?;
    let mut run = assemble(processes, slots, loaded, honest, h);
    run.slot_source = slot_source;
    run.slots_seen = sampler.stop().await;
    Ok(run)
}

/// The honest uploads, and the load average when they started.
struct Loaded {
    tally: Tally,
    load_before: Option<f64>,
}

/// Once a bomb runs, the honest uploads; then waits for them to drain (a
/// drain that gives up is reported, not an error).
async fn honest_load(
    site: &Site,
    args: &BenchArgs,
    workers: &mut Workers,
    db: &Client,
    up: &Arc<Uploader>,
    hostile: Uuid,
) -> anyhow::Result<Loaded> {
    let users: Vec<Arc<str>> = (0..USERS)
        .map(|_| token(&site.secret, Uuid::new_v4()))
        .collect::<anyhow::Result<_>>()?;
    wait_for(workers, "a bomb to be claimed", FIRST_BOMB, || {
        measure::running(db, hostile)
    })
    .await?;
    let n = args.queue_docs;
    progress(&format!("queue: bombs running; {n} honest uploads"));
    let (started, load_before) = (Instant::now(), load_1m());
    let tally = honest(up, &users, n, args.queue_rate, &|k| {
        (format!("note-{k}.md"), note(k))
    })
    .await;
    progress(&format!(
        "queue: {} uploaded in {:.1} s; waiting for the queue to drain",
        tally.ok,
        started.elapsed().as_secs_f64()
    ));
    let drained = wait_for(workers, "the honest documents", DRAIN, || async {
        Ok(measure::in_flight(db, hostile, true).await? == 0)
    })
    .await;
    if let Err(e) = &drained {
        progress(&format!("queue: {e:#}; reporting what finished"));
    }
    Ok(Loaded { tally, load_before })
}

/// The run's numbers (slots seen and their source are added after).
fn assemble(
    processes: usize,
    slots: usize,
    loaded: Loaded,
    honest: measure::Honest,
    hostile: Hostile,
) -> QueueRun {
    let docs_per_s = match honest.wall_s {
        w if w > 0.0 => honest.ingested as f64 / w,
        _ => 0.0,
    };
    QueueRun {
        processes,
        slots,
        slots_seen: Vec::new(),
        uploaded: loaded.tally.ok,
        upload_failures: loaded.tally.failures,
        late_starts: loaded.tally.late,
        upload_retries: loaded.tally.retried,
        ingested: honest.ingested,
        errored: honest.errored,
        unfinished: honest.unfinished,
        wall_s: honest.wall_s,
        docs_per_s,
        latency: honest.latency,
        fairness: honest.fairness,
        hostile,
        slot_source: "",
        load: (loaded.load_before, load_1m()),
    }
}

/// Polls `done` every 250 ms until it holds, a worker exits (an error
/// with its log) or `patience` passes (an error naming `what`).
async fn wait_for<F, Fut>(
    workers: &mut Workers,
    what: &str,
    patience: Duration,
    mut done: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if done().await? {
            return Ok(());
        }
        let exited = workers.exited();
        if !exited.is_empty() {
            bail!(
                "a worker exited while waiting for {what}:\n{}",
                exited.join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The parse-bound sub-phase: the same PDFs timed with 1 slot, then 2.
async fn scaling(
    connect: &ConnectOpts,
    args: &BenchArgs,
    channel: &str,
    docs: usize,
) -> anyhow::Result<Scaling> {
    let mut runs = Vec::new();
    for slots in SCALING_RUNS {
        let site = Site::open(connect, args, channel).await?;
        progress(&format!(
            "parse-bound: {docs} PDFs, one `worker parse` with {slots} slot(s)"
        ));
        let measured = parse_run(&site, args, channel, docs, slots).await;
        if let Some(server) = site.own {
            server.stop().await;
        }
        let r = measured?;
        progress(&format!(
            "parse-bound: {} slot(s): {:.2} jobs/s",
            slots, r.jobs_per_s
        ));
        runs.push(r);
    }
    Ok(Scaling {
        docs,
        pdf_bytes: text_pdf(0, usize::from(args.queue_parse_pages)).len(),
        factor: scaling_factor(&runs),
        runs,
    })
}

/// Queues `docs` PDFs with no worker running, then times one parse worker.
async fn parse_run(
    site: &Site,
    args: &BenchArgs,
    channel: &str,
    docs: usize,
    slots: usize,
) -> anyhow::Result<ParseRun> {
    wait_ready(&site.api).await?;
    let db: Client = connect(&site.db_url).await?;
    let up = Arc::new(Uploader::new(&site.api)?);
    let users: Vec<Arc<str>> = (0..PDF_USERS)
        .map(|_| token(&site.secret, Uuid::new_v4()))
        .collect::<anyhow::Result<_>>()?;
    let pages = usize::from(args.queue_parse_pages);
    let tally = honest(&up, &users, docs, 0.0, &|k| {
        (format!("doc-{k}.pdf"), text_pdf(k, pages))
    })
    .await;
    if tally.ok == 0 {
        bail!("no PDF was uploaded: {:?}", tally.failures);
    }
    let sampler = Sampler::start(&site.db_url).await?;
    let load_before = load_1m();
    let mut workers = Workers::start(&spec(site, channel, args), &["parse"], 1, slots)?;
    let waited = wait_for(&mut workers, "the parse jobs", DRAIN, || async {
        Ok(measure::parse_done(&db).await?.0 >= tally.ok)
    })
    .await;
    let load_after = load_1m();
    workers.stop().await;
    let slots_seen = sampler.stop().await;
    waited?;
    let (jobs, failed, wall_s) = measure::parse_done(&db).await?;
    Ok(ParseRun {
        slots,
        uploaded: tally.ok,
        upload_retries: tally.retried,
        upload_failures: tally.failures,
        slots_seen,
        jobs,
        failed,
        wall_s,
        jobs_per_s: if wall_s > 0.0 {
            jobs as f64 / wall_s
        } else {
            0.0
        },
        load: (load_before, load_after),
    })
}
