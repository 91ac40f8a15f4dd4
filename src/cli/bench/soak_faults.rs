//! The soak's faults, on a schedule over the load: the API listeners'
//! backends killed every `LISTENER_EVERY`, a worker SIGKILLed (parse and
//! ingest in turn) and started again every `WORKER_EVERY`, the soak's own
//! PostgreSQL restarted at 40% of the run (and once in the warm-up too,
//! when usage is judged: see `Plan::pg_marks`) and API instance 0
//! restarted once (at 60%; its sockets resume from their cursors on the new
//! one). A process that exits unasked is counted and started again.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::soak_procs::{Api, Ground, Instances, Proc, say};
use super::soak_usage::{MIN_SPAN, warm_up};
use crate::db::embedded::Embedded;
use crate::db::listener::API_LISTENER_NAME;

const LISTENER_EVERY: Duration = Duration::from_secs(30);
const WORKER_EVERY: Duration = Duration::from_secs(60);
/// Errors kept for the report.
const KEEP_ERRORS: usize = 20;

/// What the faults did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    /// Rounds of listener kills, and backends killed in them.
    pub listener_rounds: u64,
    pub listener_backends: u64,
    pub worker_kills: u64,
    pub pg_restarts: u64,
    pub api_restarts: u64,
    /// Processes that exited without being told to (`name: status`).
    pub unexpected_exits: Vec<String>,
    /// Faults that could not be injected.
    pub errors: Vec<String>,
}

/// The processes under test.
pub(super) struct Fleet {
    pub(super) apis: Vec<Api>,
    /// `parse`, then `ingest`.
    pub(super) workers: Vec<Proc>,
    pub(super) urls: Instances,
}

/// When the one-off faults come.
pub(super) struct Plan {
    pub(super) length: Duration,
}

/// The one-off restarts come this long (at most 5% of the run) after
/// their mark, off the grid of the periodic kills (a worker started while
/// PostgreSQL is down exits: that is the two faults' coincidence, not what
/// either tests).
const OFF_GRID: Duration = Duration::from_secs(15);

impl Plan {
    fn off_grid(&self) -> Duration {
        OFF_GRID.min(self.length.mul_f64(0.05))
    }
    /// When PostgreSQL is restarted. When the run is long enough for
    /// usage to be judged, once halfway through the warm-up as well: the
    /// reconnect and resync paths' code is then read in (`RssFile`) before
    /// the warm-up sample, as in any server that has met one restart, and
    /// the restart at 40% shows whether a second one grows anything.
    fn pg_marks(&self) -> Vec<Duration> {
        let warm = warm_up(self.length);
        let mut marks = Vec::with_capacity(2);
        if warm + MIN_SPAN <= self.length {
            marks.push(warm / 2 + self.off_grid());
        }
        marks.push(self.length.mul_f64(0.4) + self.off_grid());
        marks
    }
    fn api_at(&self) -> Duration {
        self.length.mul_f64(0.6) + self.off_grid()
    }
}

/// The schedule's next instants.
struct Due {
    listener: Duration,
    worker: Duration,
    /// PostgreSQL restarts done (of `Plan::pg_marks`).
    pg: usize,
    api: bool,
    turn: usize,
}

/// Runs the faults until `plan.length` has passed or `stop`.
pub(super) async fn run(
    fleet: &mut Fleet,
    ground: &Ground,
    cluster: &Embedded,
    plan: &Plan,
    stop: &CancellationToken,
) -> FaultCounts {
    let start = Instant::now();
    let mut c = FaultCounts::default();
    let mut due = Due {
        listener: LISTENER_EVERY,
        worker: WORKER_EVERY,
        pg: 0,
        api: false,
        turn: 0,
    };
    while start.elapsed() < plan.length && !stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => break,
        }
        let now = start.elapsed();
        step(fleet, ground, cluster, plan, now, &mut due, &mut c).await;
        restart_exited(fleet, ground, &mut c).await;
    }
    c
}

/// Whatever is due at `now`.
async fn step(
    fleet: &mut Fleet,
    ground: &Ground,
    cluster: &Embedded,
    plan: &Plan,
    now: Duration,
    due: &mut Due,
    c: &mut FaultCounts,
) {
    if now >= due.listener {
        due.listener += LISTENER_EVERY;
        match kill_listeners(&ground.db_url).await {
            Ok(n) => {
                c.listener_rounds += 1;
                c.listener_backends += n;
            }
            Err(e) => note(c, format!("listener kill: {e:#}")),
        }
    }
    if now >= due.worker {
        due.worker += WORKER_EVERY;
        let who = Who::Worker(due.turn % fleet.workers.len());
        due.turn += 1;
        c.worker_kills += 1;
        if let Err(e) = restart(fleet, ground, who, Down::Kill).await {
            note(c, format!("restarting {}: {e:#}", who.name(fleet)));
        }
    }
    once(fleet, ground, cluster, plan, now, due, c).await;
}

