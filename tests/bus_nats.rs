//! The API side of the NATS bus (issue #21): an instance started with
//! `--bus nats` subscribes to the subjects of the users it holds sockets
//! for, holds no LISTEN connection, and heals every gap the relay or NATS
//! tells of from the rows. A real nats-server per test; the test plays the
//! relay (envelopes on `ragctl.u.<user>`, heartbeats on `ragctl.relay`)
//! with async-nats.

mod common;

use std::time::Instant;

use common::bus::*;
use common::holding::*;
use common::nats::NatsServer;
use common::*;
use ragctl::events::encode_notifications;
use serde_json::{Value, json};
use uuid::Uuid;

/// An API on the NATS bus, with no relay of its own.
async fn start(db: &TestDb, nats: &NatsServer, extra: &[&str]) -> Api {
    let url = nats.url();
    let mut args = vec!["--bus", "nats", "--nats-url", &url, "--relay", "off"];
    args.extend_from_slice(extra);
    Api::start(db, &args, &[]).await
}

/// A database, a nats-server and an API on it (`start`). Bound in this
/// order, they drop in reverse: the API first, the database last.
async fn world(extra: &[&str]) -> (TestDb, NatsServer, Api) {
    let db = TestDb::new();
    let nats = NatsServer::start().expect("nats-server");
    let api = start(&db, &nats, extra).await;
    (db, nats, api)
}

/// The test's relay, once `api` heard its first heartbeat (and healed the
/// silence before it).
async fn relay_heard(db: &TestDb, nats: &NatsServer, api: &Api) -> Relay {
    let mut relay = Relay::connect(nats).await;
    relay.heartbeat(db_now(db).await).await;
    settle(api, 1.0).await;
    relay
}

/// Reads `client` until it holds what REST shows, with no resync (a heal
/// brought what it missed), and a gap of `cause` counted.
async fn assert_healed(
    api: &Api,
    user: Uuid,
    client: &mut Client,
    held: &mut Holding,
    cause: &str,
) {
    let realtime = read_until_rest(api, user, client, held, None).await;
    assert!(realtime.is_empty(), "healed, so no resync: {realtime:?}");
    let gaps = format!("ragctl_bus_gaps_total{{cause=\"{cause}\"}} ");
    assert!(api.metric(&gaps).await >= 1.0, "{}", api.metrics().await);
}

/// A client subscribed (the gauge counts it) holding what REST shows.
async fn synced(api: &Api, user: Uuid, subscriptions: f64) -> (Client, Holding) {
    let mut client = Client::connect(api, user, "").await;
    wait_metric(api, "ragctl_bus_subscriptions ", |v| v == subscriptions).await;
    let mut held = Holding::load(api, user, None).await;
    let realtime = read_until_rest(api, user, &mut client, &mut held, None).await;
    assert!(realtime.is_empty(), "{realtime:?}");
    (client, held)
}

fn doc_frame(doc: Uuid, status: &str) -> impl Fn(&Value) -> bool {
    let fields = [("document_id", s(&doc.to_string())), ("status", s(status))];
    move |f| is(f, "document.status_updated", &fields)
}

/// Only the subjects of users with a socket reach the instance, and it
/// has no LISTEN connection.
#[tokio::test]
async fn an_instance_receives_only_the_events_of_users_it_holds() {
    let (db, nats, api) = world(&[]).await;
    let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut client = Client::connect(&api, me, "").await;
    wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 1.0).await;

    let relay = Relay::connect(&nats).await;
    let doc = Uuid::new_v4();
    // Published first on the same connection: had it been received, it
    // would have been counted before mine.
    relay.publish(&doc_status(other, doc, "failed")).await;
    let mine = doc_status(me, doc, "parsed");
    relay.publish(&mine).await;
    client.expect("my event", doc_frame(doc, "parsed")).await;
    assert_eq!(api.metric("ragctl_bus_received_total ").await, 1.0);

    // The same envelope again (two relays overlapping at a failover): the
    // socket's next frame is the next event, not the copy.
    relay.publish(&mine).await;
    let marker = Uuid::new_v4();
    relay.publish(&doc_status(me, marker, "parsed")).await;
    let next = client.expect("a frame", |_| true).await;
    assert!(doc_frame(marker, "parsed")(&next), "a duplicate: {next}");

    let (code, body) = api.readyz().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["realtime"]["bus"], "nats", "{body}");
    assert_eq!(body["realtime"]["bus_connected"], true, "{body}");
    let listeners = db
        .query(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'ragctl-listener' \
             AND datname = current_database()",
        )
        .await;
    assert_eq!(listeners.len(), 0, "no LISTEN backend with --bus nats");
}

