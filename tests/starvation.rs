//! Connection floods (issue #8): idle TCP connections, slowloris headers and
//! a full WebSocket cap must not take `/healthz` and `/readyz` down. The
//! server runs with a lowered open-file limit, so the limits derived from
//! it are small and the floods cheap.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use uuid::Uuid;

/// Soft and hard `RLIMIT_NOFILE` of the server under test.
const NOFILE: u64 = 256;

/// Starts the server with `RLIMIT_NOFILE` = `NOFILE`, so that `serve`
/// cannot raise it.
async fn start_limited(db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> Api {
    Api::start_with(&db.url, extra, env, |cmd: &mut Command| {
        // SAFETY: only an async-signal-safe syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await
}

/// `name=<number>` from the server's start-up line about connection limits.
async fn limit(api: &Api, name: &str) -> usize {
    let line = api.proc.wait_line("connection limits").await;
    let key = format!(" {name}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line}"))
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// `GET path` on a connection of its own, as a health checker does; the
/// status and body. Fails the test if no answer comes within `PATIENCE`.
async fn get_fresh(url: &str, path: &str) -> (u16, String) {
    get_fresh_as(url, path, "").await
}

/// `get_fresh` with `headers` (each line ending in CRLF) in the request.
async fn get_fresh_as(url: &str, path: &str, headers: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr(url)).await?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of the metric line starting with `prefix` (0 if absent).
async fn metric(url: &str, prefix: &str) -> f64 {
    let auth = format!("Authorization: Bearer {METRICS_TOKEN}\r\n");
    let (status, body) = get_fresh_as(url, "/metrics", &auth).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn assert_healthy(api: &Api, during: &str) {
    for path in ["/healthz", "/readyz"] {
        let (status, body) = get_fresh(&api.url, path).await;
        assert_eq!(status, 200, "{path} {during}: {body}");
    }
}

/// Waits until the peer closes `tcp` (EOF or reset); panics after `PATIENCE`.
async fn wait_closed(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("{what}: still open after {PATIENCE:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_are_shed_and_health_answers() {
    let db = TestDb::new();
    // A header timeout far past the test: only shedding can make room.
    let api = start_limited(&db, &[], &[("RAG_HEADER_TIMEOUT_SECS", "3600")]).await;
    let cap = limit(&api, "max_connections").await;
    assert!(
        cap < NOFILE as usize,
        "the cap ({cap}) comes from the open-file limit"
    );

    let flood = cap + 100;
    let mut idle = Vec::with_capacity(flood);
    for i in 0..flood {
        idle.push(TcpStream::connect(addr(&api.url)).await.expect("connect"));
        if i % 50 == 49 {
            assert_healthy(&api, &format!("with {} idle connections open", i + 1)).await;
        }
    }
    // Every flood connection is accepted (counted) before health answers.
    let deadline = Instant::now() + PATIENCE;
    while metric(&api.url, "ragctl_http_connections_accepted_total").await < flood as f64 {
        assert!(Instant::now() < deadline, "the flood was never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_healthy(&api, "after the flood").await;

    let shed = metric(&api.url, "ragctl_http_connections_shed_total").await;
    assert!(shed >= 100.0, "shed {shed}, expected at least 100");
    let live = metric(&api.url, "ragctl_http_connections{").await;
    assert!(live <= cap as f64, "{live} connections open, cap {cap}");
    let emfile = metric(&api.url, "ragctl_http_accept_errors_total").await;
    assert_eq!(emfile, 0.0, "accept ran out of descriptors");
    // The oldest idle connection was among the shed.
    wait_closed(&mut idle[0], "the oldest idle connection").await;
}

#[tokio::test]
async fn slowloris_and_idle_connections_are_cut_by_the_header_timeout() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_HEADER_TIMEOUT_SECS", "1")]).await;

    // Headers trickled a byte at a time: the server closes before the end.
    let header = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    let mut slow = TcpStream::connect(addr(&api.url)).await.unwrap();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        assert!(
            sent < header.len(),
            "the whole trickled header was accepted"
        );
        assert!(Instant::now() < deadline, "slowloris still connected");
        if slow
            .write_all(&header.as_bytes()[sent..sent + 1])
            .await
            .is_err()
        {
            break Vec::new();
        }
        sent += 1;
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Vec::new(),
            Ok(Ok(n)) => break buf[..n].to_vec(),
            Err(_) => {}
        }
    };
    // Closed without a response, or with a 408: never the 200 of /healthz.
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.contains(" 408 "), "{answer}");

    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(addr(&api.url)).await.unwrap();
    wait_closed(&mut silent, "a connection that sent nothing").await;

    // So is a keep-alive connection idle after its request.
    let mut kept = TcpStream::connect(addr(&api.url)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    wait_closed(&mut kept, "an idle keep-alive connection").await;

    let timeouts = metric(&api.url, "ragctl_http_header_timeouts_total").await;
    assert!(timeouts >= 2.0, "header timeouts counted: {timeouts}");
    assert_healthy(&api, "after the slow clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_websocket_cap_answers_503_and_health_still_answers() {
    let db = TestDb::new();
    let api = start_limited(&db, &[], &[]).await;
    let cap = limit(&api, "ws_max_connections").await;
    let flag = limit(&api, "ws_max_connections_flag").await;
    assert!(
        cap < flag,
        "the WebSocket cap ({cap}) is below the flag ({flag})"
    );
    assert!(cap < limit(&api, "max_connections").await);

    // Many users, 32 sockets each: one user alone stops at their share
    // (--ws-max-per-user, tests/abuse_shares.rs).
    let url = |i: usize| {
        let user = Uuid::from_u128(1 + i as u128 / 32);
        format!("{}?token={}", api.ws_url(), token(user))
    };
    let mut sockets = Vec::with_capacity(cap);
    for i in 0..cap {
        sockets.push(
            Client::connect_url(&url(i))
                .await
                .expect("a socket under the cap"),
        );
    }
    match Client::connect_url(&url(cap + 32)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("too_many_connections"), "{body}");
        }
        Err(e) => panic!("the socket past the cap failed otherwise: {e}"),
        Ok(_) => panic!("a socket past the cap of {cap} was accepted"),
    }
    assert_healthy(&api, "with the WebSocket cap reached").await;
    let emfile = metric(&api.url, "ragctl_http_accept_errors_total").await;
    assert_eq!(emfile, 0.0, "accept ran out of descriptors");
}

#[tokio::test]
async fn metrics_can_move_to_their_own_listener() {
    let db = TestDb::new();
    let api = Api::start_with(&db.url, &["--metrics-addr", "127.0.0.1:0"], &[], |cmd| {
        cmd.env_remove("RAG_METRICS_TOKEN");
    })
    .await;
    let line = api.proc.wait_line("ragctl: metrics on ").await;
    let metrics_url = line
        .rsplit("metrics on ")
        .next()
        .unwrap()
        .trim()
        .trim_end_matches("/metrics")
        .to_string();

    let (status, body) = get_fresh(&metrics_url, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("ragctl_http_connections_accepted_total"),
        "{body}"
    );
    let (status, body) = get_fresh(&api.url, "/metrics").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    let (status, _) = get_fresh(&metrics_url, "/healthz").await;
    assert_eq!(status, 404, "the metrics listener serves /metrics only");
    assert_healthy(&api, "with metrics elsewhere").await;
}
