//! The bridge heals its own gaps: when its LISTEN connection comes back,
//! the states of the rows changed in the gap reach the connected clients
//! as ordinary frames, without the clients reconnecting; `realtime.resync`
//! only when that cannot complete. Real `serve` and workers, real
//! PostgreSQL; the listener's backend is killed with
//! `pg_terminate_backend`.

mod common;

use std::time::{Duration, Instant};

use common::holding::*;
use common::*;
use ragctl::db::listener::{self, ListenItem, ListenerConfig};
use ragctl::events::ops::{HealOutcome, HealReport, OPS_CHANNEL};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LISTENER: &str = "ragctl-listener";

/// Kills the API listeners' backends on `db`; how many there were.
async fn kill_listeners(db: &TestDb) -> usize {
    db.query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = '{LISTENER}' AND datname = current_database()"
    ))
    .await
    .len()
}

/// Waits until `n` API listeners are connected on `db`.
async fn wait_listeners(db: &TestDb, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = db
            .query(&format!(
                "SELECT 1 FROM pg_stat_activity
                 WHERE application_name = '{LISTENER}' AND datname = current_database()"
            ))
            .await;
        if rows.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} listeners never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heal reports published on `db`, as they come.
struct Ops {
    rx: mpsc::Receiver<ListenItem>,
    _stop: tokio_util::sync::DropGuard,
}

impl Ops {
    async fn listen(db: &TestDb) -> Ops {
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let cfg = ListenerConfig::new(&db.url, "ragctl-test-ops", &[OPS_CHANNEL]);
        let (mut handle, _task) = listener::spawn(cfg, tx, stop.clone());
        let _ = handle.status.wait_for(|s| s.connected).await;
        Ops {
            rx,
            _stop: stop.drop_guard(),
        }
    }

    async fn next(&mut self) -> HealReport {
        loop {
            let item = tokio::time::timeout(PATIENCE, self.rx.recv())
                .await
                .expect("a heal report")
                .expect("ops listener running");
            if let ListenItem::Notification(n) = item {
                return HealReport::parse(&n.payload).expect("a heal report");
            }
        }
    }
}

/// A client holding what REST shows of its user, live.
async fn synced(api: &Api, user: Uuid, query: &str, conv: Option<&str>) -> (Client, Holding) {
    let mut client = Client::connect(api, user, query).await;
    let mut held = Holding::load(api, user, conv).await;
    let realtime = read_until_rest(api, user, &mut client, &mut held, conv).await;
    assert!(realtime.is_empty(), "{realtime:?}");
    (client, held)
}

/// Changes no event announces (plain SQL) are made, then the listener's
/// backend is killed: the heal brings both clients to what REST shows,
/// and the one that opted into resync is not told to resync.
#[tokio::test]
async fn a_killed_listener_heals_what_it_missed_without_a_reconnect() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let mut ops = Ops::listen(&db).await;
    let user = Uuid::new_v4();
    let conv = new_conversation(&api, user, None).await;
    let mut ids = vec![];
    for i in 0..30 {
        ids.push(upload_text(&api, user, i).await);
    }
    ask(&api, user, &conv, "a question").await;
    let (mut plain, mut held_plain) = synced(&api, user, "", Some(&conv)).await;
    let (mut opted, mut held_opted) = synced(&api, user, "&resync=1", Some(&conv)).await;

    set_states(&db, &ids[..10], "parsed", None, "success", 0).await;
    set_states(&db, &ids[10..20], "error", Some("unreadable"), "failed", 3).await;
    assert_eq!(kill_listeners(&db).await, 1);

    let report = ops.next().await;
    assert_eq!(report.outcome, HealOutcome::Healed, "{report:?}");
    assert_eq!((report.users, report.sockets), (1, 2), "{report:?}");
    assert!(report.rows >= 40, "20 documents and their jobs: {report:?}");
    assert_eq!(report.reason, "listener_reconnected");
    assert!(report.to.is_some_and(|to| to > report.from));
    for (client, held) in [(&mut plain, &mut held_plain), (&mut opted, &mut held_opted)] {
        let realtime = read_until_rest(&api, user, client, held, Some(&conv)).await;
        assert!(realtime.is_empty(), "healed, so no resync: {realtime:?}");
    }
    assert!(
        api.metric("ragctl_bridge_heals_total{outcome=\"healed\"}")
            .await
            >= 1.0
    );
    assert!(api.metric("ragctl_bridge_heal_rows_total").await >= 40.0);
}

