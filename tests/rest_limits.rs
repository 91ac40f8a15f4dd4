//! REST under hostile load: the upload byte budget, statement timeouts and
//! cancelled searches, a readiness that tells the truth, and bad JSON input
//! answered in the error shape. Each test runs `ragctl serve --no-workers`
//! on a fresh database.
//!
//! Slow searches are made deterministic by holding an ACCESS EXCLUSIVE lock
//! on `chunks` from the test: the search waits on it for as long as the test
//! wants, exactly as a slow scan would hold its connection.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn uploads_beyond_the_budget_are_refused_at_once_and_the_budget_comes_back() {
    let db = TestDb::new();
    let budget = 3 * MIB;
    let api = Api::start(
        &db,
        &[
            "--max-upload-bytes",
            &MIB.to_string(),
            "--upload-budget-bytes",
            &budget.to_string(),
            "--upload-user-budget-bytes",
            &(MIB + MIB / 2).to_string(),
        ],
        &[],
    )
    .await;
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    // Three uploads of 1 MiB, sent but for their last byte, hold the whole
    // budget (reserved as their bytes arrived).
    let mut held = Vec::new();
    for user in &users[..3] {
        held.push(held_upload(&api.url, *user, MIB).await);
    }
    wait_metric(&api, "ragctl_upload_bytes_in_flight", budget as f64).await;

    // A fourth user finds no room: 503 at once.
    assert_refused(
        &full_upload(&api.url, users[3], MIB).await,
        503,
        "server_busy",
    );
    // With room again, the first user's second upload grows past their
    // share as its bytes arrive: 429.
    let (mut raw, rest) = held.pop().unwrap();
    raw.send(&rest).await;
    assert_eq!(raw.response().await.status, 201);
    assert_refused(
        &full_upload(&api.url, users[0], MIB).await,
        429,
        "too_many_uploads",
    );

    for (mut raw, rest) in held {
        raw.send(&rest).await;
        let r = raw.response().await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["size_bytes"], MIB);
    }
    wait_metric(&api, "ragctl_upload_bytes_in_flight", 0.0).await;
    let r = full_upload(&api.url, users[3], MIB).await;
    assert_eq!(r.status, 201, "the budget is free again: {}", r.body);
    let refused = api
        .metric("ragctl_uploads_refused_total{reason=\"busy\"}")
        .await;
    assert_eq!(refused, 1.0);
    // The stored bytes are the uploaded ones.
    let id = r.body["id"].as_str().unwrap();
    let rows = db.query(&format!(
        "SELECT length(content), substr(content, 1, 3) = 'aaa'::bytea FROM document_blobs WHERE document_id = '{id}'"
    )).await;
    assert_eq!(
        (rows[0].get::<_, i32>(0), rows[0].get::<_, bool>(1)),
        (MIB as i32, true)
    );
}

#[tokio::test]
async fn a_flood_of_big_uploads_stays_within_the_memory_bound() {
    let db = TestDb::new();
    let (size, budget, n) = (4 * MIB, 16 * MIB, 32);
    let api = Api::start(
        &db,
        &[
            "--max-upload-bytes",
            &size.to_string(),
            "--upload-budget-bytes",
            &budget.to_string(),
        ],
        &[],
    )
    .await;
    // Warm up (pool connections, code paths) before reading the baseline.
    assert_eq!(
        full_upload(&api.url, Uuid::new_v4(), size).await.status,
        201
    );
    let before = vm_hwm_kib(api.proc.pid());

    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = api.url.clone();
            tokio::spawn(async move {
                let r = full_upload(&url, Uuid::new_v4(), size).await;
                (r.status, r.body)
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => created += 1,
            503 => assert_eq!(body["error"]["code"], "server_busy"),
            // Refused before the body was read: the 503 can be lost to the
            // reset when the server closes on unread bytes.
            RawResponse::CUT => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let after = vm_hwm_kib(api.proc.pid());
    // The budget's bytes (twice: a buffer and what surrounds it) and ~1 MiB
    // of socket and parser buffers per connection. Without the budget this
    // flood holds all 32 × 4 MiB at once (measured: +165 MB in a debug build).
    let bound = before + (2 * budget + n * MIB) as u64 / 1024;
    eprintln!("VmHWM {before} kB -> {after} kB ({created} of {n} created; bound {bound} kB)");
    assert!(created > 0);
    assert!(
        after <= bound,
        "VmHWM grew from {before} kB to {after} kB, over {bound} kB"
    );
}

async fn assistant_message(api: &Api, user: Uuid, conv: &str) -> Value {
    let (code, body) = get_json(api, user, &format!("/conversations/{conv}/messages")).await;
    assert_eq!(code, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .cloned()
        .expect("an assistant message")
}

#[tokio::test]
async fn a_search_over_the_statement_timeout_answers_query_timeout() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--statement-timeout-ms", "300"], &[]).await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let conv = new_conversation(&api, user, None).await;
    let lock = TableLock::searches(&db).await;

    let r = ask(&api, user, &conv, "reimbursement rules")
        .await
        .response()
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "query_timeout");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("statement timeout"), "{message}");
    let answer = assistant_message(&api, user, &conv).await;
    assert_eq!(answer["status"], "error");
    assert!(
        answer["error_message"]
            .as_str()
            .unwrap()
            .contains("statement timeout")
    );

    // Other requests are unaffected.
    let (code, body) = get_json(&api, other, "/documents").await;
    assert_eq!(code, 200, "{body}");
    lock.release().await;
}

