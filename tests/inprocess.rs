//! `api::run` in the test's own process, on `127.0.0.1:0`: the state is
//! built as `serve` builds it, on a fresh database; health, readiness, a
//! REST round trip and a `/ws` upgrade, then the shutdown token ends it.

mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use ragctl::api;
use ragctl::cli::serve::{Parts, ServeArgs, build_state};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `ragctl serve`'s flags at their defaults.
#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

/// A running in-process API: its URL, its shutdown token and its task.
struct InProcess {
    url: String,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(db: &TestDb) -> InProcess {
    let args = Serve::try_parse_from(["serve", "--no-workers"])
        .unwrap()
        .args;
    let pool = ragctl::db::pool(&db.url, args.runtime.pool_size, "ragctl-inprocess")
        .await
        .unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let budget = api::FdBudget::derive(4096, args.runtime.pool_size, None, 100).unwrap();
    let shutdown = CancellationToken::new();
    let parts = Parts {
        pool,
        url: &db.url,
        secret: SECRET,
        channel: "rag_events",
        metrics: None,
        budget,
        metrics_separate: false,
        shutdown: shutdown.clone(),
        embedder: None,
        relay: None,
    };
    let (state, _bridge) = build_state(&args, parts).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let run = tokio::spawn(api::run(listener, state, Duration::from_secs(5)));
    InProcess { url, shutdown, run }
}

async fn get(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_run_serves_in_process_and_returns_on_shutdown() {
    let db = TestDb::new();
    let server = start(&db).await;

    let (status, body) = get(&format!("{}/healthz", server.url)).await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(&format!("{}/readyz", server.url)).await;
        if status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // REST round trip: a conversation created is listed.
    let user = Uuid::new_v4();
    let id = new_conversation_at(&server.url, user, Some("in process")).await;
    let (status, listed) = get_json_at(&server.url, user, "/conversations").await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed.to_string().contains(&id), "{id} not in {listed}");

    // /ws upgrades, and shutdown closes the socket with 1001.
    let ws = server.url.replacen("http://", "ws://", 1);
    let mut client = Client::connect_url(&format!("{ws}/ws?token={}", token(user)))
        .await
        .expect("ws upgrade");
    server.shutdown.cancel();
    assert_eq!(client.expect_close().await, Some(1001));
    let ended = tokio::time::timeout(PATIENCE, server.run).await;
    ended
        .expect("api::run returns once the shutdown token is cancelled")
        .expect("the run task did not panic")
        .expect("api::run ended without an I/O error");
}