/// More rows than `--max-heal`: what fits is pushed, then the sockets that
/// opted in are told to resync; the others get no `realtime.*` frame.
#[tokio::test]
async fn a_heal_over_the_bound_ends_in_resync() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--max-heal", "3"], &[]).await;
    let mut ops = Ops::listen(&db).await;
    let user = Uuid::new_v4();
    let mut ids = vec![];
    for i in 0..10 {
        ids.push(upload_text(&api, user, i).await);
    }
    let (mut plain, _) = synced(&api, user, "", None).await;
    let (mut opted, _) = synced(&api, user, "&resync=1", None).await;
    set_states(&db, &ids, "parsed", None, "success", 0).await;
    assert_eq!(kill_listeners(&db).await, 1);
    let report = ops.next().await;
    assert_eq!(report.outcome, HealOutcome::Overflow, "{report:?}");
    assert_eq!(report.frames, 3);

    let resync = opted
        .expect("resync", |f| f["type"] == "realtime.resync")
        .await;
    assert_eq!(resync["payload"]["reason"], "listener_reconnected");
    let before: Vec<_> = opted.frames.iter().rev().skip(1).take(3).collect();
    assert!(before.iter().all(|f| f["type"] != "realtime.resync"));
    // The plain client gets the 3 states, and nothing else while the
    // resyncing one got its resync after them.
    let mut got = vec![];
    while got.len() < 3 {
        match plain.next(PATIENCE).await {
            Some(Next::Frame(f)) => got.push(f),
            other => panic!("3 healed states expected, got {got:#?} then {other:?}"),
        }
    }
    while let Some(Next::Frame(f)) = plain.next(Duration::from_secs(1)).await {
        got.push(f);
    }
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got.iter()
            .all(|f| !f["type"].as_str().unwrap().starts_with("realtime."))
    );
}

/// 20 users with 10 uploads each while the listener's backend is killed at
/// least 5 times: every client ends holding what REST shows, never having
/// reconnected.
#[tokio::test]
async fn repeated_listener_kills_during_200_uploads_leave_every_client_equal_to_rest() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let delay = [("RAG_WORKER_JOB_DELAY_MS", "20")];
    let _workers = [worker(&db, "parse", &delay), worker(&db, "ingest", &delay)];
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let mut clients = vec![];
    for u in &users {
        clients.push((Client::connect(&api, *u, "").await, Holding::default()));
    }
    let uploads = {
        let (api_url, users) = (api.url.clone(), users.clone());
        tokio::spawn(async move { upload_all(&api_url, &users).await })
    };
    let mut kills = 0;
    while kills < 5 || !uploads.is_finished() || !all_done(&api, &users, 10).await {
        wait_listeners(&db, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        kills += kill_listeners(&db).await;
    }
    uploads.await.unwrap();
    for (user, (client, held)) in users.iter().zip(clients.iter_mut()) {
        let realtime = read_until_rest(&api, *user, client, held, None).await;
        assert!(realtime.is_empty(), "{realtime:?}");
        assert_eq!(held.docs.len(), 10);
    }
    assert!(kills >= 5);
    let healed = api
        .metric("ragctl_bridge_heals_total{outcome=\"healed\"}")
        .await;
    assert!(healed >= 5.0, "one heal per reconnect: {healed}");
}