#[tokio::test]
async fn a_search_whose_client_leaves_is_cancelled_on_the_server() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--statement-timeout-ms", "600000"], &[]).await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let conv = new_conversation(&api, user, None).await;
    let lock = TableLock::searches(&db).await;

    let raw = ask(&api, user, &conv, "reimbursement rules").await;
    let pids = wait_searches(&db, 1).await;
    // Meanwhile another user is served.
    let (code, body) = get_json(&api, other, "/documents").await;
    assert_eq!(code, 200, "{body}");

    drop(raw); // the client goes away mid-query
    wait_searches(&db, 0).await;
    let still: Vec<i32> = db
        .query(&format!(
            "SELECT pid FROM pg_stat_activity WHERE pid = {} AND query LIKE '%bm25_terms%' AND state = 'active'",
            pids[0]
        ))
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(still.is_empty());
    // The pending answer says what happened instead of staying pending.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = assistant_message(&api, user, &conv).await;
        if answer["status"] == "error" {
            let why = answer["error_message"].as_str().unwrap();
            assert!(why.contains("client went away"), "{why}");
            break;
        }
        assert!(Instant::now() < deadline, "answer still {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.metric("ragctl_queries_cancelled_total").await >= 1.0);
    lock.release().await;
}

#[tokio::test]
async fn readyz_is_not_ready_while_the_pool_is_exhausted() {
    let db = TestDb::new();
    let api = Api::start(
        &db,
        &["--pool-size", "2", "--statement-timeout-ms", "600000"],
        &[],
    )
    .await;
    // Two uploads wait on a lock on `documents`, each holding a connection
    // (searches cannot: they have a share of the pool, --search-pool-size).
    let lock = TableLock::take(&db, "documents").await;
    let mut uploads = vec![];
    for _ in 0..2 {
        let (mut raw, rest) = held_upload(&api.url, Uuid::new_v4(), 1024).await;
        raw.send(&rest).await;
        uploads.push(raw);
    }
    wait_blocked(&db, 2).await;

    let (status, body) = api.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["pool"]["max_size"], 2, "{body}");
    assert_eq!(body["pool"]["available"], 0, "{body}");
    assert_eq!(body["database"]["ok"], false, "{body}");
    // Liveness is another question: the process is up.
    let r = http()
        .get(format!("{}/healthz", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    lock.release().await;
    for raw in uploads {
        let r = raw.response().await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    api.wait_ready().await;
    let (_, body) = api.readyz().await;
    assert_eq!(body["ready"], true, "{body}");
}

#[tokio::test]
async fn bad_json_input_answers_in_the_error_shape() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let conv = new_conversation(&api, user, None).await;
    let post = |path: &str| {
        http()
            .post(format!("{}{path}", api.url))
            .bearer_auth(token(user))
    };
    let messages = format!("/conversations/{conv}/messages");
    let check = async |req: reqwest::RequestBuilder, status: u16, code: &str, says: &str| {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.expect("a JSON error body");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    };

    check(
        post(&messages).json(&json!({"content": "nul\u{0}here"})),
        400,
        "bad_request",
        "NUL",
    )
    .await;
    check(
        post("/conversations").json(&json!({"title": "a\u{0}b"})),
        400,
        "bad_request",
        "NUL",
    )
    .await;
    let long = "t".repeat(201);
    check(
        post("/conversations").json(&json!({ "title": long })),
        400,
        "bad_request",
        "200 characters",
    )
    .await;
    check(
        post(&messages).json(&json!({"content": "q".repeat(16_001)})),
        400,
        "bad_request",
        "16000",
    )
    .await;
    let huge = json!({ "title": "x".repeat(3_000_000) });
    check(
        post("/conversations").json(&huge),
        413,
        "payload_too_large",
        "limit",
    )
    .await;
    let huge = json!({ "content": "x".repeat(3_000_000) });
    check(
        post(&messages).json(&huge),
        413,
        "payload_too_large",
        "limit",
    )
    .await;
    check(
        post(&messages).body(r#"{"content":"hi"}"#),
        415,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    check(
        post(&messages)
            .header("content-type", "application/json")
            .body("{"),
        400,
        "bad_request",
        "",
    )
    .await;
    let delete = http()
        .delete(format!("{}/documents", api.url))
        .bearer_auth(token(user));
    check(delete, 405, "method_not_allowed", "method").await;

    // A title at the limit is fine, and nothing was stored by the refusals.
    let id = new_conversation(&api, user, Some(&"t".repeat(200))).await;
    assert!(!id.is_empty());
    let (_, body) = get_json(&api, user, &messages).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 0, "{body}");
}
