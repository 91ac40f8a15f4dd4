//! The NATS bus end to end (issue #21): API instances started with
//! `serve --bus nats`, the relay inside them or as `ragctl relay`
//! processes, workers as separate processes, a real nats-server per test
//! and WebSocket clients acting as users, compared with REST.

mod common;

use std::collections::HashSet;
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
    let mut nats = NatsServer::start().expect("nats-server");
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
    nats.restart().expect("nats-server restart");
    let mut held = Holding::default();
    for f in &client.frames.clone() {
        held.apply_any(f);
    }
    let realtime = read_until_rest(&api, user, &mut client, &mut held, None).await;
    assert!(realtime.is_empty(), "healed, so no resync: {realtime:?}");
    wait_bus_connected(&api, true).await;
}

/// Reads `client` until it holds what REST shows, with no resync on the
/// way; returns every frame it got.
async fn ends_equal_to_rest(api: &Api, user: Uuid, client: &mut Client) -> Vec<String> {
    let mut held = Holding::default();
    for f in &client.frames.clone() {
        held.apply_any(f);
    }
    let realtime = read_until_rest(api, user, client, &mut held, None).await;
    assert!(realtime.is_empty(), "user {user}: {realtime:?}");
    client.frames.iter().map(Value::to_string).collect()
}

