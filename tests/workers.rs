//! The workers against a real PostgreSQL, as separate processes: every
//! format parsed and ingested, failures that cannot get better, poisoned
//! files, killed and dying workers, SIGTERM, and workers with no API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn every_format_is_parsed_and_ingested() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    for (file, mime) in [
        ("handbook.txt", "text/plain"),
        ("handbook.md", "text/markdown"),
        ("handbook.html", "text/html"),
        ("handbook.pdf", "application/pdf"),
    ] {
        let doc = upload(&api, user, file).await;
        assert_eq!(doc["status"], "uploaded");
        assert_eq!(doc["mime_type"], mime);
        assert_eq!(doc["filename"], file);
        let id = doc["id"].as_str().unwrap();
        let done = wait_status(&api, user, id, "ingested").await;
        assert_eq!(done["error_message"], Value::Null);
        let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
        let jobs = jobs["jobs"].as_array().unwrap();
        let kinds: Vec<_> = jobs
            .iter()
            .map(|j| (j["kind"].clone(), j["status"].clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (json!("parse"), json!("success")),
                (json!("ingest"), json!("success"))
            ]
        );
        let chunks = db
            .query(&format!(
                "SELECT count(*) FROM chunks WHERE document_id = '{id}'"
            ))
            .await[0]
            .get::<_, i64>(0);
        assert!(chunks >= 1, "{file}: no chunks");
    }
    let (_, list) = get_json(&api, user, "/documents").await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 4);
}

/// A corrupt file cannot get better: under the default `--retry-policy
/// transient`, one attempt, then `failed` (`retry_count` 0).
#[tokio::test]
async fn corrupt_pdf_fails_at_once() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "corrupt.pdf").await;
    let id = doc["id"].as_str().unwrap();
    let failed = wait_status(&api, user, id, "error").await;
    let msg = failed["error_message"].as_str().unwrap();
    assert!(msg.starts_with("corrupt PDF"), "{msg}");
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["kind"], "parse");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["retry_count"], 0);
    assert_eq!(job["error_message"], msg);
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "no ingest job after a failed parse"
    );
}

/// `--retry-policy all` (issue #18 item 6): the same corrupt file is
/// retried `--max-retries` (3) times, then `failed`; a WebSocket client sees
/// the job's retries, its failure and the document's error.
#[tokio::test]
async fn retry_policy_all_retries_a_corrupt_pdf_three_times() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let args = ["worker", "parse", "--retry-policy", "all"];
    let _p = Proc::spawn("worker parse", &db.url, &args, &FAST_RETRIES);
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let doc = upload(&api, user, "corrupt.pdf").await;
    let id = s(doc["id"].as_str().unwrap());
    let retries = (1..=3).map(|n| json!(n));
    for retry in retries {
        client
            .expect("a retry", |f| {
                let want = [("document_id", id.clone()), ("status", s("queued"))];
                is(f, "job.status_updated", &want) && f["payload"]["retry_count"] == retry
            })
            .await;
    }
    let failed = client
        .expect("job failed", |f| {
            let want = [("document_id", id.clone()), ("status", s("failed"))];
            is(f, "job.status_updated", &want)
        })
        .await;
    assert_eq!(failed["payload"]["retry_count"], 3, "{failed}");
    let msg = failed["payload"]["error_message"].as_str().unwrap();
    assert!(msg.starts_with("corrupt PDF"), "{failed}");
    let err = client
        .expect("document error", |f| {
            let want = [("document_id", id.clone()), ("status", s("error"))];
            is(f, "document.status_updated", &want)
        })
        .await;
    assert_eq!(err["payload"]["error_message"], msg);
    let path = format!("/documents/{}/jobs", id.as_str().unwrap());
    let (_, jobs) = get_json(&api, user, &path).await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let job = &jobs["jobs"][0];
    assert_eq!(
        (&job["status"], &job["retry_count"]),
        (&json!("failed"), &json!(3))
    );
}

/// A bad `--retry-policy` / `RAG_RETRY_POLICY` is a usage error (exit 2)
/// that names both, before anything connects.
#[test]
fn a_bad_retry_policy_is_refused_naming_flag_and_variable() {
    let both = ["--retry-policy", "RAG_RETRY_POLICY"];
    let flag = ["worker", "parse", "--retry-policy", "sometimes"];
    assert_usage_error(&flag, &[], &both);
    let env = [("RAG_RETRY_POLICY", "bogus")];
    assert_usage_error(&["worker", "parse"], &env, &both);
}

#[tokio::test]
async fn poisoned_file_fails_alone_and_the_worker_keeps_serving() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    // broken-page.pdf makes the PDF library panic; the worker must survive.
    let bad = upload(&api, user, "broken-page.pdf").await;
    let good = upload(&api, user, "handbook.txt").await;
    let failed = wait_status(&api, user, bad["id"].as_str().unwrap(), "error").await;
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap()
            .contains("corrupt PDF"),
        "{failed}"
    );
    wait_status(&api, user, good["id"].as_str().unwrap(), "ingested").await;
    let after = upload(&api, user, "handbook.md").await;
    wait_status(&api, user, after["id"].as_str().unwrap(), "ingested").await;
}

