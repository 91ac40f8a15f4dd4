//! Slots (issue #18 items 1 and 4): one worker process runs
//! `--concurrency` jobs at once, each under its own lease owner; crash
//! take-over and SIGTERM work slot by slot. Jobs are made to last with the
//! hidden `RAG_WORKER_JOB_DELAY_MS`, so "running" is a state to wait for.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use uuid::Uuid;

const FILES: [&str; 3] = ["handbook.txt", "handbook.md", "handbook.html"];

/// A parse worker with three slots whose jobs never end on their own.
fn stuck_worker(db: &TestDb, env: &[(&str, &str)]) -> Proc {
    stuck_worker_of(db, "parse", env)
}

fn stuck_worker_of(db: &TestDb, kind: &str, env: &[(&str, &str)]) -> Proc {
    let mut env = env.to_vec();
    env.push(("RAG_WORKER_JOB_DELAY_MS", "600000"));
    let args = ["worker", kind, "--concurrency", "3"];
    Proc::spawn(&format!("stuck {kind} worker"), &db.url, &args, &env)
}

/// Uploads the three files as `user`; their document ids.
async fn upload_three(api: &Api, user: Uuid) -> Vec<String> {
    let mut ids = Vec::new();
    for file in FILES {
        let doc = upload(api, user, file).await;
        ids.push(doc["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Waits until `n` parse jobs are `running`; their lease owners.
async fn running_owners(db: &TestDb, n: usize, worker: &Proc) -> Vec<String> {
    running_owners_of(db, "parse", n, worker).await
}

async fn running_owners_of(db: &TestDb, kind: &str, n: usize, worker: &Proc) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = db
            .query(&format!(
                "SELECT lease_owner FROM jobs WHERE kind = '{kind}' AND status = 'running'"
            ))
            .await;
        if rows.len() == n {
            return rows.iter().map(|r| r.get(0)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} jobs running; log:\n{}",
            rows.len(),
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Owner strings are `{worker id}#{slot}`: the worker id and the slot.
fn split_owner(owner: &str) -> (&str, &str) {
    owner
        .rsplit_once('#')
        .unwrap_or_else(|| panic!("no #slot in {owner}"))
}

/// (status, retry_count, lease_owner) of each document's parse job.
async fn parse_jobs(db: &TestDb, ids: &[String]) -> Vec<(String, i32, Option<String>)> {
    let mut out = Vec::new();
    for id in ids {
        let row = &db
            .query(&format!(
                "SELECT status, retry_count, lease_owner FROM jobs
                 WHERE document_id = '{id}' AND kind = 'parse'"
            ))
            .await[0];
        out.push((row.get(0), row.get(1), row.get(2)));
    }
    out
}

#[tokio::test]
async fn three_slots_run_three_jobs_at_once_under_one_worker_id() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let env = [
        ("RAG_WORKER_SHUTDOWN_GRACE_SECS", "1"),
        ("RAG_WORKER_METRICS_ADDR", "127.0.0.1:0"),
    ];
    let worker = stuck_worker(&db, &env);
    upload_three(&api, Uuid::new_v4()).await;
    let owners = running_owners(&db, 3, &worker).await;
    assert_one_worker_three_slots(&owners, &worker, "parse");
    // The worker's own /metrics: three slots busy, three waits recorded.
    let line = worker.wait_line("metrics on http://").await;
    let url = line[line.find("http://").unwrap()..].trim().to_string();
    wait_metric(&url, "ragctl_worker_slots{kind=\"parse\",state=\"busy\"} 3").await;
    wait_metric(&url, "ragctl_worker_slots{kind=\"parse\",state=\"idle\"} 0").await;
    wait_metric(&url, "ragctl_queue_wait_seconds_count{kind=\"parse\"} 3").await;
}

/// Scrapes `url` until a line reads exactly `line`.
async fn wait_metric(url: &str, line: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = http().get(url).send().await.unwrap().text().await.unwrap();
        if body.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ingest has the same slots: three documents parsed by an ordinary
/// worker are ingested three at once by one with `--concurrency 3`.
#[tokio::test]
async fn ingest_slots_run_three_jobs_at_once() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let grace = [("RAG_WORKER_SHUTDOWN_GRACE_SECS", "1")];
    let worker = stuck_worker_of(&db, "ingest", &grace);
    let _parse = common::worker(&db, "parse", &FAST_RETRIES);
    upload_three(&api, Uuid::new_v4()).await;
    let owners = running_owners_of(&db, "ingest", 3, &worker).await;
    assert_one_worker_three_slots(&owners, &worker, "ingest");
}

/// Three distinct owners, `#0` to `#2` of one worker id naming `worker`.
fn assert_one_worker_three_slots(owners: &[String], worker: &Proc, kind: &str) {
    let distinct: BTreeSet<&String> = owners.iter().collect();
    assert_eq!(distinct.len(), 3, "three lease owners: {owners:?}");
    let ids: BTreeSet<&str> = owners.iter().map(|o| split_owner(o).0).collect();
    assert_eq!(ids.len(), 1, "one worker id: {owners:?}");
    let id = ids.into_iter().next().unwrap();
    assert!(
        id.contains(&format!(":{}:{kind}:", worker.pid())),
        "the worker id names the process: {id}"
    );
    let slots: BTreeSet<&str> = owners.iter().map(|o| split_owner(o).1).collect();
    assert_eq!(slots, BTreeSet::from(["0", "1", "2"]), "{owners:?}");
}

/// SIGKILL with three jobs running: another worker takes all three over;
/// each lapsed attempt counts as a failed one (`retry_count` 1), is
/// announced, and the job then ends `success`.
#[tokio::test]
async fn a_killed_worker_s_three_jobs_are_all_taken_over() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let fast = [("RAG_JOB_LEASE_SECS", "2"), ("RAG_WORKER_POLL_MS", "200")];
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let mut stuck = stuck_worker(&db, &fast);
    let ids = upload_three(&api, user).await;
    let owners = running_owners(&db, 3, &stuck).await;
    stuck.signal(libc::SIGKILL);
    stuck.wait_exit().await;

    // The rescuers keep the default lease: only the dead worker's lapses,
    // however slow a busy machine makes them.
    let args = ["worker", "parse", "--concurrency", "3"];
    let rescuer = Proc::spawn("rescuer", &db.url, &args, &FAST_RETRIES);
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    for id in &ids {
        wait_status(&api, user, id, "ingested").await;
    }
    for (status, retries, _) in parse_jobs(&db, &ids).await {
        assert_eq!((status.as_str(), retries), ("success", 1), "{owners:?}");
    }
    let lapsed = ragctl::workers::LEASE_LAPSED;
    for id in &ids {
        let doc = s(id);
        let parse_job = |status: &str| {
            let want = [("document_id", doc.clone()), ("kind", s("parse"))];
            let status = s(status);
            move |f: &serde_json::Value| {
                is(f, "job.status_updated", &want) && f["payload"]["status"] == status
            }
        };
        // Frames already read while waiting for another document count too.
        let seen = client
            .frames
            .iter()
            .find(|f| parse_job("success")(f))
            .cloned();
        let done = match seen {
            Some(f) => f,
            None => {
                client
                    .expect("the parse job's success", parse_job("success"))
                    .await
            }
        };
        assert_eq!(done["payload"]["retry_count"], 1, "{done}");
        // Queued again by the take-over (the upload's `queued` has retry 0).
        let frames = &client.frames;
        let requeued = frames
            .iter()
            .position(|f| parse_job("queued")(f) && f["payload"]["retry_count"] == 1);
        let requeued = requeued.unwrap_or_else(|| panic!("no lapse event: {frames:#?}"));
        let lapse = &frames[requeued]["payload"];
        assert_eq!(lapse["error_message"], json!(lapsed), "{lapse}");
        let success = frames.iter().position(|f| f == &done).unwrap();
        assert!(
            requeued < success,
            "the lapse is announced first: {frames:#?}"
        );
    }
    let logs = rescuer.logs();
    let took_over = logs.matches("took over a job whose lease ran out").count();
    assert_eq!(took_over, 3, "{logs}");
}

/// SIGTERM with three jobs running: each slot finishes within the grace
/// or hands its job back; the process exits 0, nothing is left `running`,
/// and a fresh worker finishes the jobs.
#[tokio::test]
async fn sigterm_with_three_jobs_running_leaves_none_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut worker = stuck_worker(&db, &[("RAG_WORKER_SHUTDOWN_GRACE_SECS", "1")]);
    let ids = upload_three(&api, user).await;
    running_owners(&db, 3, &worker).await;
    worker.signal(libc::SIGTERM);
    assert!(worker.wait_exit().await.success(), "{}", worker.logs());
    let jobs = parse_jobs(&db, &ids).await;
    let mut handed_back = 0;
    for (status, retries, owner) in &jobs {
        match status.as_str() {
            "queued" => handed_back += 1,
            "success" => {}
            other => panic!("a job left {other}: {jobs:?}"),
        }
        assert_eq!((*retries, owner), (0, &None), "{jobs:?}");
    }
    let logs = worker.logs();
    let said = logs.matches("job handed back to the queue").count();
    assert_eq!(said, handed_back, "{logs}");

    let _fresh = workers(&db);
    for id in &ids {
        wait_status(&api, user, id, "ingested").await;
    }
    for (status, retries, _) in parse_jobs(&db, &ids).await {
        assert_eq!((status.as_str(), retries), ("success", 0));
    }
}

/// `--concurrency` / `RAG_WORKER_CONCURRENCY` outside 1..=64 is refused
/// before anything connects, naming both (exit 2).
#[test]
fn a_bad_concurrency_is_refused_naming_flag_and_variable() {
    let both = ["--concurrency / RAG_WORKER_CONCURRENCY"];
    assert_usage_error(&["worker", "parse", "--concurrency", "0"], &[], &both);
    let env = [("RAG_WORKER_CONCURRENCY", "65")];
    assert_usage_error(&["worker", "ingest"], &env, &both);
}
