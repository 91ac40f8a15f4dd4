//! What a queue run measured, read from its database: the honest users'
//! upload → `ingested` latency (documents.created_at → updated_at, set
//! when the status became `ingested`, its last change), their fairness,
//! the slot-seconds per user, and (sampled while it runs) the slots each
//! worker process used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queue_report::{Hostile, SlotsSeen};
use super::queue_stats::{Latency, jain, latency};

/// How often the sampler reads the running jobs.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// A connection of the bench's own; its task runs until the client drops.
pub(super) async fn connect(db_url: &str) -> anyhow::Result<Client> {
    let (client, conn) = crate::db::connect(db_url, "ragctl-bench-queue").await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Per (kind, worker id): the most running jobs at once, and the owners.
type Seen = HashMap<(String, String), (usize, HashSet<String>)>;

/// Reads the running jobs' lease owners every 200 ms until stopped.
pub(super) struct Sampler {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub(super) async fn start(db_url: &str) -> anyhow::Result<Sampler> {
        let client = connect(db_url).await?;
        let seen = Arc::new(Mutex::new(Seen::new()));
        let stop = CancellationToken::new();
        let (s, c) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !c.is_cancelled() {
                if let Ok(rows) = client
                    .query("SELECT kind, lease_owner FROM jobs WHERE status = 'running' AND lease_owner IS NOT NULL", &[])
                    .await
                {
                    let owners: Vec<(String, String)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    add_sample(&mut s.lock().expect("seen"), &owners);
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = c.cancelled() => {}
                }
            }
        });
        Ok(Sampler { seen, stop, task })
    }

    /// Stops sampling; what each worker was seen using, sorted.
    pub(super) async fn stop(self) -> Vec<SlotsSeen> {
        self.stop.cancel();
        let _ = self.task.await;
        let seen = self.seen.lock().expect("seen");
        let mut out: Vec<SlotsSeen> = seen
            .iter()
            .map(|((kind, worker), (max, owners))| SlotsSeen {
                kind: kind.clone(),
                worker: worker.clone(),
                max_running: *max,
                owners: owners.len(),
            })
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.worker).cmp(&(&b.kind, &b.worker)));
        out
    }
}

/// The worker id of a lease owner: up to its last `#` (one owner per slot,
/// `{host}:{pid}:{kind}:{suffix}#{slot}`), or all of it.
pub(super) fn worker_id(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(w, _)| w)
}

/// Adds one sample of (kind, owner) of the running jobs.
fn add_sample(seen: &mut Seen, owners: &[(String, String)]) {
    let mut now: HashMap<(String, String), usize> = HashMap::new();
    for (kind, owner) in owners {
        let key = (kind.clone(), worker_id(owner).to_string());
        *now.entry(key.clone()).or_default() += 1;
        seen.entry(key).or_default().1.insert(owner.clone());
    }
    for (key, n) in now {
        let e = seen.entry(key).or_default();
        e.0 = e.0.max(n);
    }
}

/// The honest users' documents at the end of a run.
pub(super) struct Honest {
    pub(super) ingested: u64,
    pub(super) errored: u64,
    pub(super) unfinished: u64,
    pub(super) wall_s: f64,
    pub(super) latency: Option<Latency>,
    pub(super) fairness: Option<f64>,
}

/// Reads every document not of `hostile`.
pub(super) async fn honest(c: &Client, hostile: Uuid) -> anyhow::Result<Honest> {
    let rows = c
        .query(
            "SELECT user_id, status,
                    extract(epoch FROM updated_at - created_at)::float8 * 1000,
                    extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8
             FROM documents WHERE user_id <> $1",
            &[&hostile],
        )
        .await?;
    let (mut errored, mut unfinished) = (0, 0);
    let mut per_user: BTreeMap<Uuid, Vec<f64>> = BTreeMap::new();
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for r in &rows {
        first = first.min(r.get::<_, f64>(3));
        match r.get::<_, &str>(1) {
            "ingested" => {
                per_user.entry(r.get(0)).or_default().push(r.get(2));
                last = last.max(r.get::<_, f64>(4));
            }
            "error" => errored += 1,
            _ => unfinished += 1,
        }
    }
    let means: Vec<f64> = per_user
        .values()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    let all: Vec<f64> = per_user.into_values().flatten().collect();
    Ok(Honest {
        ingested: all.len() as u64,
        errored,
        unfinished,
        wall_s: if last > first { last - first } else { 0.0 },
        latency: latency(all),
        fairness: jain(&means),
    })
}