/// No frame twice. (Only where no heal ran: a heal re-sends the current
/// state of every row changed in its window, which may repeat a frame.)
/// Gaps the instance's bus found (each healed), all causes.
async fn gaps(api: &Api) -> f64 {
    let text = api.metrics().await;
    let lines = text
        .lines()
        .filter(|l| l.starts_with("ragctl_bus_gaps_total"));
    lines
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn assert_no_duplicates(user: Uuid, frames: &[String]) {
    let mut seen = HashSet::new();
    let twice: Vec<&String> = frames.iter().filter(|f| !seen.insert(*f)).collect();
    assert!(twice.is_empty(), "user {user} got these twice: {twice:#?}");
}

/// A socket per `(user, instance)`, each subscribed (one subscription per
/// user an instance holds) and each instance past its first heartbeat.
async fn connect_placed(apis: &[Api], placement: &[(Uuid, usize)]) -> Vec<Client> {
    let mut clients = vec![];
    for (user, i) in placement {
        clients.push(Client::connect(&apis[*i], *user, "").await);
    }
    for (n, api) in apis.iter().enumerate() {
        let held: HashSet<Uuid> = placement.iter().filter(|p| p.1 == n).map(|p| p.0).collect();
        let subs = held.len() as f64;
        wait_metric(api, "ragctl_bus_subscriptions ", |v| v == subs).await;
        settle(api, 1.0).await;
    }
    clients
}

/// Three instances, each a relay candidate, with users spread over them:
/// every event reaches exactly its user's sockets once, each instance
/// receives only the events of the users it holds, and one backend LISTENs.
#[tokio::test]
async fn three_instances_receive_only_their_users_events() {
    let db = TestDb::new();
    let nats = NatsServer::start().expect("nats-server");
    let mut apis = vec![];
    for _ in 0..3 {
        apis.push(nats_api(&db, &nats, "auto").await);
    }
    let _workers = workers(&db);
    // a on instances 0 and 1, b on 1, c on 2, d nowhere.
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let (a, b, c) = (users[0], users[1], users[2]);
    let placement = [(a, 0), (a, 1), (b, 1), (c, 2)];
    let mut clients = connect_placed(&apis, &placement).await;
    for (i, user) in users.iter().enumerate() {
        for n in 0..3 {
            upload_text(&apis[i % 3], *user, n).await;
        }
    }
    wait_all_done(&apis[0], &users, 3).await;

    // A heal (a starved machine can delay heartbeats past the silence
    // bound) re-sends states: exact counts hold for instances that healed
    // nothing, an upper bound for the others.
    let mut frames = vec![];
    for ((user, i), client) in placement.iter().zip(clients.iter_mut()) {
        frames.push(ends_equal_to_rest(&apis[*i], *user, client).await);
    }
    let mut healed = vec![];
    for api in &apis {
        healed.push(gaps(api).await > 0.0);
    }
    for ((user, i), got) in placement.iter().zip(&frames) {
        if !healed[*i] {
            assert_no_duplicates(*user, got);
        }
    }
    // Both of a's sockets got the same events.
    let (mut a0, mut a1) = (frames[0].clone(), frames[1].clone());
    a0.sort();
    a0.dedup();
    a1.sort();
    a1.dedup();
    assert_eq!(a0, a1, "a's two sockets differ");
    // One message per event of a user held; none of the others.
    let want = [
        frames[0].len(),
        frames[1].len() + frames[2].len(),
        frames[3].len(),
    ];
    for ((api, want), healed) in apis.iter().zip(want).zip(healed) {
        let got = api.metric("ragctl_bus_received_total ").await;
        match healed {
            false => assert_eq!(got, want as f64, "{}", api.metrics().await),
            true => assert!(got <= want as f64, "{}", api.metrics().await),
        }
    }
    assert_one_listen_backend(&db).await;
}

/// A `ragctl relay` process (its metrics on a port of its own).
fn relay(db: &TestDb, nats: &NatsServer, name: &str) -> Proc {
    let url = nats.url();
    let args = ["relay", "--nats-url", &url, "--metrics-addr", "127.0.0.1:0"];
    Proc::spawn(name, &db.url, &args, &[])
}

/// Which of `relays` leads (waits for one to say so).
async fn leader(relays: &[Proc]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(i) = relays
            .iter()
            .position(|p| p.logs().contains("relay leading"))
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no relay leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the database holds at least `n` documents.
async fn wait_documents(db: &TestDb, n: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let count: i64 = db.query("SELECT count(*) FROM documents").await[0].get(0);
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {count} documents");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The relay leader SIGKILLed while 200 uploads for 20 users flow: the
/// standby leads under a new epoch, and every client, on two instances
/// with no relay of their own, ends equal to REST on its first socket.
#[tokio::test]
async fn a_killed_relay_is_replaced_and_every_client_ends_equal_to_rest() {
    let db = TestDb::new();
    let nats = NatsServer::start().expect("nats-server");
    let mut relays = vec![relay(&db, &nats, "relay a"), relay(&db, &nats, "relay b")];
    let first = leader(&relays).await;
    let apis = [
        nats_api(&db, &nats, "off").await,
        nats_api(&db, &nats, "off").await,
    ];
    let delay = [("RAG_WORKER_JOB_DELAY_MS", "20")];
    let _workers = [worker(&db, "parse", &delay), worker(&db, "ingest", &delay)];
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let placement: Vec<(Uuid, usize)> =
        users.iter().enumerate().map(|(i, u)| (*u, i % 2)).collect();
    let mut clients = connect_placed(&apis, &placement).await;
    let (url, all) = (apis[0].url.clone(), users.clone());
    let uploads = tokio::spawn(async move { upload_all(&url, &all).await });

    wait_documents(&db, 50).await;
    relays[first].signal(libc::SIGKILL);
    relays[first].wait_exit().await;
    let standby = &relays[1 - first];
    standby.wait_line("relay leading").await;
    uploads.await.unwrap();
    wait_all_done(&apis[0], &users, 10).await;

    for (i, (user, client)) in users.iter().zip(clients.iter_mut()).enumerate() {
        ends_equal_to_rest(&apis[i % 2], *user, client).await;
    }
    for api in &apis {
        let gaps = "ragctl_bus_gaps_total{cause=\"relay_failover\"} ";
        assert!(api.metric(gaps).await >= 1.0, "{}", api.metrics().await);
    }
    assert_one_listen_backend(&db).await;
}