/// Two API instances; one stops while workers process, and its clients
/// resume on the other from their `caught_up` cursors.
#[tokio::test]
async fn clients_of_a_stopped_instance_resume_on_the_other() {
    let db = TestDb::new();
    let mut a = Api::start(&db, &[], &[]).await;
    let b = Api::start(&db, &[], &[]).await;
    let delay = [("RAG_WORKER_JOB_DELAY_MS", "50")];
    let _workers = [worker(&db, "parse", &delay), worker(&db, "ingest", &delay)];
    let users: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut clients = vec![];
    for u in &users {
        let since = "&since=2000-01-01T00:00:00Z";
        clients.push((
            Client::connect(&a, *u, since).await,
            Holding::default(),
            None,
        ));
    }
    for (i, u) in users.iter().enumerate() {
        for k in 0..4 {
            upload_text(&a, *u, i * 10 + k).await;
        }
    }
    a.proc.signal(libc::SIGTERM);
    for (client, held, cursor) in clients.iter_mut() {
        while let Some(Next::Frame(f)) = client.next(PATIENCE).await {
            if held.apply_any(&f) == "realtime.caught_up" {
                *cursor = f["payload"]["cursor"].as_str().map(String::from);
            }
        }
    }
    a.proc.wait_exit().await;
    for (i, u) in users.iter().enumerate() {
        upload_text(&b, *u, i * 10 + 5).await;
    }
    wait_all_done(&b, &users, 5).await;
    for (u, (_, held, cursor)) in users.iter().zip(clients.iter_mut()) {
        let cursor = cursor
            .clone()
            .expect("a caught_up cursor from the first instance");
        let mut client = Client::connect(&b, *u, &format!("&since={cursor}")).await;
        let realtime = read_until_rest(&b, *u, &mut client, held, None).await;
        assert_eq!(realtime, ["realtime.caught_up"]);
        assert_eq!(held.docs.len(), 5);
    }
}

/// A transaction updates two documents (one with its event, as workers
/// publish, one with plain SQL), stays open 3 s, and commits while a heal
/// is under way (its read delayed by the hidden `--heal-delay-ms`): the
/// client ends with both states, the plain one only the heal could bring.
#[tokio::test]
async fn a_transaction_committed_during_a_heal_is_not_missed() {
    let db = TestDb::new();
    // The heal reads 8 s after it starts; the commit comes 2.5 s after
    // the listener is back: seconds of margin on both sides.
    let api = Api::start(&db, &["--heal-delay-ms", "8000"], &[]).await;
    let mut ops = Ops::listen(&db).await;
    let user = Uuid::new_v4();
    let (plain_doc, evented_doc) = (
        upload_text(&api, user, 0).await,
        upload_text(&api, user, 1).await,
    );
    let (mut client, mut held) = synced(&api, user, "", None).await;

    let (writer, conn) = ragctl::db::connect(&db.url, "ragctl-test-writer")
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    writer.batch_execute("BEGIN").await.unwrap();
    let set = "UPDATE documents SET status = 'parsed', updated_at = clock_timestamp()
               WHERE id = $1 RETURNING updated_at";
    writer
        .query_one(set, &[&plain_doc.parse::<Uuid>().unwrap()])
        .await
        .unwrap();
    let row = writer
        .query_one(set, &[&evented_doc.parse::<Uuid>().unwrap()])
        .await
        .unwrap();
    let at: chrono::DateTime<chrono::Utc> = row.get(0);
    let env = ragctl::events::Envelope::new(
        user,
        ragctl::events::EventType::DocumentStatusUpdated,
        serde_json::json!({"document_id": evented_doc, "status": "parsed", "error_message": null, "updated_at": at}),
        "test-writer",
    );
    for n in ragctl::events::encode_notifications(&env).unwrap() {
        writer
            .execute("SELECT pg_notify('rag_events', $1)", &[&n])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kill_listeners(&db).await, 1);
    wait_listeners(&db, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let committed: chrono::DateTime<chrono::Utc> = writer
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    drop(writer);
    let _ = conn.await;

    let report = ops.next().await;
    assert_eq!(report.outcome, HealOutcome::Healed, "{report:?}");
    // The setup did what it means to: the heal began before the commit
    // and read after it.
    let began = report.at - chrono::Duration::microseconds((report.duration_ms * 1e3) as i64);
    assert!(began < committed, "{report:?} committed at {committed}");
    assert!(report.to.is_some_and(|to| to > committed), "{report:?}");
    let realtime = read_until_rest(&api, user, &mut client, &mut held, None).await;
    assert!(realtime.is_empty());
    assert_eq!(held.docs[&plain_doc]["status"], "parsed");
    assert_eq!(held.docs[&evented_doc]["status"], "parsed");
}
