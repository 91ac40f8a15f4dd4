//! The NATS bus end to end (issue #21): API instances started with
//! `serve --bus nats`, the relay inside them or as `ragctl relay`
//! processes, workers as separate processes, a real nats-server per test
//! and WebSocket clients acting as users, compared with REST.

mod common;

use std::time::{Duration, Instant};

use common::bus::*;
use common::holding::*;
use common::nats::NatsServer;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// An API on the NATS bus; `relay` is `auto` (a relay candidate) or `off`.
async fn nats_api(db: &TestDb, nats: &NatsServer, relay: &str) -> Api {
    let url = nats.url();
    let args = ["--bus", "nats", "--nats-url", &url, "--relay", relay];
    Api::start(db, &args, &[]).await
}

/// The number of backends of `db` with this application_name.
async fn backends(db: &TestDb, app: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = '{app}' AND datname = '{}'",
        db.name
    );
    db.query(&sql).await[0].get(0)
}

/// Exactly one relay LISTEN backend (once it is up) and no API listener.
async fn assert_one_listen_backend(db: &TestDb) {
    let deadline = Instant::now() + PATIENCE;
    while backends(db, "ragctl-relay").await != 1 {
        assert!(Instant::now() < deadline, "never one ragctl-relay backend");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backends(db, "ragctl-listener").await, 0, "an API LISTENs");
}

/// Waits until `api`'s relay leads (its `/readyz` says so).
async fn wait_leader(api: &Api) {
    let deadline = Instant::now() + PATIENCE;
    while api.readyz().await.1["relay"]["role"] != "leader" {
        assert!(Instant::now() < deadline, "{}", api.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn doc_is(id: &Value, status: &str) -> impl Fn(&Value) -> bool {
    let fields = [("document_id", id.clone()), ("status", s(status))];
    move |f| is(f, "document.status_updated", &fields)
}

fn job_is(id: &Value, fields: &[(&'static str, Value)]) -> impl Fn(&Value) -> bool {
    let mut fields = fields.to_vec();
    fields.push(("document_id", id.clone()));
    move |f| is(f, "job.status_updated", &fields)
}

/// Criterion 1, success: created, parse success, parsed, ingested.
async fn expect_success(api: &Api, user: Uuid, client: &mut Client) {
    let doc = upload(api, user, "handbook.pdf").await;
    let id = s(doc["id"].as_str().unwrap());
    let created = [("document_id", id.clone()), ("status", s("uploaded"))];
    client
        .expect("document.created", |f| is(f, "document.created", &created))
        .await;
    let parse_ok = [("kind", s("parse")), ("status", s("success"))];
    let job = client.expect("parse success", job_is(&id, &parse_ok)).await;
    assert_eq!(job["payload"]["retry_count"], 0, "{job}");
    client.expect("parsed", doc_is(&id, "parsed")).await;
    client.expect("ingested", doc_is(&id, "ingested")).await;
}

/// Criterion 1, failure: three retries, the job failed with its error,
/// the document in error with the same message.
async fn expect_failure(api: &Api, user: Uuid, client: &mut Client) {
    let doc = upload(api, user, "corrupt.pdf").await;
    let id = s(doc["id"].as_str().unwrap());
    for retry in 1..=3 {
        let queued = [("status", s("queued")), ("retry_count", json!(retry))];
        client.expect("a retry", job_is(&id, &queued)).await;
    }
    let failed = [("status", s("failed"))];
    let failed = client.expect("job failed", job_is(&id, &failed)).await;
    assert_eq!(failed["payload"]["retry_count"], 3, "{failed}");
    let message = failed["payload"]["error_message"].as_str().unwrap();
    assert!(message.starts_with("corrupt PDF"), "{failed}");
    let err = client.expect("document error", doc_is(&id, "error")).await;
    assert_eq!(err["payload"]["error_message"], message);
}

/// Acceptance criteria 1–4 over the NATS bus, the relay inside the API.
#[tokio::test]
async fn the_acceptance_criteria_hold_over_nats() {
    let db = TestDb::new();
    let mut nats = NatsServer::start();
    let api = nats_api(&db, &nats, "auto").await;
    wait_leader(&api).await;
    let parse_env = [
        FAST_RETRIES[0],
        FAST_RETRIES[1],
        ("RAG_RETRY_POLICY", "all"),
    ];
    let _workers = [
        worker(&db, "parse", &parse_env),
        worker(&db, "ingest", &FAST_RETRIES),
    ];
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 1.0).await;
    settle(&api, 1.0).await;

    expect_success(&api, user, &mut client).await;
    expect_failure(&api, user, &mut client).await;
    assert_one_listen_backend(&db).await;

    // Criterion 3: NATS down, business goes on and REST tells the truth.
    nats.kill();
    let body = wait_bus_connected(&api, false).await;
    assert_eq!(body["ready"], true, "{body}");
    let doc = upload(&api, user, "handbook.pdf").await;
    wait_status(&api, user, doc["id"].as_str().unwrap(), "ingested").await;
    // NATS back: the same socket ends holding what REST shows.
    nats.restart();
    let mut held = Holding::default();
    for f in &client.frames.clone() {
        held.apply_any(f);
    }
    let realtime = read_until_rest(&api, user, &mut client, &mut held, None).await;
    assert!(realtime.is_empty(), "healed, so no resync: {realtime:?}");
    wait_bus_connected(&api, true).await;
}
