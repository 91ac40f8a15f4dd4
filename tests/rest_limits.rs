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

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const MIB: usize = 1024 * 1024;

/// An HTTP/1.1 request written by hand, so that a test controls when the
/// body is sent and when the connection goes away.
struct Raw {
    stream: TcpStream,
}

struct RawResponse {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    /// Sends the head and the first `body.len()` bytes of a `length`-byte body.
    async fn start(
        base: &str,
        method: &str,
        path: &str,
        user: Uuid,
        ctype: &str,
        length: usize,
        body: &[u8],
    ) -> Raw {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.expect("connect to the API");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n",
            token(user)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        Raw { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads the whole response (the server answers with a Content-Length).
    async fn response(mut self) -> RawResponse {
        let mut buf = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 8192];
                let n = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .expect("read the response");
                assert!(
                    n > 0,
                    "connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
                    if buf.len() >= end + 4 + length {
                        let body = serde_json::from_slice(&buf[end + 4..end + 4 + length])
                            .unwrap_or(Value::Null);
                        let status = head[9..12].parse().unwrap();
                        return RawResponse { status, head, body };
                    }
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("a response in time")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A multipart body holding one `file` field of `size` bytes of text,
/// split as (everything before the file's last byte, the rest).
fn multipart(size: usize) -> (Vec<u8>, Vec<u8>, String) {
    let boundary = "ragctlboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'a', size));
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let split = body.len() - 1;
    let rest = [&body[split..], &tail[..]].concat();
    body.truncate(split);
    (
        body,
        rest,
        format!("multipart/form-data; boundary={boundary}"),
    )
}

/// An upload whose body stops one byte short, holding its reservation.
async fn held_upload(base: &str, user: Uuid, size: usize) -> (Raw, Vec<u8>) {
    let (first, rest, ctype) = multipart(size);
    let raw = Raw::start(
        base,
        "POST",
        "/documents",
        user,
        &ctype,
        first.len() + rest.len(),
        &first,
    )
    .await;
    (raw, rest)
}

async fn full_upload(base: &str, user: Uuid, size: usize) -> RawResponse {
    let (mut raw, rest) = held_upload(base, user, size).await;
    raw.send(&rest).await;
    raw.response().await
}

async fn wait_metric(api: &Api, line: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while api.metric(line).await != want {
        assert!(
            Instant::now() < deadline,
            "{line} never reached {want}:\n{}",
            api.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_refused(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}\n{}", r.head, r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert_eq!(header(&r.head, "retry-after"), Some("2"), "{}", r.head);
}

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
    // Three uploads of 1 MiB hold the whole budget while their bodies wait.
    let mut held = Vec::new();
    for user in &users[..3] {
        held.push(held_upload(&api.url, *user, MIB).await);
    }
    wait_metric(&api, "ragctl_upload_bytes_in_flight", budget as f64).await;

    // A fourth user finds no room: 503 at once. The first user's second
    // upload would exceed their share: 429.
    assert_refused(
        &full_upload(&api.url, users[3], MIB).await,
        503,
        "server_busy",
    );
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

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
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

/// Holds ACCESS EXCLUSIVE on `chunks` until dropped or released: every
/// search waits on it.
struct ChunksLock {
    client: tokio_postgres::Client,
}

impl ChunksLock {
    async fn take(db: &TestDb) -> ChunksLock {
        let (client, conn) = ragctl::db::connect(&db.url, "ragctl-test-lock")
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("BEGIN; LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        ChunksLock { client }
    }

    async fn release(self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }
}

/// Backend pids of the API's searches running now.
async fn running_searches(db: &TestDb) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = 'ragctl-api' AND state = 'active' AND query LIKE '%ts_rank_cd%'",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn wait_searches(db: &TestDb, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pids = running_searches(db).await;
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{} searches running, waited for {n}",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `POST /conversations/{id}/messages`; the answer is read later.
async fn ask(api: &Api, user: Uuid, conv: &str, question: &str) -> Raw {
    let body = serde_json::to_vec(&json!({ "content": question })).unwrap();
    let path = format!("/conversations/{conv}/messages");
    Raw::start(
        &api.url,
        "POST",
        &path,
        user,
        "application/json",
        body.len(),
        &body,
    )
    .await
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
    let lock = ChunksLock::take(&db).await;

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
    let lock = ChunksLock::take(&db).await;

    let raw = ask(&api, user, &conv, "reimbursement rules").await;
    let pids = wait_searches(&db, 1).await;
    // Meanwhile another user is served.
    let (code, body) = get_json(&api, other, "/documents").await;
    assert_eq!(code, 200, "{body}");

    drop(raw); // the client goes away mid-query
    wait_searches(&db, 0).await;
    let still: Vec<i32> = db
        .query(&format!(
            "SELECT pid FROM pg_stat_activity WHERE pid = {} AND query LIKE '%ts_rank_cd%' AND state = 'active'",
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
    let users = [Uuid::new_v4(), Uuid::new_v4()];
    let mut convs = vec![];
    for u in users {
        convs.push(new_conversation(&api, u, None).await);
    }
    let lock = ChunksLock::take(&db).await;
    let mut asks = vec![];
    for (u, c) in users.iter().zip(&convs) {
        asks.push(ask(&api, *u, c, "anything at all").await);
    }
    wait_searches(&db, 2).await;

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
    for raw in asks {
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
