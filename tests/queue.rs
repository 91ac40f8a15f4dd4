//! `ragctl queue` on a prepared database: jobs of fixed users and lease
//! owners put in known states with plain SQL (no worker runs), then the
//! table (an insta snapshot, ages from a fixed `now`) and the real binary's
//! JSON, caps and errors.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use ragctl::db::queue::Bounds;
use serde_json::{Value, json};

/// Due jobs became due at fixed instants around `T0`, so that their ages
/// only depend on the `now` the table is rendered at.
const T0: &str = "2024-05-01T12:00:00Z";
const A: &str = "00000000-0000-0000-0000-00000000000a";
const B: &str = "00000000-0000-0000-0000-00000000000b";
const C: &str = "00000000-0000-0000-0000-00000000000c";
const D: &str = "00000000-0000-0000-0000-00000000000d";
const LEASED: &str = "now() + interval '1 hour'";

/// One job row: kind, user, status, run_after, lease owner, lease expiry.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    String,
    &'static str,
    &'static str,
);

fn at(offset_secs: i32) -> String {
    format!("timestamptz '{T0}' + interval '{offset_secs} seconds'")
}

/// User A's bomb and another of A's jobs run in two slots of one worker,
/// four more of A's are due; B runs one and has one backing off; C's job
/// runs under an old-format owner whose lease ran out, and C has the oldest
/// due job. D's finished jobs count nowhere. Ingest: B waits, D runs under
/// an owner with two `#`.
fn rows() -> Vec<Row> {
    let mut rows: Vec<Row> = vec![
        (
            "parse",
            A,
            "running",
            at(-900),
            "host-a:101:parse:aaaaaaaa#0",
            LEASED,
        ),
        (
            "parse",
            A,
            "running",
            at(-800),
            "host-a:101:parse:aaaaaaaa#1",
            LEASED,
        ),
        (
            "parse",
            B,
            "running",
            at(-700),
            "host-b:202:parse:bbbbbbbb#0",
            LEASED,
        ),
        (
            "parse",
            B,
            "queued",
            "now() + interval '1 hour'".into(),
            "",
            "",
        ),
        (
            "parse",
            C,
            "running",
            at(-600),
            "host-c:303:parse:cccccccc",
            "now() - interval '1 minute'",
        ),
        ("parse", C, "queued", at(-30), "", ""),
        ("parse", D, "success", at(-1000), "", ""),
        ("parse", D, "failed", at(-1000), "", ""),
        ("ingest", B, "queued", at(10), "", ""),
        ("ingest", D, "running", at(-500), "odd#name#7", LEASED),
    ];
    for i in 0..4 {
        rows.push(("parse", A, "queued", at(i), "", ""));
    }
    rows
}

fn sql_or_null(v: &str) -> String {
    if v.is_empty() {
        "NULL".into()
    } else {
        v.into()
    }
}

/// A migrated database holding [`rows`], each job with a document.
async fn prepared() -> TestDb {
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 1, "ragctl-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    drop(pool);
    let mut sql = String::new();
    for (kind, user, status, run_after, owner, lease) in rows() {
        let owner = if owner.is_empty() {
            "NULL".into()
        } else {
            format!("'{owner}'")
        };
        sql += &format!(
            "WITH d AS (INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
                        VALUES (gen_random_uuid(), '{user}', 'f.txt', 'text/plain', 1, 'parsing')
                        RETURNING id)
             INSERT INTO jobs (id, document_id, user_id, kind, status, max_retries, run_after,
                               lease_owner, lease_expires_at)
             SELECT gen_random_uuid(), d.id, '{user}', '{kind}', '{status}', 3, {run_after},
                    {owner}, {} FROM d;\n",
            sql_or_null(lease)
        );
    }
    ragctl::harness::admin_sql(&db.url, &sql).await.unwrap();
    db
}

async fn queue(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin())
        .arg("queue")
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RAG_STATE_DIR", "/nonexistent-ragctl-state")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

async fn queue_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = queue(&db.url, &all).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    serde_json::from_str(&out).unwrap()
}

fn kind<'a>(snap: &'a Value, name: &str) -> &'a Value {
    snap["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no kind {name} in {snap}"))
}

#[tokio::test]
async fn table_shows_the_prepared_queue() {
    let db = prepared().await;
    let (mut client, conn) = ragctl::db::connect(&db.url, "ragctl-test").await.unwrap();
    let task = tokio::spawn(conn);
    let bounds = Bounds {
        scan_limit: 100_000,
        top_users: 2,
        workers: 100,
    };
    let snap = ragctl::db::queue::snapshot(&mut client, bounds)
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let now: DateTime<Utc> = T0.parse::<DateTime<Utc>>().unwrap() + Duration::seconds(125);
    insta::assert_snapshot!("table", ragctl::cli::queue::table::render(&snap, now));
}