/// Slot-seconds per (kind, is the hostile user): `service_secs` (every
/// finished attempt, preempted and lapsed ones included) plus the running
/// attempts until now.
pub(super) async fn slot_secs(
    c: &Client,
    hostile: Uuid,
) -> anyhow::Result<(Vec<(String, bool, f64)>, &'static str)> {
    let (done, source) = ("service_secs", "service_secs");
    let sql = format!(
        "SELECT kind, user_id = $1, sum({done} + CASE WHEN status = 'running'
                THEN extract(epoch FROM clock_timestamp() - claimed_at)::float8 ELSE 0 END)::float8
         FROM jobs GROUP BY 1, 2"
    );
    let rows = c.query(&sql, &[&hostile]).await?;
    let v = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok((v, source))
}

/// The hostile user's documents by outcome, and its slot shares.
pub(super) async fn hostile(
    c: &Client,
    user: Uuid,
    hostile: &mut Hostile,
) -> anyhow::Result<&'static str> {
    let rows = c
        .query(
            "SELECT status || coalesce(': ' || error_message, ''), count(*)
             FROM documents WHERE user_id = $1 GROUP BY 1",
            &[&user],
        )
        .await?;
    hostile.outcomes = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let (secs, source) = slot_secs(c, user).await?;
    let sum = |f: &dyn Fn(&(String, bool, f64)) -> bool| -> f64 {
        secs.iter().filter(|r| f(r)).map(|r| r.2).sum()
    };
    let mine = sum(&|r| r.1);
    let total = sum(&|_| true);
    let parse_total = sum(&|r| r.0 == "parse");
    let parse_mine = sum(&|r| r.0 == "parse" && r.1);
    hostile.slot_secs = mine;
    hostile.total_slot_secs = total;
    hostile.slot_share = (total > 0.0).then(|| mine / total);
    hostile.parse_slot_share = (parse_total > 0.0).then(|| parse_mine / parse_total);
    Ok(source)
}

/// Parse jobs finished, failed, and first claim → last finish (s).
pub(super) async fn parse_done(c: &Client) -> anyhow::Result<(u64, u64, f64)> {
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'failed'),
                    coalesce(extract(epoch FROM max(updated_at) - min(claimed_at))::float8, 0)
             FROM jobs WHERE kind = 'parse' AND status IN ('success', 'failed')",
            &[],
        )
        .await?;
    Ok((
        row.get::<_, i64>(0) as u64,
        row.get::<_, i64>(1) as u64,
        row.get(2),
    ))
}

/// Documents not yet `ingested` nor `error`: `user`'s, or when `others`
/// everyone else's.
pub(super) async fn in_flight(c: &Client, user: Uuid, others: bool) -> anyhow::Result<u64> {
    let sql = match others {
        false => {
            "SELECT count(*) FROM documents WHERE user_id = $1 AND status NOT IN ('ingested', 'error')"
        }
        true => {
            "SELECT count(*) FROM documents WHERE user_id <> $1 AND status NOT IN ('ingested', 'error')"
        }
    };
    Ok(c.query_one(sql, &[&user]).await?.get::<_, i64>(0) as u64)
}

/// Whether a parse job of `user` is running.
pub(super) async fn running(c: &Client, user: Uuid) -> anyhow::Result<bool> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE user_id = $1 AND kind = 'parse' AND status = 'running')",
            &[&user],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_grouped_by_worker_id() {
        assert_eq!(worker_id("h:12:parse:abcd1234#3"), "h:12:parse:abcd1234");
        assert_eq!(worker_id("h:12:parse:abcd1234"), "h:12:parse:abcd1234");
        let mut seen = Seen::new();
        let o = |k: &str, w: &str| (k.to_string(), w.to_string());
        add_sample(
            &mut seen,
            &[o("parse", "w1#0"), o("parse", "w1#1"), o("parse", "w2#0")],
        );
        add_sample(&mut seen, &[o("parse", "w1#2"), o("ingest", "w3")]);
        let get = |k: &str, w: &str| {
            let (max, owners) = &seen[&(k.to_string(), w.to_string())];
            (*max, owners.len())
        };
        assert_eq!(get("parse", "w1"), (2, 3));
        assert_eq!(get("parse", "w2"), (1, 1));
        assert_eq!(get("ingest", "w3"), (1, 1));
    }
}