/// Events committed after a horizon and never published (no relay carried
/// them) reach the client by a heal once a heartbeat of a new epoch comes.
#[tokio::test]
async fn a_new_epoch_heals_what_the_old_relay_never_published() {
    let (db, nats, api) = world(&[]).await;
    let user = Uuid::new_v4();
    let (mut client, mut held) = synced(&api, user, 1.0).await;
    let mut relay = relay_heard(&db, &nats, &api).await;

    // The API publishes these on PostgreSQL only: nothing relays them.
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(upload_text(&api, user, i).await);
    }
    set_states(&db, &ids[..2], "parsed", None, "success", 0).await;
    relay.failover();
    relay.heartbeat(db_now(&db).await).await;

    assert_healed(&api, user, &mut client, &mut held, "relay_failover").await;
    let heals = "ragctl_bridge_heals_by_cause_total{cause=\"relay_failover\"} ";
    assert!(api.metric(heals).await >= 1.0);
}

/// An oversize notice heals that user only: the other user's next frame
/// is the next event published for it.
#[tokio::test]
async fn an_oversize_notice_heals_its_user_only() {
    let (db, nats, api) = world(&[]).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ids_a = [upload_text(&api, a, 0).await, upload_text(&api, a, 1).await];
    let ids_b = [upload_text(&api, b, 0).await];
    let (mut client_a, mut held_a) = synced(&api, a, 1.0).await;
    let (mut client_b, _held_b) = synced(&api, b, 2.0).await;

    let since = db_now(&db).await;
    set_states(&db, &ids_a, "parsed", None, "success", 0).await;
    set_states(&db, &ids_b, "parsed", None, "success", 0).await;
    let mut relay = Relay::connect(&nats).await;
    relay
        .send(json!({"kind": "oversize", "user_id": a, "since": since}))
        .await;
    assert_healed(&api, a, &mut client_a, &mut held_a, "relay_oversize").await;

    // The heal is over (a holds REST): had it sent b anything, it would
    // be in b's socket before this.
    let marker = Uuid::new_v4();
    relay.publish(&doc_status(b, marker, "parsed")).await;
    let first = client_b.expect("a frame", |_| true).await;
    assert!(doc_frame(marker, "parsed")(&first), "b was healed: {first}");
}

/// NATS restarted: uploads go on, /readyz tells of the outage while it
/// lasts, and the client ends equal to REST without reconnecting.
#[tokio::test]
async fn a_nats_restart_is_healed_and_reported() {
    let (db, mut nats, api) = world(&[]).await;
    let user = Uuid::new_v4();
    let (mut client, mut held) = synced(&api, user, 1.0).await;
    let _relay = relay_heard(&db, &nats, &api).await;

    nats.kill();
    let body = wait_bus_connected(&api, false).await;
    assert_eq!(body["ready"], true, "business is unaffected: {body}");
    assert_eq!(api.metric("ragctl_bus_connected ").await, 0.0);
    let mut ids = vec![];
    for i in 0..4 {
        ids.push(upload_text(&api, user, i).await);
    }
    set_states(&db, &ids[..2], "error", Some("unreadable"), "failed", 3).await;
    nats.restart().expect("nats-server restart");

    assert_healed(&api, user, &mut client, &mut held, "nats_reconnected").await;
    let body = wait_bus_connected(&api, true).await;
    assert!(body["realtime"]["reconnects"].as_u64() >= Some(1), "{body}");
    assert_eq!(api.metric("ragctl_bus_connected ").await, 1.0);
}

/// One subscription per user with sockets here; none once they all left
/// (after the grace), and again when one comes back.
#[tokio::test]
async fn subscriptions_follow_the_sockets() {
    let (_db, nats, api) = world(&["--nats-unsubscribe-grace-ms", "100"]).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut clients = vec![
        Client::connect(&api, a, "").await,
        Client::connect(&api, a, "").await,
        Client::connect(&api, b, "").await,
    ];
    wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 2.0).await;
    wait_metric(&api, "ragctl_ws_sockets ", |v| v == 3.0).await;
    for c in &mut clients {
        c.socket.close(None).await.unwrap();
    }
    wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 0.0).await;

    let mut back = Client::connect(&api, a, "").await;
    wait_metric(&api, "ragctl_bus_subscriptions ", |v| v == 1.0).await;
    let relay = Relay::connect(&nats).await;
    let doc = Uuid::new_v4();
    relay.publish(&doc_status(a, doc, "parsed")).await;
    back.expect("the event", doc_frame(doc, "parsed")).await;
}