#[tokio::test]
async fn json_counts_the_prepared_queue() {
    let db = prepared().await;
    let snap = queue_json(&db, &[]).await;
    let parse = kind(&snap, "parse");
    for (field, want) in [
        ("queued", 6),
        ("due", 5),
        ("running", 4),
        ("lease_expired", 1),
    ] {
        assert_eq!(parse[field], want, "parse {field}: {parse}");
    }
    assert_eq!(parse["capped"], false);
    let oldest: DateTime<Utc> = parse["oldest_due_at"].as_str().unwrap().parse().unwrap();
    let t0: DateTime<Utc> = T0.parse().unwrap();
    assert_eq!(oldest, t0 - Duration::seconds(30));
    let taken: DateTime<Utc> = snap["at"].as_str().unwrap().parse().unwrap();
    let age = parse["oldest_due_age_secs"].as_f64().unwrap();
    assert!(
        ((taken - oldest).as_seconds_f64() - age).abs() < 1e-3,
        "{age} at {taken}"
    );
    assert_eq!(
        parse["workers"],
        json!([
            {"worker": "host-a:101:parse:aaaaaaaa", "slots": 2},
            {"worker": "host-b:202:parse:bbbbbbbb", "slots": 1},
            {"worker": "host-c:303:parse:cccccccc", "slots": 1},
        ])
    );
    assert_eq!(parse["workers_total"], 3);
    assert_eq!(
        parse["top_users"],
        json!([
            {"user_id": A, "running": 2, "queued": 4},
            {"user_id": B, "running": 1, "queued": 1},
            {"user_id": C, "running": 1, "queued": 1},
        ])
    );
    assert_eq!(parse["users_total"], 3);
    let ingest = kind(&snap, "ingest");
    for (field, want) in [
        ("queued", 1),
        ("due", 1),
        ("running", 1),
        ("lease_expired", 0),
    ] {
        assert_eq!(ingest[field], want, "ingest {field}: {ingest}");
    }
    assert_eq!(
        ingest["workers"],
        json!([{"worker": "odd#name", "slots": 1}])
    );
    assert_eq!(
        ingest["top_users"],
        json!([
            {"user_id": D, "running": 1, "queued": 0},
            {"user_id": B, "running": 0, "queued": 1},
        ])
    );
}

/// `--top` cuts the list and says how many there are; `--scan-limit`
/// caps the counts and flags them.
#[tokio::test]
async fn lists_and_scans_are_bounded() {
    let db = prepared().await;
    let snap = queue_json(&db, &["--top", "1", "--scan-limit", "3"]).await;
    assert_eq!(snap["scan_limit"], 3);
    let parse = kind(&snap, "parse");
    assert_eq!(parse["capped"], true, "{parse}");
    for (field, want) in [("queued", 3), ("due", 3), ("running", 3)] {
        assert_eq!(parse[field], want, "parse {field}: {parse}");
    }
    assert_eq!(parse["top_users"].as_array().unwrap().len(), 1, "{parse}");
    let ingest = kind(&snap, "ingest");
    assert_eq!(ingest["capped"], false, "{ingest}");
    assert_eq!(ingest["users_total"], 2);
    assert_eq!(ingest["top_users"].as_array().unwrap().len(), 1);

    let (code, table, err) = queue(&db.url, &["--scan-limit", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("3+") && table.contains("--scan-limit"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_databases_are_clear_errors() {
    let (code, _, err) = queue("postgres://postgres@127.0.0.1:1/nowhere", &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1/nowhere"),
        "{err}"
    );

    let (code, _, err) = queue("", &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--database-url") && err.contains("DATABASE_URL"),
        "{err}"
    );

    let (code, _, err) = queue("not a url", &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid database URL"), "{err}");

    let empty = TestDb::new();
    let (code, _, err) = queue(&empty.url, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ragctl db migrate"), "{err}");

    let (code, _, err) = queue(&empty.url, &["--top", "5000"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--top"), "{err}");
}

/// `--watch --json` prints one snapshot per line until SIGTERM, then exits
/// cleanly.
#[tokio::test]
async fn watch_streams_snapshots_until_stopped() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = prepared().await;
    let mut child = tokio::process::Command::new(bin())
        .args(["queue", "--watch", "--json"])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut taken = vec![];
    for _ in 0..2 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a snapshot within PATIENCE")
            .unwrap()
            .expect("stdout open");
        let snap: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(kind(&snap, "parse")["queued"], 6, "{snap}");
        taken.push(snap["at"].as_str().unwrap().to_string());
    }
    assert_ne!(taken[0], taken[1], "each line is a fresh snapshot");
    let pid = child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
