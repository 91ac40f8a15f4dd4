//! `ragctl emit` and `ragctl ws-client`, the real binaries, on both buses
//! (issue #21): an emitted event reaches the ws-client of its user through
//! the API's LISTEN on the postgres bus, and through the relay and a real
//! nats-server on the NATS bus. One test body takes the bus.

mod common;

use common::bus::*;
use common::nats::NatsServer;
use common::*;
use uuid::Uuid;

/// The bus an API is started on; the NATS one owns its server.
enum Bus {
    Postgres,
    Nats(NatsServer),
}

impl Bus {
    fn nats() -> Bus {
        Bus::Nats(NatsServer::start().expect("nats-server"))
    }

    /// An API on this bus (over NATS the relay inside it), ready to deliver
    /// live: over NATS its relay leads and the silence before it is healed.
    async fn api(&self, db: &TestDb) -> Api {
        let Bus::Nats(nats) = self else {
            return Api::start(db, &["--bus", "postgres"], &[]).await;
        };
        let url = nats.url();
        let api = Api::start(db, &["--bus", "nats", "--nats-url", &url], &[]).await;
        wait_leader(&api).await;
        settle(&api, 1.0).await;
        api
    }
}

/// `ragctl emit` as a worker would publish (pg_notify); exits 0.
fn emit(db: &TestDb, user: Uuid, doc: Uuid) {
    let out = std::process::Command::new(bin())
        .args(["emit", "document.status_updated", "--user"])
        .arg(user.to_string())
        .args(["--set", "status=parsed", "--set"])
        .arg(format!("document_id={doc}"))
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run ragctl emit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "emit: {stderr}");
}

/// A `ws-client` of a user expecting the event `emit` sends, connected,
/// then the event emitted: the ws-client meets its expectation and exits 0.
async fn emitted_event_reaches_ws_client(bus: Bus) {
    let db = TestDb::new();
    let api = bus.api(&db).await;
    let (user, doc) = (Uuid::new_v4(), Uuid::new_v4());
    let expect = format!("document.status_updated status=parsed document_id={doc}");
    let mut client = ws_client(&db, &api, user, &["--expect", &expect]);
    client.wait_line("connected").await;
    // Registered with the hub (and over NATS subscribed): the event is
    // emitted only once it has somewhere to go.
    wait_metric(&api, "ragctl_ws_sockets ", |v| v == 1.0).await;
    if let Bus::Nats(_) = bus {
        wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 1.0).await;
    }
    emit(&db, user, doc);
    let status = client.wait_exit().await;
    assert!(status.success(), "ws-client log:\n{}", client.logs());
    client.wait_line("expectation met (1/1)").await;

    // The road it took: over NATS the relay published it and this
    // instance received it from NATS, with no LISTEN backend of its own.
    if let Bus::Nats(_) = bus {
        assert!(api.metric("ragctl_relay_published_total ").await >= 1.0);
        assert_eq!(api.metric("ragctl_bus_received_total ").await, 1.0);
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = \
                   'ragctl-listener' AND datname = current_database()";
        let listeners: i64 = db.query(sql).await[0].get(0);
        assert_eq!(listeners, 0, "an API LISTENs with --bus nats");
    }
}

#[tokio::test]
async fn emit_reaches_ws_client_on_the_postgres_bus() {
    emitted_event_reaches_ws_client(Bus::Postgres).await;
}

#[tokio::test]
async fn emit_reaches_ws_client_through_the_relay_and_nats() {
    emitted_event_reaches_ws_client(Bus::nats()).await;
}
