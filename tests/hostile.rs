//! Hostile uploads (fixtures/hostile/): each fails alone, in one bounded
//! attempt, with a message naming the limit it hit; the worker survives and
//! another user's document still goes through. And the queue is fair.

mod common;

use common::*;
use serde_json::Value;
use uuid::Uuid;

fn hostile(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hostile")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tight limits so that the bombs end quickly, whatever the machine.
const LIMITS: [(&str, &str); 6] = [
    ("RAG_PARSE_MEMORY_MIB", "256"),
    ("RAG_PARSE_CPU_SECS", "3"),
    ("RAG_PARSE_CPU_FLOOR_SECS", "3"),
    ("RAG_PARSE_WALL_SECS", "120"),
    ("RAG_PARSE_MAX_INFLATED_MIB", "32"),
    ("RAG_WORKER_POLL_MS", "200"),
];

fn assert_alive(p: &mut Proc) {
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "{} died; log:\n{}",
        p.name,
        p.logs()
    );
}

/// Uploads `files` as an attacker and a small text as a victim at the same
/// time; checks each hostile file failed in one attempt with its message,
/// the victim's document was ingested, and the parse worker is still the
/// same process, its memory bounded.
async fn attack(env: &[(&str, &str)], files: &[(&str, &str)]) {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let mut parse = worker(&db, "parse", env);
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ids = Vec::new();
    for (name, _) in files {
        let (status, body) = upload_bytes(&api, attacker, name, hostile(name)).await;
        assert_eq!(status, 201, "{name}: {body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let plain = upload(&api, victim, "handbook.txt").await;
    wait_status(&api, victim, plain["id"].as_str().unwrap(), "ingested").await;

    for ((name, expected), id) in files.iter().zip(&ids) {
        let doc = wait_status(&api, attacker, id, "error").await;
        let msg = doc["error_message"].as_str().unwrap_or_default();
        // A CPU bomb ends on its CPU budget; on a machine so busy that the
        // child gets under a tenth of a core, the wall clock (10 x CPU)
        // ends it first. Both name the budget it hit.
        let starved = expected.contains("CPU budget") && msg.contains("wall-clock budget");
        assert!(
            msg.contains(expected) || starved,
            "{name}: {msg:?} lacks {expected:?}"
        );
        let (_, jobs) = get_json(&api, attacker, &format!("/documents/{id}/jobs")).await;
        let parse_job: &Value = &jobs["jobs"][0];
        assert_eq!(parse_job["status"], "failed", "{name}: {jobs}");
        assert_eq!(
            parse_job["retry_count"], 0,
            "{name}: one attempt only: {jobs}"
        );
        assert_eq!(parse_job["error_message"], msg, "{name}");
    }
    assert_alive(&mut parse);
    // The worker never held a bomb in its own memory.
    let hwm = vm_hwm_kib(parse.pid());
    assert!(hwm < 200 * 1024, "parse worker peaked at {hwm} KiB");
    // And it still serves.
    let after = upload(&api, victim, "handbook.md").await;
    wait_status(&api, victim, after["id"].as_str().unwrap(), "ingested").await;
    assert_alive(&mut parse);
}

#[tokio::test]
async fn hostile_files_fail_alone_in_one_attempt_naming_the_cause() {
    attack(
        &LIMITS,
        &[
            (
                "self-xobject.pdf",
                "the PDF's drawing instructions recurse too deeply (stack overflow in the parser)",
            ),
            ("shared-stream.pdf", "inflate to more than 32 MiB"),
            ("inflate-bomb.pdf", "inflate to more than 32 MiB"),
            ("xobject-names.pdf", "inflate to more than 32 MiB"),
            (
                "xobject-fanout.pdf",
                "parsing a 2.4 KB PDF exceeded its 3 s CPU budget",
            ),
            ("div-selfclose.html", "nested more than 1024 deep"),
            ("stray-end-tags.html", "nested more than 1024 deep"),
        ],
    )
    .await;
}

/// Without the inflation cap, the memory limit stops the reference
/// amplification (the time budgets are raised out of its way: a debug
/// build may spend the 1 s floor before it reaches the limit).
#[tokio::test]
async fn the_memory_limit_holds_on_its_own() {
    let env = [
        ("RAG_PARSE_MEMORY_MIB", "256"),
        ("RAG_PARSE_MAX_INFLATED_MIB", "100000"),
        ("RAG_PARSE_CPU_SECS", "600"),
        ("RAG_PARSE_CPU_FLOOR_SECS", "600"),
        ("RAG_PARSE_WALL_SECS", "1200"),
        ("RAG_WORKER_POLL_MS", "200"),
    ];
    let expected = "parsing exceeded the memory limit of 256 MiB";
    attack(&env, &[("shared-stream.pdf", expected)]).await;
}

/// Without a tight CPU limit, the wall clock stops the CPU bomb.
#[tokio::test]
async fn the_wall_clock_limit_holds_on_its_own() {
    let env = [
        ("RAG_PARSE_CPU_SECS", "600"),
        ("RAG_PARSE_CPU_FLOOR_SECS", "600"),
        ("RAG_PARSE_WALL_SECS", "3"),
        ("RAG_WORKER_POLL_MS", "200"),
    ];
    let expected = "parsing a 2.4 KB PDF took longer than its 3 s wall-clock budget";
    attack(&env, &[("xobject-fanout.pdf", expected)]).await;
}

/// With the default limits (a 60 s CPU ceiling), a 2.4 KB file that spins
/// gets the budget of its size: it fails in one attempt, naming that budget
/// and its size, instead of holding the parse slot for the ceiling.
#[tokio::test]
async fn a_small_file_that_spins_gets_a_small_budget() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let bomb = hostile("xobject-fanout.pdf");
    assert_eq!(
        bomb.len(),
        2434,
        "the fixture changed: update the size below"
    );
    let (status, doc) = upload_bytes(&api, user, "fanout.pdf", bomb).await;
    assert_eq!(status, 201, "{doc}");
    let id = doc["id"].as_str().unwrap();
    let failed = wait_status(&api, user, id, "error").await;
    let msg = failed["error_message"].as_str().unwrap();
    // The CPU budget (the 1 s floor) ends it; on a machine so busy that the
    // child gets under a tenth of a core, the wall clock (10 x CPU) does.
    let cpu = "parsing a 2.4 KB PDF exceeded its 1 s CPU budget; file rejected";
    let wall = "parsing a 2.4 KB PDF took longer than its 10 s wall-clock budget; file rejected";
    assert!(msg == cpu || msg == wall, "{msg:?}");
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    assert_eq!(jobs["jobs"][0]["status"], "failed", "{jobs}");
    assert_eq!(jobs["jobs"][0]["retry_count"], 0, "one attempt: {jobs}");
    assert_eq!(jobs["jobs"][0]["error_message"], msg, "{jobs}");
}

/// Input errors that no retry can change fail at once; the document is in
/// `error` and the client hears both events, as for any final failure.
#[tokio::test]
async fn deterministic_failures_are_not_retried() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let cases: [(&str, &[u8], &str); 3] = [
        ("latin1.txt", b"caf\xE9 au lait", "not valid UTF-8"),
        ("blank.txt", b" \n\n\t ", "document contains no text"),
        ("bad.pdf", b"%PDF-1.7 garbage", "corrupt PDF"),
    ];
    for (name, bytes, expected) in cases {
        let (status, doc) = upload_bytes(&api, user, name, bytes.to_vec()).await;
        assert_eq!(status, 201, "{name}: {doc}");
        let id = doc["id"].as_str().unwrap();
        let failed = wait_status(&api, user, id, "error").await;
        let msg = failed["error_message"].as_str().unwrap();
        assert!(msg.contains(expected), "{name}: {msg}");
        let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
        assert_eq!(jobs["jobs"][0]["retry_count"], 0, "{name}: {jobs}");
        let job = client
            .expect("the failed job", |f| {
                is(f, "job.status_updated", &[("document_id", s(id))])
                    && f["payload"]["status"] == "failed"
            })
            .await;
        assert_eq!(job["payload"]["error_message"], msg);
        client
            .expect("the document in error", |f| {
                is(f, "document.status_updated", &[("document_id", s(id))])
                    && f["payload"]["status"] == "error"
            })
            .await;
        // No retry was ever announced.
        assert!(
            !client.frames.iter().any(|f| {
                is(f, "job.status_updated", &[("document_id", s(id))])
                    && f["payload"]["retry_count"] != 0
            }),
            "{name}: {:#?}",
            client.frames
        );
    }
}

