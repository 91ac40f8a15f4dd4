//! The drop path of an API instance with no socket for an event's user:
//! every instance reads every event, and one that has nobody to give it to
//! must forward nothing, count it, and still refuse a malformed envelope
//! for the same reason as the instance that would have delivered it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uuid::Uuid;

/// Waits (generous deadline, a failure guard only) until `metric` of `api`
/// reaches `want`, and returns what it read last.
async fn metric_reaches(api: &Api, metric: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = api.metric(metric).await;
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_instance_with_no_socket_for_the_user_forwards_nothing_counts_the_drop_and_the_same_reasons()
 {
    let db = TestDb::new();
    let with_socket = Api::start(&db, &[], &[]).await;
    let without = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&with_socket, user, "").await;
    client.wait_live().await;

    let good = serde_json::to_value(doc_status(user, Uuid::new_v4(), "parsed")).unwrap();
    let bad = malformed(&good);
    notify_raw(&db, bad.iter().map(|(_, p)| p)).await;
    let docs: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for d in &docs {
        publish(&db, doc_status(user, *d, "parsed")).await;
    }
    let last = docs[2].to_string();
    client
        .expect("the last event", |f| {
            f["payload"]["document_id"] == s(&last)
        })
        .await;
    let got: Vec<Value> = client
        .frames
        .iter()
        .map(|f| f["payload"]["document_id"].clone())
        .collect();
    let want: Vec<Value> = docs.iter().map(|d| s(&d.to_string())).collect();
    assert_eq!(
        got, want,
        "the instance with the socket delivers each event once"
    );

    let dropped = metric_reaches(&without, "ragctl_events_no_recipient_total", 3.0).await;
    assert_eq!(dropped, 3.0, "each valid event is counted once as dropped");
    assert_eq!(without.metric("ragctl_events_forwarded_total").await, 0.0);
    assert_eq!(
        with_socket.metric("ragctl_events_no_recipient_total").await,
        0.0
    );
    assert_eq!(
        with_socket.metric("ragctl_events_forwarded_total").await,
        3.0
    );
    for api in [&with_socket, &without] {
        for (reason, _) in &bad {
            let name = format!("ragctl_events_dropped_total{{reason=\"{reason}\"}}");
            assert_eq!(api.metric(&name).await, 1.0, "{reason}");
        }
    }
}
