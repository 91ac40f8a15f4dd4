//! In-band token refresh on `/ws` (`auth.refresh`) and the bound on what a
//! client may send: a real server, a tokio-tungstenite client as the user.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

async fn send_refresh(client: &mut Client, token: &str) {
    let text = json!({"type": "auth.refresh", "payload": {"token": token}}).to_string();
    client
        .socket
        .send(Message::Text(text.into()))
        .await
        .unwrap();
}

/// Waits until the metric line `name` reaches `n`.
async fn wait_metric(api: &Api, name: &str, n: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = api.metric(name).await;
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, wanted {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn connect_url(api: &Api, token: &str) -> String {
    format!("{}?token={token}", api.ws_url())
}

#[tokio::test]
async fn a_refreshed_socket_outlives_its_first_token() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let short = ragctl::auth::mint(SECRET, user, Duration::from_secs(3)).unwrap();
    let first_exp = chrono::Utc::now().timestamp() + 3;
    let mut client = Client::connect_url(&connect_url(&api, &short))
        .await
        .unwrap();
    send_refresh(&mut client, &token(user)).await;
    let refreshed = client
        .expect("auth.refreshed", |f| f["type"] == "auth.refreshed")
        .await;
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(refreshed["payload"]["expires_at"].clone()).unwrap();
    assert!(expires_at.timestamp() > first_exp + 60, "{refreshed}");
    // Events keep arriving on the same socket after the first token's
    // expiry (which would have closed it with 4001).
    let publisher = publisher(&db).await;
    loop {
        let doc = Uuid::new_v4();
        publisher
            .publish(doc_status(user, doc, "parsed"))
            .await
            .unwrap();
        let want = s(&doc.to_string());
        client
            .expect("the event", |f| f["payload"]["document_id"] == want)
            .await;
        if chrono::Utc::now().timestamp() > first_exp + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        api.metric("ragctl_ws_refreshes_total{result=\"ok\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_refresh_with_a_bad_or_foreign_token_closes_with_its_code() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let forged = ragctl::auth::mint("not-the-secret", user, Duration::from_secs(600)).unwrap();
    let cases = [
        (forged.as_str(), 4003, "refresh_invalid"),
        ("", 4003, "refresh_invalid"),
    ];
    for (n, (bad, code, reason)) in cases.into_iter().enumerate() {
        let mut client = Client::connect(&api, user, "").await;
        send_refresh(&mut client, bad).await;
        assert_eq!(client.expect_close().await, Some(code), "{bad:?}");
        let metric = format!("ragctl_ws_closed_total{{reason=\"{reason}\"}}");
        wait_metric(&api, &metric, (n + 1) as f64).await;
    }
    let mut client = Client::connect(&api, user, "").await;
    send_refresh(&mut client, &token(Uuid::new_v4())).await;
    assert_eq!(client.expect_close().await, Some(4004));
    wait_metric(
        &api,
        "ragctl_ws_closed_total{reason=\"refresh_other_user\"}",
        1.0,
    )
    .await;
}

/// A flood of text messages is dropped past the rate (counted), the socket
/// stays open and keeps its events; an oversized message is a 1009.
#[tokio::test]
async fn client_messages_are_bounded_in_rate_and_size() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    for i in 0..50 {
        let text = format!("{{\"type\":\"chatter\",\"payload\":{{\"n\":{i}}}}}");
        client
            .socket
            .send(Message::Text(text.into()))
            .await
            .unwrap();
    }
    wait_metric(
        &api,
        "ragctl_ws_client_messages_dropped_total{reason=\"rate\"}",
        1.0,
    )
    .await;
    let doc = Uuid::new_v4();
    publish(&db, doc_status(user, doc, "parsed")).await;
    let want = s(&doc.to_string());
    let got: Value = client
        .expect("an event after the flood", |f| {
            f["payload"]["document_id"] == want
        })
        .await;
    assert_eq!(got["type"], "document.status_updated");

    let big = "x".repeat(5000);
    client.socket.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(client.expect_close().await, Some(1009));
}
