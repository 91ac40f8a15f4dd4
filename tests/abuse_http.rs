//! One signed-up user against the HTTP layer (issue #17, attacks 2, 3 and
//! 8c): request bodies dribbled a byte at a time, responses never read,
//! too many requests in flight, and `/metrics` read from the API port.
//! Each test runs `ragctl serve --no-workers` on a fresh database and
//! counts answers and refusals; nothing is timed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// The status of the response on `read`, or `None` if the connection
/// ended (or failed) before a whole head came.
async fn read_status(mut read: impl AsyncRead + Unpin) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf);
            return text.split(' ').nth(1).and_then(|s| s.parse().ok());
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `GET path` on a connection of its own with `Connection: close`: the
/// whole answer as text, or `None` if the connection was refused or cut.
async fn get_fresh(url: &str, path: &str, bearer: Option<&str>) -> Option<String> {
    let mut tcp = TcpStream::connect(addr(url)).await.ok()?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.starts_with("HTTP/1.1 ").then_some(text)
}

fn status_of(text: &str) -> u16 {
    text[9..12].parse().unwrap()
}

/// Retries `attempt` (each on a connection of its own) until it succeeds;
/// returns how many attempts failed first. Panics after `PATIENCE`.
async fn until_ok<F, Fut>(what: &str, api: &Api, mut attempt: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut failed = 0;
    while !attempt().await {
        failed += 1;
        assert!(
            Instant::now() < deadline,
            "{what} never succeeded ({failed} attempts) while the attack was on; log:\n{}",
            api.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failed
}

/// A metric of the separate metrics listener at `url` (0 if absent).
async fn metric_at(url: &str, prefix: &str) -> f64 {
    let text = get_fresh(url, "/metrics", None).await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric_at_least(api: &Api, line: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while api.metric(line).await < want {
        assert!(
            Instant::now() < deadline,
            "{line} never reached {want}:\n{}\nlog:\n{}",
            api.metrics().await,
            api.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the slow-body attacker saw: statuses answered, connections that
/// ended without an answer (refused at the budget, or cut).
#[derive(Default)]
struct Tally {
    started: AtomicUsize,
    cut: AtomicUsize,
    statuses: Mutex<HashMap<u16, usize>>,
}

impl Tally {
    fn count(&self, status: u16) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }
}

/// One attacker connection after another: each declares a 100,000-byte
/// JSON body and sends one byte a second, until the server answers or
/// cuts it, then starts again.
async fn slow_body_loop(url: String, token: String, tally: Arc<Tally>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let one = slow_body_once(&url, &token, &tally);
        tokio::select! {
            _ = stop.cancelled() => return,
            status = one => match status {
                Some(s) => *tally.statuses.lock().unwrap().entry(s).or_insert(0) += 1,
                None => {
                    tally.cut.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn slow_body_once(url: &str, token: &str, tally: &Tally) -> Option<u16> {
    let tcp = TcpStream::connect(addr(url)).await.ok()?;
    let (read, mut write) = tcp.into_split();
    let head = format!(
        "POST /conversations HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.ok()?;
    tally.started.fetch_add(1, Ordering::Relaxed);
    let dribble = async move {
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        status = read_status(read) => status,
        _ = dribble => None,
    }
}

/// Attack 3: one user's slow request bodies fill the connection budget.
/// Another user's REST, `/healthz` and `/ws` still get through while the
/// attack goes on; the attacker is answered 429 (its in-flight share) and
/// 408 (too slow a body).
#[tokio::test]
async fn slow_bodies_from_one_user_do_not_lock_out_the_others() {
    let db = TestDb::new();
    let (api, tally) = slow_body_attack(&db, &[], false).await;
    let (s408, s429) = (tally.count(408), tally.count(429));
    let slow = api
        .metric(r#"ragctl_http_slow_clients_total{listener="api",reason="body_rate"}"#)
        .await;
    assert!(s408 > 0, "no slow body was answered 408");
    assert!(
        slow >= s408 as f64,
        "{slow} body timeouts counted, {s408} seen"
    );
    let refused = api
        .metric(r#"ragctl_http_requests_refused_total{reason="user_in_flight"}"#)
        .await;
    assert!(
        refused >= s429 as f64,
        "{refused} refusals counted, {s429} seen"
    );
}

/// The same with the per-user cap and the body rate out of the way: only
/// shedding the connections stalled on their client lets the others in.
#[tokio::test]
async fn stalled_requests_are_shed_at_the_connection_budget() {
    let env = [
        ("RAG_MAX_REQUESTS_PER_USER", "100000"),
        ("RAG_BODY_TIMEOUT_SECS", "100000"),
    ];
    let db = TestDb::new();
    let (api, tally) = slow_body_attack(&db, &env, true).await;
    assert_eq!(tally.count(408) + tally.count(429), 0);
    let shed = api
        .metric(r#"ragctl_http_stalled_shed_total{listener="api"}"#)
        .await;
    assert!(shed > 0.0, "no stalled connection was shed");
}

/// Runs the slow-body attack from one user against a 64-connection budget
/// (with `settle`, from when every slot serves an attacker's request)
/// until another user has had `/healthz`, REST and `/ws` answered; returns
/// the server (for its metrics) and what the attacker saw.
async fn slow_body_attack(db: &TestDb, env: &[(&str, &str)], settle: bool) -> (Api, Arc<Tally>) {
    const BUDGET: usize = 64;
    let budget = BUDGET.to_string();
    let args = [
        "--max-connections",
        &budget,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let api = Api::start(db, &args, env).await;
    let line = api.proc.wait_line("ragctl: metrics on ").await;
    let metrics_url = line.rsplit("metrics on ").next().unwrap().trim();
    let metrics_url = metrics_url.trim_end_matches("/metrics").to_string();
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    // More than the budget: every slot the server frees, the attacker takes.
    let tasks: Vec<_> = (0..BUDGET + 8)
        .map(|_| {
            let run = slow_body_loop(
                api.url.clone(),
                token(attacker),
                tally.clone(),
                stop.clone(),
            );
            tokio::spawn(run)
        })
        .collect();
    // Every attacker connection has sent its head once: the budget is full.
    let deadline = Instant::now() + PATIENCE;
    while tally.started.load(Ordering::Relaxed) < BUDGET {
        assert!(Instant::now() < deadline, "the attack never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Settled: every slot serves an attacker's request, so a newcomer that
    // finds nothing fresh or idle to shed is refused.
    let deadline = Instant::now() + PATIENCE;
    let refused = r#"ragctl_http_connections_refused_total{listener="api"}"#;
    while settle && metric_at(&metrics_url, refused).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the budget never filled: {}",
            get_fresh(&metrics_url, "/metrics", None)
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = api.url.clone();
    let healthz = until_ok("/healthz", &api, || async {
        get_fresh(&url, "/healthz", None)
            .await
            .is_some_and(|t| status_of(&t) == 200)
    })
    .await;
    let victim_token = token(victim);
    let rest = until_ok("another user's GET /documents", &api, || async {
        get_fresh(&url, "/documents", Some(&victim_token))
            .await
            .is_some_and(|t| status_of(&t) == 200)
    })
    .await;
    let ws_url = format!("{}?token={}", api.ws_url(), victim_token);
    let ws = until_ok("another user's /ws", &api, || async {
        Client::connect_url(&ws_url).await.is_ok()
    })
    .await;
    // With the body rate on, the attack goes on until bodies were timed out.
    let deadline = Instant::now() + PATIENCE;
    while env.is_empty() && tally.count(408) == 0 {
        assert!(
            Instant::now() < deadline,
            "no slow body was answered 408; log:\n{}",
            api.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!tasks.iter().any(|t| t.is_finished()), "the attack stopped");
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }

    let (s408, s429) = (tally.count(408), tally.count(429));
    eprintln!(
        "victim failures before success: healthz {healthz}, rest {rest}, ws {ws}; attacker: \
         {} heads sent, 408 x{s408}, 429 x{s429}, cut {}",
        tally.started.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed)
    );
    let hwm = vm_hwm_kib(api.proc.pid());
    eprintln!("server VmHWM {hwm} kB");
    assert!(hwm < 256 * 1024, "VmHWM {hwm} kB");
    (api, tally)
}

/// A conversation of `n` messages of `size` bytes each, by SQL.
async fn big_conversation(db: &TestDb, user: Uuid, n: usize, size: usize) -> Uuid {
    let conv = Uuid::new_v4();
    db.query(&format!(
        "INSERT INTO conversations (id, user_id, title) VALUES ('{conv}', '{user}', 'big')"
    ))
    .await;
    db.query(&format!(
        "INSERT INTO messages (id, conversation_id, user_id, role, content, status)
         SELECT gen_random_uuid(), '{conv}', '{user}', 'user', repeat('x', {size}), 'completed'
         FROM generate_series(1, {n})"
    ))
    .await;
    conv
}

/// A GET whose response the client never reads: a small receive buffer,
/// so that the server's writes stop making progress soon.
/// Requests pipelined on one connection by [`unread_get`]: a list answers
/// one page of at most 1 MiB, which the kernel's buffers could take whole,
/// so the client asks for many pages at once and reads none.
const PIPELINED: usize = 16;

async fn unread_get(url: &str, path: &str, user: Uuid) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr(url).parse().unwrap()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user)
    );
    tcp.write_all(req.repeat(PIPELINED).as_bytes())
        .await
        .unwrap();
    tcp
}

/// Attack 2 (write side): clients that ask for large responses (16
/// pipelined pages of ~1 MB) and never read them. The server gives each up once its writes stop making progress
/// (`RAG_WRITE_TIMEOUT_SECS`), freeing the buffered body, and serves
/// another user meanwhile.
#[tokio::test]
async fn clients_that_never_read_a_large_response_are_given_up() {
    const CLIENTS: usize = 4;
    const MESSAGES: usize = 50;
    const SIZE: usize = 200_000;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_WRITE_TIMEOUT_SECS", "2")]).await;
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let conv = big_conversation(&db, attacker, MESSAGES, SIZE).await;
    let path = format!("/conversations/{conv}/messages");
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        held.push(unread_get(&api.url, &path, attacker).await);
    }
    wait_metric_at_least(
        &api,
        r#"ragctl_http_slow_clients_total{listener="api",reason="write_stalled"}"#,
        CLIENTS as f64,
    )
    .await;
    // Each connection was closed before its whole response was written.
    for mut tcp in held {
        let mut got = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        let read_all = async {
            loop {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
        };
        tokio::time::timeout(PATIENCE, read_all)
            .await
            .expect("the server closed the connection");
        assert!(
            got < PIPELINED * 1_000_000,
            "every response ({got} bytes) was sent"
        );
    }
    let (status, body) = get_json(&api, victim, "/documents").await;
    assert_eq!(status, 200, "{body}");
    let hwm = vm_hwm_kib(api.proc.pid());
    eprintln!("server VmHWM {hwm} kB with {CLIENTS} clients not reading {PIPELINED} pages");
    assert!(hwm < 512 * 1024, "VmHWM {hwm} kB");
}

/// Backends of this database waiting on a lock.
async fn lock_waiters(db: &TestDb) -> i64 {
    let rows = db
        .query(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
    rows[0].get(0)
}

/// One user's requests in flight are capped (`RAG_MAX_REQUESTS_PER_USER`):
/// the one past the cap is answered 429 with `Retry-After` at once, while
/// another user and `/healthz` are served.
#[tokio::test]
async fn one_users_requests_in_flight_are_capped() {
    const CAP: usize = 4;
    let db = TestDb::new();
    let cap = CAP.to_string();
    let env = [
        ("RAG_MAX_REQUESTS_PER_USER", cap.as_str()),
        ("RAG_STATEMENT_TIMEOUT_MS", "0"),
    ];
    let api = Api::start(&db, &[], &env).await;
    let (heavy, other) = (Uuid::new_v4(), Uuid::new_v4());
    // `GET /documents` waits on this lock for as long as the test holds it.
    let (locker, conn) = ragctl::db::connect(&db.url, "ragctl-test-lock")
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let held: Vec<_> = (0..CAP)
        .map(|_| {
            let url = api.url.clone();
            tokio::spawn(async move { get_json_at(&url, heavy, "/documents").await })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while lock_waiters(&db).await < CAP as i64 {
        assert!(
            Instant::now() < deadline,
            "the requests never queued on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let extra = http()
        .get(format!("{}/documents", api.url))
        .bearer_auth(token(heavy))
        .send();
    let extra = tokio::time::timeout(PATIENCE, extra)
        .await
        .expect("the request past the cap was not answered")
        .unwrap();
    assert_eq!(extra.status().as_u16(), 429);
    assert!(extra.headers().contains_key("retry-after"));
    let body: serde_json::Value = extra.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    // Health checks are never counted, even with the user's token.
    let health = http()
        .get(format!("{}/healthz", api.url))
        .bearer_auth(token(heavy))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, body) = get_json(&api, other, "/conversations").await;
    assert_eq!(status, 200, "another user: {body}");
    let refused = api
        .metric(r#"ragctl_http_requests_refused_total{reason="user_in_flight"}"#)
        .await;
    assert_eq!(refused, 1.0);

    locker.batch_execute("ROLLBACK").await.unwrap();
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = get_json(&api, heavy, "/documents").await;
    assert_eq!(status, 200, "the share is given back: {body}");
    drop(locker);
    let _ = conn_task.await;
}

/// Attack 8c: `/metrics` on the API port is closed by default, open only
/// with `--metrics-token`, and never readable cross-origin.
#[tokio::test]
async fn metrics_are_not_public() {
    let db = TestDb::new();
    let api = Api::start_with(&db.url, &[], &[], |cmd| {
        cmd.env_remove("RAG_METRICS_TOKEN");
    })
    .await;
    let text = get_fresh(&api.url, "/metrics", None).await.unwrap();
    assert_eq!(status_of(&text), 404, "{text}");
    assert!(
        text.contains("--metrics-token"),
        "says how to enable: {text}"
    );
    assert!(!text.contains("ragctl_http"), "{text}");
    drop(api);

    let api = Api::start(&db, &["--cors-origin", "*"], &[]).await;
    let ask = |bearer: Option<&'static str>| {
        let mut req = http()
            .get(format!("{}/metrics", api.url))
            .header("Origin", "https://evil.example");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for bearer in [None, Some("wrong-token")] {
        let r = ask(bearer).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{bearer:?}");
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let r = ask(Some(METRICS_TOKEN)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "metrics are never under CORS"
    );
    assert!(r.text().await.unwrap().contains("ragctl_http"));
    // CORS is on for the API itself.
    let r = http()
        .get(format!("{}/healthz", api.url))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("access-control-allow-origin"));
    let refused = api
        .metric(r#"ragctl_metrics_refused_total{reason="bad_token"}"#)
        .await;
    assert_eq!(refused, 2.0);
}