/// NATS down when the API starts and when a socket arrives: the socket
/// goes on unsubscribed (the client subscribes once connected), business
/// goes on, and the first connection heals what the socket missed.
#[tokio::test]
async fn a_socket_before_nats_is_up_is_healed_when_it_comes() {
    let db = TestDb::new();
    let mut nats = NatsServer::start().expect("nats-server");
    nats.kill();
    let api = start(&db, &nats, &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let mut held = Holding::load(&api, user, None).await;
    wait_metric(&api, "ragctl_bus_subscribe_unconfirmed_total ", |v| {
        v >= 1.0
    })
    .await;
    let mut ids = vec![];
    for i in 0..3 {
        ids.push(upload_text(&api, user, i).await);
    }
    set_states(&db, &ids[..1], "parsed", None, "success", 0).await;
    nats.restart().expect("nats-server restart");

    let realtime = read_until_rest(&api, user, &mut client, &mut held, None).await;
    assert!(realtime.is_empty(), "healed, so no resync: {realtime:?}");
    wait_bus_connected(&api, true).await;
    assert_eq!(api.metric("ragctl_bus_subscriptions ").await, 1.0);
}

/// A subscription made a slow consumer (a one-message buffer, a
/// one-item bridge queue, a burst): the drop is detected and what the
/// instance missed reaches the client by a heal.
#[tokio::test]
async fn a_slow_consumer_drop_is_healed() {
    let slow = [
        "--nats-subscription-capacity",
        "1",
        "--bridge-queue",
        "1",
        "--user-frame-rate",
        "0",
    ];
    let (db, nats, api) = world(&slow).await;
    let user = Uuid::new_v4();
    let ids = [
        upload_text(&api, user, 0).await,
        upload_text(&api, user, 1).await,
    ];
    let (mut client, mut held) = synced(&api, user, 1.0).await;
    let relay = relay_heard(&db, &nats, &api).await;
    // Never published: only a heal brings it.
    set_states(&db, &ids[..1], "parsed", None, "success", 0).await;

    // A burst restating what REST shows of the other document, until the
    // client's buffer overflows.
    let (_, doc) = get_json(&api, user, &format!("/documents/{}", ids[1])).await;
    let id: Uuid = ids[1].parse().unwrap();
    let status = doc["status"].as_str().unwrap();
    let dropped = "ragctl_bus_gaps_total{cause=\"nats_slow_consumer\"} ";
    let deadline = Instant::now() + PATIENCE;
    while api.metric(dropped).await < 1.0 {
        assert!(Instant::now() < deadline, "never a slow consumer");
        for _ in 0..2_000 {
            let env = doc_status(user, id, status);
            let payload = encode_notifications(&env).unwrap().remove(0);
            let subject = format!("ragctl.u.{user}");
            relay.client.publish(subject, payload.into()).await.unwrap();
        }
        relay.client.flush().await.unwrap();
    }
    assert_healed(&api, user, &mut client, &mut held, "nats_slow_consumer").await;
}

/// `--bus nats` without a usable URL stops serve before anything starts,
/// naming the flag and the variable.
#[test]
fn the_nats_bus_wants_a_url() {
    let names = ["--nats-url", "RAG_NATS_URL"];
    assert_usage_error(&["serve", "--bus", "nats"], &[], &names);
    let bad = ["serve", "--bus", "nats", "--nats-url", "ftp://127.0.0.1:1"];
    assert_usage_error(&bad, &[], &names);
}

/// A resuming socket is subscribed before its catch-up runs: once the
/// catch-up ended the subscription is there (no waiting), and the next
/// event arrives live.
#[tokio::test]
async fn a_resuming_socket_is_subscribed_before_its_catch_up() {
    let (_db, nats, api) = world(&[]).await;
    let user = Uuid::new_v4();
    for i in 0..3 {
        upload_text(&api, user, i).await;
    }
    let since = "&since=2000-01-01T00:00:00Z";
    let mut client = Client::connect(&api, user, since).await;
    let mut held = Holding::default();
    let end = loop {
        let f = client.expect("a frame", |_| true).await;
        if f["type"].as_str().unwrap().starts_with("realtime.") {
            break f;
        }
        held.apply(&f);
    };
    assert_eq!(end["type"], "realtime.caught_up", "{end}");
    assert_eq!(api.metric("ragctl_bus_subscriptions ").await, 1.0);
    assert_eq!(held.view(), rest_view(&api, user, None).await);

    let relay = Relay::connect(&nats).await;
    let doc = Uuid::new_v4();
    relay.publish(&doc_status(user, doc, "parsed")).await;
    client
        .expect("the live event", doc_frame(doc, "parsed"))
        .await;
}

/// No relay since the instance started: what its sockets missed meanwhile
/// is healed when the first relay's first heartbeat comes.
#[tokio::test]
async fn the_first_relay_after_a_silence_heals_what_came_before_it() {
    let (db, nats, api) = world(&[]).await;
    let user = Uuid::new_v4();
    let (mut client, mut held) = synced(&api, user, 1.0).await;
    wait_metric(&api, "ragctl_bus_relay_silences_total ", |v| v >= 1.0).await;
    for i in 0..3 {
        upload_text(&api, user, i).await;
    }
    let mut relay = Relay::connect(&nats).await;
    relay.heartbeat(db_now(&db).await).await;

    assert_healed(&api, user, &mut client, &mut held, "relay_silent").await;
}