async fn insert_job(c: &deadpool_postgres::Object, user: Uuid, age_secs: f64) -> Uuid {
    let (doc, job) = (Uuid::new_v4(), Uuid::new_v4());
    c.execute(
        "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
         VALUES ($1, $2, 'f.txt', 'text/plain', 1, 'uploaded')",
        &[&doc, &user],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO jobs (id, document_id, user_id, kind, status, max_retries, run_after, created_at)
         VALUES ($1, $2, $3, 'parse', 'queued', 3,
                 now() - make_interval(secs => $4), now() - make_interval(secs => $4))",
        &[&job, &doc, &user, &age_secs],
    )
    .await
    .unwrap();
    job
}

/// Claims the next parse job and, unless `keep_running`, finishes it.
async fn serve_next(c: &deadpool_postgres::Object, keep_running: bool) -> Uuid {
    use ragctl::db::jobs::{self, JobKind};
    let claimed = jobs::claim(c, JobKind::Parse, "w", 30.0).await.unwrap();
    let job = claimed.expect("a due job").job;
    if !keep_running {
        jobs::succeed(c, job.id, "w").await.unwrap().unwrap();
    }
    job.id
}

/// One user's backlog, queued first, does not make another user wait
/// behind it: users take turns, the one with fewer running jobs first.
#[tokio::test]
async fn claim_takes_turns_between_users() {
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 2, "ragctl-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let c = pool.get().await.unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut backlog = Vec::new();
    for age in (100..110).rev() {
        backlog.push(insert_job(&c, a, f64::from(age)).await);
    }
    let b1 = insert_job(&c, b, 1.0).await;

    // Nobody served yet: the oldest job, left running.
    assert_eq!(serve_next(&c, true).await, backlog[0]);
    // A has a job running, B none: B's, although it is the newest.
    assert_eq!(serve_next(&c, false).await, b1);
    jobs_done(&c, backlog[0]).await;
    // One job at a time (one worker): users alternate, least recently
    // served first, each in the order of their own queue.
    let b2 = insert_job(&c, b, 0.0).await;
    assert_eq!(serve_next(&c, false).await, backlog[1]);
    assert_eq!(serve_next(&c, false).await, b2);
    assert_eq!(serve_next(&c, false).await, backlog[2]);
    // With B's queue empty, A's backlog goes on.
    assert_eq!(serve_next(&c, false).await, backlog[3]);
}