/// The one-off restarts: PostgreSQL, then instance 0.
async fn once(
    fleet: &mut Fleet,
    ground: &Ground,
    cluster: &Embedded,
    plan: &Plan,
    now: Duration,
    due: &mut Due,
    c: &mut FaultCounts,
) {
    if plan.pg_marks().get(due.pg).is_some_and(|&at| now >= at) {
        due.pg += 1;
        say("restarting PostgreSQL (pg_ctl restart -m fast)");
        match cluster.restart().await {
            Ok(()) => c.pg_restarts += 1,
            Err(e) => note(c, format!("PostgreSQL restart: {e}")),
        }
    }
    if !due.api && now >= plan.api_at() {
        due.api = true;
        say("restarting API instance 0");
        match restart(fleet, ground, Who::Api(0), Down::Term).await {
            Ok(()) => c.api_restarts += 1,
            Err(e) => note(c, format!("API restart: {e:#}")),
        }
    }
}

fn note(c: &mut FaultCounts, what: String) {
    say(&what);
    if c.errors.len() < KEEP_ERRORS {
        c.errors.push(what);
    }
}

/// `pg_terminate_backend` on every API listener of the soak's cluster.
async fn kill_listeners(db_url: &str) -> anyhow::Result<u64> {
    let (db, conn) = crate::db::connect(db_url, "ragctl-soak-faults").await?;
    let conn = tokio::spawn(conn);
    let rows = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&API_LISTENER_NAME],
        )
        .await;
    drop(db);
    let _ = conn.await;
    Ok(rows?.iter().filter(|r| r.get::<_, bool>(0)).count() as u64)
}

/// One of the fleet's processes.
#[derive(Debug, Clone, Copy)]
enum Who {
    Worker(usize),
    Api(usize),
}

/// How a process goes down before it is started again.
enum Down {
    /// SIGKILL: the worker fault.
    Kill,
    /// SIGTERM (SIGKILL after 15 s): the API restart.
    Term,
    /// It exited on its own.
    Exited,
}

impl Who {
    fn every(fleet: &Fleet) -> Vec<Who> {
        let workers = (0..fleet.workers.len()).map(Who::Worker);
        workers.chain((0..fleet.apis.len()).map(Who::Api)).collect()
    }

    fn proc<'a>(&self, fleet: &'a mut Fleet) -> &'a mut Proc {
        match *self {
            Who::Worker(i) => &mut fleet.workers[i],
            Who::Api(i) => &mut fleet.apis[i].proc,
        }
    }

    fn name(&self, fleet: &mut Fleet) -> String {
        self.proc(fleet).name.clone()
    }
}

/// Brings `who` down, starts it again (its next start), and points an
/// API's sockets and uploaders at its new address. A worker that cannot
/// be started is left as it was (exited: the next round tries again).
async fn restart(fleet: &mut Fleet, ground: &Ground, who: Who, down: Down) -> anyhow::Result<()> {
    let p = who.proc(fleet);
    match down {
        Down::Kill => p.kill().await,
        Down::Term => p.stop().await,
        Down::Exited => {}
    }
    let starts = p.starts + 1;
    match who {
        Who::Worker(i) => {
            let kind = fleet.workers[i]
                .name
                .trim_start_matches("worker-")
                .to_string();
            fleet.workers[i] = ground.worker(&kind, starts)?;
        }
        Who::Api(i) => {
            let fresh = ground.api(i, starts).await?;
            fleet.urls.write().expect("instances")[i] = fresh.live();
            fleet.apis[i] = fresh;
        }
    }
    Ok(())
}

/// Counts and restarts any process that exited on its own.
async fn restart_exited(fleet: &mut Fleet, ground: &Ground, c: &mut FaultCounts) {
    for who in Who::every(fleet) {
        let p = who.proc(fleet);
        if !p.exited() {
            continue;
        }
        let what = format!("{}.{}: {}", p.name, p.starts, status(&mut p.child));
        c.unexpected_exits.push(what);
        if let Err(e) = restart(fleet, ground, who, Down::Exited).await {
            note(c, format!("restarting {}: {e:#}", who.name(fleet)));
        }
    }
}

fn status(child: &mut tokio::process::Child) -> String {
    match child.try_wait() {
        Ok(Some(s)) => s.to_string(),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_restarts_in_the_warm_up_only_when_usage_is_judged() {
        let secs = |s| Duration::from_secs(s);
        // 30 min: warm-up 180 s; restarts at 90 + 15 s and 720 + 15 s.
        let long = Plan { length: secs(1800) };
        assert_eq!(long.pg_marks(), [secs(105), secs(735)]);
        // 20 s: nothing is judged, one restart at 8 + 1 s.
        let short = Plan { length: secs(20) };
        assert_eq!(short.pg_marks(), [secs(9)]);
    }
}