/// Waits until the document's job is claimed; returns its lease owner.
async fn running_job_owner(db: &TestDb, doc: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let rows = db
            .query(&format!(
                "SELECT lease_owner FROM jobs WHERE document_id = '{doc}' AND status = 'running'"
            ))
            .await;
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "job never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_worker_s_job_is_finished_by_another() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let lease = [("RAG_JOB_LEASE_SECS", "2"), ("RAG_WORKER_POLL_MS", "200")];
    // This worker sleeps inside every job, so it is surely mid-job when killed.
    let mut stuck = worker(
        &db,
        "parse",
        &[lease[0], lease[1], ("RAG_WORKER_JOB_DELAY_MS", "600000")],
    );
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    let owner = running_job_owner(&db, id).await;
    assert!(owner.contains(&format!(":{}:", stuck.pid())), "{owner}");
    stuck.signal(libc::SIGKILL);
    stuck.wait_exit().await;

    let rescuer = worker(&db, "parse", &lease);
    let _i = worker(&db, "ingest", &lease);
    wait_status(&api, user, id, "ingested").await;
    let row = &db
        .query(&format!(
            "SELECT status, retry_count FROM jobs WHERE document_id = '{id}' AND kind = 'parse'"
        ))
        .await[0];
    assert_eq!(row.get::<_, String>(0), "success");
    assert_eq!(row.get::<_, i32>(1), 1, "the lapsed attempt counts");
    assert!(
        rescuer.logs().contains(ragctl::workers::LEASE_LAPSED),
        "{}",
        rescuer.logs()
    );
    assert!(
        rescuer
            .logs()
            .contains("took over a job whose lease ran out"),
        "{}",
        rescuer.logs()
    );
}

/// A file that kills every worker that parses it must not loop forever:
/// each lapsed lease is a failed attempt, and the last one fails the job.
#[tokio::test]
async fn a_job_whose_workers_keep_dying_ends_failed() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let lease = [("RAG_JOB_LEASE_SECS", "2"), ("RAG_WORKER_POLL_MS", "200")];
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let mut stuck = worker(
        &db,
        "parse",
        &[lease[0], lease[1], ("RAG_WORKER_JOB_DELAY_MS", "600000")],
    );
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    running_job_owner(&db, id).await;
    // As if the earlier attempts had died the same way.
    db.query(&format!(
        "UPDATE jobs SET retry_count = max_retries WHERE document_id = '{id}' AND kind = 'parse'"
    ))
    .await;
    stuck.signal(libc::SIGKILL);
    stuck.wait_exit().await;

    let _rescuer = worker(&db, "parse", &lease);
    let body = wait_status(&api, user, id, "error").await;
    assert_eq!(body["error_message"], ragctl::workers::LEASE_LAPSED);
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    let parse = &jobs["jobs"][0];
    assert_eq!(parse["status"], "failed", "{jobs}");
    assert_eq!(parse["retry_count"], 3, "{jobs}");
    // The client hears it like any other final failure.
    let failed = client
        .expect("the failed job", |f| {
            f["type"] == "job.status_updated" && f["payload"]["status"] == "failed"
        })
        .await;
    assert_eq!(
        failed["payload"]["error_message"],
        ragctl::workers::LEASE_LAPSED
    );
    client
        .expect("the document in error", |f| {
            f["type"] == "document.status_updated" && f["payload"]["status"] == "error"
        })
        .await;
}

#[tokio::test]
async fn sigterm_leaves_no_job_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let mut w = worker(
        &db,
        "parse",
        &[
            ("RAG_WORKER_JOB_DELAY_MS", "600000"),
            ("RAG_WORKER_SHUTDOWN_GRACE_SECS", "1"),
        ],
    );
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    running_job_owner(&db, id).await;
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit().await.success(), "{}", w.logs());
    let row = &db
        .query(&format!(
            "SELECT status, lease_owner, retry_count FROM jobs WHERE document_id = '{id}'"
        ))
        .await[0];
    assert_eq!(row.get::<_, String>(0), "queued", "{}", w.logs());
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, i32>(2), 0);
    // And another worker picks it up.
    let _p = worker(&db, "parse", &[]);
    wait_status(&api, user, id, "parsed").await;
}

/// With no API process at all, workers keep working: their publishes go
/// nowhere, the database gets the truth.
#[tokio::test]
async fn workers_keep_working_with_no_api_running() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap().to_string();
    drop(api);
    let _workers = workers(&db);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status: String = db
            .query(&format!("SELECT status FROM documents WHERE id = '{id}'"))
            .await[0]
            .get(0);
        if status == "ingested" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stuck at {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listeners = db
        .query(&format!("SELECT 1 FROM pg_stat_activity WHERE application_name = 'ragctl-listener' AND datname = '{}'", db.name))
        .await;
    assert!(listeners.is_empty(), "an API listener was still connected");
}