async fn jobs_done(c: &deadpool_postgres::Object, id: Uuid) {
    ragctl::db::jobs::succeed(c, id, "w")
        .await
        .unwrap()
        .unwrap();
}

/// The claim stays an index walk: no sequential scan of the queue.
#[tokio::test]
async fn claim_uses_the_indexes() {
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 2, "ragctl-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let c = pool.get().await.unwrap();
    for n in 0..2000 {
        insert_job(&c, Uuid::new_v4(), f64::from(n % 50)).await;
    }
    c.batch_execute("ANALYZE jobs").await.unwrap();
    let sql = ragctl::db::jobs::claim_plan_sql();
    let plan: Vec<String> = c
        .query(&format!("EXPLAIN {sql}"), &[&"parse", &"w", &30.0f64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    assert!(plan.contains("jobs_queued_user_idx"), "{plan}");
}

/// The text read back from the parser is capped too.
#[tokio::test]
async fn the_text_cap_holds() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &[("RAG_PARSE_MAX_TEXT_MIB", "1")]);
    let user = Uuid::new_v4();
    let big = "all work and no play\n".repeat(100_000); // 2.1 MB
    let (status, doc) = upload_bytes(&api, user, "big.txt", big.into_bytes()).await;
    assert_eq!(status, 201, "{doc}");
    let id = doc["id"].as_str().unwrap();
    let failed = wait_status(&api, user, id, "error").await;
    assert_eq!(
        failed["error_message"],
        "the extracted text is larger than 1 MiB (limit); file rejected"
    );
    let (_, jobs) = get_json(&api, user, &format!("/documents/{id}/jobs")).await;
    assert_eq!(jobs["jobs"][0]["retry_count"], 0, "{jobs}");
}
