//! A worker and `serve` started while PostgreSQL cannot serve them (here:
//! their database is not created yet) wait for it with backoff, logging
//! each try, and start once it is there; a signal stops the wait (exit 0);
//! a bad URL or refused credentials still fail at once.

mod common;

use common::*;
use uuid::Uuid;

/// A database name that exists only once `create` runs; dropped at the end.
struct LateDb {
    name: String,
    url: String,
}

impl LateDb {
    fn new() -> LateDb {
        let name = format!(
            "ragctl_t_late_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let url = ragctl::harness::with_db(&TestDb::new().url, &name);
        LateDb { name, url }
    }

    fn create(&self) {
        admin(&format!("CREATE DATABASE {}", self.name));
    }
}

impl Drop for LateDb {
    fn drop(&mut self) {
        admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

const RETRYING: &str = "PostgreSQL not reachable at start; retrying";

#[tokio::test]
async fn a_worker_waits_for_its_database_then_works() {
    let late = LateDb::new();
    let w = Proc::spawn(
        "worker parse",
        &late.url,
        &["worker", "parse"],
        &FAST_RETRIES,
    );
    let line = w.wait_line(RETRYING).await;
    assert!(line.contains("does not exist"), "{line}");
    late.create();
    w.wait_line("PostgreSQL reached").await;
    w.wait_line("worker started").await;
    // It works: a document uploaded now is parsed by it.
    let api = Api::start_url(&late.url, &[], &[]).await;
    let user = Uuid::new_v4();
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    wait_status(&api, user, id, "parsed").await;
}

#[tokio::test]
async fn serve_waits_for_its_database_then_serves() {
    let late = LateDb::new();
    let args = ["serve", "--no-workers", "--port", "0"];
    let mut api = Proc::spawn("api", &late.url, &args, &[]);
    api.wait_line(RETRYING).await;
    late.create();
    api.wait_line("ragctl serving").await;
    api.signal(libc::SIGTERM);
    assert!(api.wait_exit().await.success(), "{}", api.logs());
}

#[tokio::test]
async fn sigterm_while_waiting_exits_cleanly() {
    let late = LateDb::new();
    let mut w = Proc::spawn("worker ingest", &late.url, &["worker", "ingest"], &[]);
    w.wait_line(RETRYING).await;
    w.signal(libc::SIGTERM);
    let status = w.wait_exit().await;
    assert!(status.success(), "{status}; log:\n{}", w.logs());
    assert!(
        w.logs()
            .contains("stopped before PostgreSQL could be reached"),
        "{}",
        w.logs()
    );
}

/// Waiting cannot mend these: exit 2 at once, the cause named, no retry.
/// TLS: the local server has none (the server refuses `verify-full`) or a
/// certificate not for 127.0.0.1 (it does not verify).
#[tokio::test]
async fn bad_urls_and_refused_credentials_fail_at_once() {
    let db = TestDb::new();
    let nobody = db.url_as(&format!(
        "nobody_{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    let base = db.url.split('?').next().unwrap().to_string();
    for (url, says) in [
        ("not a url".to_string(), "invalid database URL"),
        (nobody, "does not exist"),
        (format!("{base}?sslmode=verify-full"), "TLS"),
    ] {
        let mut w = Proc::spawn("worker parse", &url, &["worker", "parse"], &[]);
        let status = w.wait_exit().await;
        let log = w.logs();
        assert_eq!(status.code(), Some(2), "{url}: {log}");
        assert!(log.contains(says), "{url}: {log}");
        assert!(!log.contains(RETRYING), "{url}: {log}");
    }
}
