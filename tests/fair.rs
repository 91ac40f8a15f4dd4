//! Fair slots (issue #18 item 2) with real worker processes running
//! CPU-bomb PDFs that spin until the test ends: a user alone uses every
//! slot, a hostile user's bombs do not block another user's note, fresh
//! accounts do not jump the queue. The SQL rules alone: tests/fair_sql.rs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uuid::Uuid;

/// Parse budgets so large that a bomb spins until the test ends; a
/// stopped worker hands its job back at once (and kills the parser).
const BOMB_ENV: [(&str, &str); 6] = [
    ("RAG_PARSE_CPU_FLOOR_SECS", "600"),
    ("RAG_PARSE_CPU_SECS", "600"),
    ("RAG_PARSE_WALL_SECS", "1200"),
    ("RAG_WORKER_POLL_MS", "200"),
    ("RAG_RETRY_BACKOFF_MS", "50"),
    ("RAG_WORKER_SHUTDOWN_GRACE_SECS", "0"),
];

/// Parse workers with `slots` slots each, on the bomb budgets.
fn parse_workers(db: &TestDb, processes: usize, slots: &str) -> Vec<Proc> {
    let mut env = BOMB_ENV.to_vec();
    env.push(("RAG_WORKER_CONCURRENCY", slots));
    (0..processes).map(|_| worker(db, "parse", &env)).collect()
}

/// Bombs spin a core each: the process tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bomb() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hostile/xobject-fanout.pdf");
    std::fs::read(path).unwrap()
}

async fn upload_bomb(api: &Api, user: Uuid) -> String {
    let (status, body) = upload_bytes(api, user, "bomb.pdf", bomb()).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn id(doc: &Value) -> String {
    doc["id"].as_str().unwrap().to_string()
}

/// The parse job of a document: (id, status, retry_count, claimed_at).
type JobRow = (Uuid, String, i32, Option<chrono::DateTime<chrono::Utc>>);

async fn parse_job(db: &TestDb, doc: &str) -> JobRow {
    let rows = db
        .query(&format!(
            "SELECT id, status, retry_count, claimed_at FROM jobs
             WHERE document_id = '{doc}' AND kind = 'parse'"
        ))
        .await;
    let r = rows
        .first()
        .unwrap_or_else(|| panic!("no parse job for {doc}"));
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Polls until `cond` holds on the database; a deadline, not a speed test.
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn running_of(db: &TestDb, user: Uuid) -> i64 {
    db.query(&format!(
        "SELECT count(*) FROM jobs WHERE user_id = '{user}' AND kind = 'parse' AND status = 'running'"
    ))
    .await[0]
        .get(0)
}

/// A user alone may use every slot: two bombs on two single-slot workers
/// run at once, each in its own process.
#[tokio::test]
async fn a_user_alone_uses_every_slot() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _w = parse_workers(&db, 2, "1");
    let user = Uuid::new_v4();
    upload_bomb(&api, user).await;
    upload_bomb(&api, user).await;
    wait_for("both bombs running", || async {
        running_of(&db, user).await == 2
    })
    .await;
    let owners = db
        .query(&format!(
            "SELECT count(DISTINCT lease_owner) FROM jobs WHERE user_id = '{user}' AND status = 'running'"
        ))
        .await;
    assert_eq!(owners[0].get::<_, i64>(0), 2, "one per worker");
}

/// Reads A's frames until some job went running → queued; returns its id
/// and the queued frame.
async fn expect_preempted(client: &mut Client) -> (String, Value) {
    let mut ran = std::collections::HashSet::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(Next::Frame(f)) = client.next(left).await else {
            panic!("no job handed back; seen: {:#?}", client.frames);
        };
        if f["type"] != "job.status_updated" {
            continue;
        }
        let job = f["payload"]["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match f["payload"]["status"].as_str() {
            Some("running") => {
                ran.insert(job);
            }
            Some("queued") if ran.contains(&job) => return (job, f),
            _ => {}
        }
    }
}

/// User A holds both slots with bombs and has more queued; user B's note
/// gets a slot (A's latest bomb is handed back) and reaches `ingested`
/// while A's first bomb is still running, in the same attempt.
/// Across processes: two parse workers of one slot each.
#[tokio::test]
async fn a_hostile_user_does_not_block_others() {
    hostile_user_case(2, "1").await;
}

/// Within a process: one parse worker with two slots.
#[tokio::test]
async fn a_hostile_user_does_not_block_others_in_one_process() {
    hostile_user_case(1, "2").await;
}

async fn hostile_user_case(processes: usize, slots: &str) {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _w = parse_workers(&db, processes, slots);
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a_events = Client::connect(&api, a, "").await;

    let first = upload_bomb(&api, a).await;
    wait_for("A's first bomb running", || async {
        parse_job(&db, &first).await.1 == "running"
    })
    .await;
    let (first_job, _, _, first_claim) = parse_job(&db, &first).await;
    for _ in 0..4 {
        upload_bomb(&api, a).await;
    }
    wait_for("A holding both slots", || async {
        running_of(&db, a).await == 2
    })
    .await;

    let note = id(&upload(&api, b, "handbook.txt").await);
    wait_status(&api, b, &note, "ingested").await;
    // B got through while A's first bomb was still in its first attempt.
    let (_, status, retries, claim) = parse_job(&db, &first).await;
    assert_eq!(
        (status.as_str(), retries, claim),
        ("running", 0, first_claim)
    );

    let (preempted, frame) = expect_preempted(&mut a_events).await;
    assert_ne!(
        preempted,
        first_job.to_string(),
        "A's first bomb kept its slot"
    );
    assert_eq!(frame["payload"]["retry_count"], 0, "{frame}");
    assert_eq!(frame["payload"]["error_message"], Value::Null, "{frame}");
    let row = &db
        .query(&format!(
            "SELECT retry_count, service_secs FROM jobs WHERE id = '{preempted}'"
        ))
        .await[0];
    assert_eq!(row.get::<_, i32>(0), 0);
    assert!(
        row.get::<_, f64>(1) > 0.0,
        "the lost attempt counts as service"
    );
}

/// Waits until user `r`'s turn came: its note's due time plus the service
/// `r` got. An account arriving sooner would go first, by design (`r` was
/// just served); the fresh accounts of the test come after it.
async fn wait_turn(db: &TestDb, r: Uuid, note: &str) {
    let turn_passed = format!(
        "SELECT clock_timestamp() > j.run_after + make_interval(secs => (
             SELECT sum(service_secs) FROM jobs WHERE user_id = '{r}' AND kind = 'parse'))
         FROM jobs j WHERE j.document_id = '{note}' AND j.kind = 'parse'
           AND j.status = 'queued' AND j.run_after <= now()"
    );
    wait_for("R's turn", || async {
        let rows = db.query(&turn_passed).await;
        rows.first().is_some_and(|row| row.get::<_, bool>(0))
    })
    .await;
}

/// The first of `docs` whose parse job was claimed, once one was.
async fn first_claimed(db: &TestDb, docs: &[String]) -> String {
    let list: Vec<String> = docs.iter().map(|d| format!("'{d}'")).collect();
    let first = format!(
        "SELECT document_id::text FROM jobs WHERE kind = 'parse' AND claimed_at IS NOT NULL
           AND document_id IN ({}) ORDER BY claimed_at LIMIT 1",
        list.join(", ")
    );
    wait_for("a claim", || async { !db.query(&first).await.is_empty() }).await;
    db.query(&first).await[0].get(0)
}

/// A returning user's note, queued while the only slot runs X's bomb,
/// is claimed before the bombs of three fresh accounts that came after
/// its turn, when a slot frees up.
#[tokio::test]
async fn fresh_accounts_do_not_jump_the_queue() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _w1 = parse_workers(&db, 1, "1");
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    let (r, x) = (Uuid::new_v4(), Uuid::new_v4());
    let earlier = id(&upload(&api, r, "handbook.txt").await);
    wait_status(&api, r, &earlier, "ingested").await;
    let xb = upload_bomb(&api, x).await;
    wait_for("X's bomb running", || async {
        parse_job(&db, &xb).await.1 == "running"
    })
    .await;

    let note = id(&upload(&api, r, "handbook.md").await);
    wait_turn(&db, r, &note).await;
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let doc = upload_bomb(&api, Uuid::new_v4()).await;
        wait_for("a fresh bomb due", || async {
            let due = format!(
                "SELECT 1 FROM jobs WHERE document_id = '{doc}' AND status = 'queued' AND run_after <= now()"
            );
            !db.query(&due).await.is_empty()
        })
        .await;
        fresh.push(doc);
    }
    // A slot frees up (a second worker): its first claim is R's note.
    let _w2 = parse_workers(&db, 1, "1");
    fresh.push(note.clone());
    assert_eq!(
        first_claimed(&db, &fresh).await,
        note,
        "a fresh bomb went first"
    );
    wait_status(&api, r, &note, "ingested").await;
}
