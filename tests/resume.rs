//! Resume on connect (`/ws?since=`): a client that was away gets the
//! latest state of everything of its user that changed, then the live
//! stream. The API is the spawned binary; rows change through REST and SQL.

mod common;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::holding::*;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// Connects with `?since=` and reads the catch-up up to its end: the state
/// frames and the frame that ended it (`caught_up` or `resync`).
async fn resume(api: &Api, user: Uuid, since: &str) -> (Client, Vec<Value>, Value) {
    let mut client = Client::connect(api, user, &format!("&since={since}")).await;
    let mut frames = vec![];
    loop {
        match client.next(PATIENCE).await {
            Some(Next::Frame(f)) if f["type"].as_str().unwrap().starts_with("realtime.") => {
                return (client, frames, f);
            }
            Some(Next::Frame(f)) => frames.push(f),
            _ => panic!("catch-up did not end; got {frames:#?}"),
        }
    }
}

/// Resumes, applies the catch-up, and returns the `caught_up` cursor.
async fn resume_into(api: &Api, user: Uuid, since: &str, held: &mut Holding) -> String {
    let (_client, frames, end) = resume(api, user, since).await;
    assert_eq!(end["type"], "realtime.caught_up", "{end}");
    assert_eq!(end["payload"]["count"], frames.len());
    for f in &frames {
        held.apply(f);
    }
    end["payload"]["cursor"].as_str().unwrap().to_string()
}

/// 500 documents change while the client is away; it resumes with the
/// opaque cursor, then with an RFC 3339 one, and holds what REST shows.
#[tokio::test]
async fn a_client_that_was_away_resumes_to_the_state_rest_shows() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let conv = new_conversation(&api, user, None).await;
    let mut ids = vec![];
    for i in 0..10 {
        ids.push(upload_text(&api, user, i).await);
    }
    ask(&api, user, &conv, "first question").await;
    let mut held = Holding::default();
    let cursor = resume_into(&api, user, "2000-01-01T00:00:00Z", &mut held).await;
    assert_holds_rest(&api, user, &held, &conv).await;

    // Away: 490 more documents, states changed, old ones too.
    for i in 10..500 {
        ids.push(upload_text(&api, user, i).await);
    }
    set_states(&db, &ids[0..5], "parsed", None, "success", 0).await;
    let sets = [
        ("parsed", None, "success", 0),
        ("error", Some("unreadable"), "failed", 3),
        ("parsing", None, "running", 0),
        ("uploaded", Some("flaky"), "queued", 1),
    ];
    for (k, (doc, err, job, retries)) in sets.into_iter().enumerate() {
        let group: Vec<String> = ids[10..].iter().skip(k).step_by(5).cloned().collect();
        set_states(&db, &group, doc, err, job, retries).await;
    }
    ask(&api, user, &conv, "second question").await;
    let _ = resume_into(&api, user, &cursor, &mut held).await;
    assert_holds_rest(&api, user, &held, &conv).await;

    // Away again; this time the client resumes from the newest stamp it holds.
    set_states(&db, &ids[100..140], "ingested", None, "success", 0).await;
    ask(&api, user, &conv, "third question").await;
    let since = held.rfc3339();
    let _ = resume_into(&api, user, &since, &mut held).await;
    assert_holds_rest(&api, user, &held, &conv).await;
    assert!(api.metric("ragctl_ws_catchups_total").await >= 3.0);
    assert!(api.metric("ragctl_ws_catchup_rows_total").await >= 1000.0);
}

/// A write transaction that began before a catch-up and commits after it
/// (so its `updated_at` is older than its commit) is found by the next
/// resume from the `caught_up` cursor.
#[tokio::test]
async fn a_transaction_committed_during_a_catch_up_is_not_missed() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    committed_during_a_catch_up_is_found(&db, &api).await;
}

/// A login role, dropped at the end (declare it before the databases it owns).
struct Role(String);

impl Drop for Role {
    fn drop(&mut self) {
        admin(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

/// The API's role cannot read the writer's `xact_start` (another role, no
/// `pg_read_all_stats`): the fixed margin covers the open transaction.
#[tokio::test]
async fn a_hidden_transaction_is_covered_by_the_margin() {
    let role = Role(format!("ragctl_resume_{}", Uuid::new_v4().simple()));
    admin(&format!("CREATE ROLE {} LOGIN", role.0));
    let db = TestDb::owned_by(Some(&role.0));
    let api = Api::start_url(&db.url_as(&role.0), &[], &[]).await;
    committed_during_a_catch_up_is_found(&db, &api).await;
}

/// The writer connects as the database's superuser (`db.url`).
async fn committed_during_a_catch_up_is_found(db: &TestDb, api: &Api) {
    let user = Uuid::new_v4();
    let conv = new_conversation(api, user, None).await;
    let doc = upload_text(api, user, 0).await;
    let mut held = Holding::default();
    let cursor = resume_into(api, user, "2000-01-01T00:00:00Z", &mut held).await;

    let (writer, conn) = ragctl::db::connect(&db.url, "ragctl-test-writer")
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .execute(
            "UPDATE documents SET status = 'parsed', updated_at = clock_timestamp() WHERE id = $1",
            &[&doc.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap();
    // Older than the cursor margin by the time the catch-up runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_live, frames, end) = resume(api, user, &cursor).await;
    assert_eq!(end["type"], "realtime.caught_up");
    assert!(
        frames.iter().all(|f| f["payload"]["status"] != "parsed"),
        "the uncommitted update cannot be in this catch-up: {frames:#?}"
    );
    for f in &frames {
        held.apply(f);
    }
    let next = end["payload"]["cursor"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writer.batch_execute("COMMIT").await.unwrap();
    drop(writer);
    let _ = conn.await;

    let _ = resume_into(api, user, &next, &mut held).await;
    assert_eq!(held.docs[&doc]["status"], "parsed");
    assert_holds_rest(api, user, &held, &conv).await;
}

async fn status_of(api: &Api, user: Uuid, since: &str) -> (u16, Value) {
    let r = http()
        .get(format!(
            "{}?token={}&since={since}",
            api.ws_url().replacen("ws://", "http://", 1),
            token(user)
        ))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_cursors_are_refused_before_the_upgrade() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut v2 = vec![2u8];
    v2.extend_from_slice(&Utc::now().timestamp_micros().to_be_bytes());
    let mut future = vec![1u8];
    future.extend_from_slice(&(Utc::now().timestamp_micros() + 3_600_000_000).to_be_bytes());
    let later =
        (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    for (since, says) in [
        ("garbage".to_string(), "neither"),
        ("%25%25%25".to_string(), "neither"),
        (b64.encode([1u8, 2, 3]), "neither"),
        (b64.encode(&v2), "version 2"),
        (b64.encode(&future), "future"),
        (later, "future"),
    ] {
        let (code, body) = status_of(&api, user, &since).await;
        assert_eq!(code, 400, "{since}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cursor", "{since}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{since}: {message}");
    }
    let url = format!("{}?token={}&since=garbage", api.ws_url(), token(user));
    assert!(Client::connect_url(&url).await.is_err(), "no upgrade");
}

/// More state frames than `--max-catchup`: exactly that many, then resync.
#[tokio::test]
async fn a_catch_up_over_the_bound_ends_in_resync() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--max-catchup", "5"], &[]).await;
    let user = Uuid::new_v4();
    for i in 0..4 {
        upload_text(&api, user, i).await; // a document and a job each
    }
    let (mut client, frames, end) = resume(&api, user, "2000-01-01T00:00:00Z").await;
    assert_eq!(frames.len(), 5, "{frames:#?}");
    assert_eq!(
        end,
        json!({"type": "realtime.resync", "payload": {"reason": "catchup_overflow"}})
    );
    // Live afterwards.
    let id = upload_text(&api, user, 9).await;
    client
        .expect("the live document", |f| {
            is(f, "document.created", &[("document_id", s(&id))])
        })
        .await;
    assert_eq!(
        api.metric("ragctl_ws_catchup_overflow_total{reason=\"rows\"}")
            .await,
        1.0
    );
}

/// Without `?since` nothing changes; with it, the live frames after
/// `caught_up` are the very same.
#[tokio::test]
async fn without_since_the_stream_is_as_before() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut plain = Client::connect(&api, user, "").await;
    let (mut resumed, frames, end) = resume(&api, user, "2000-01-01T00:00:00Z").await;
    assert!(frames.is_empty());
    assert_eq!(end["payload"]["count"], 0);
    let mut ids = vec![];
    for i in 0..3 {
        ids.push(upload_text(&api, user, i).await);
    }
    let last = s(ids.last().unwrap());
    let until_last = |f: &Value| is(f, "job.status_updated", &[("document_id", last.clone())]);
    plain.expect("the last job", until_last).await;
    resumed.expect("the last job", until_last).await;
    assert_eq!(plain.frames.len(), 6, "{:#?}", plain.frames);
    assert!(
        plain
            .frames
            .iter()
            .all(|f| !f["type"].as_str().unwrap().starts_with("realtime."))
    );
    assert_eq!(resumed.frames[0]["type"], "realtime.caught_up");
    assert_eq!(plain.frames, resumed.frames[1..]);
}

/// `ws-client --reconnect` resumes from the last cursor it saw: a change
/// that publishes no event (plain SQL) reaches it through the catch-up of
/// its next connection (its 2 s token expires, the server closes, 4001).
#[tokio::test]
async fn ws_client_reconnects_from_its_last_cursor() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let doc = upload_text(&api, user, 0).await;
    let parsed = format!("document.status_updated document_id={doc} status=parsed");
    let args = [
        "--ttl",
        "2s",
        "--reconnect",
        "--since",
        "2000-01-01T00:00:00Z",
        "--expect",
        "realtime.caught_up",
        "--expect",
        &parsed,
    ];
    let mut client = ws_client(&db, &api, user, &args);
    client.wait_line("expectation met (1/2)").await;
    db.query(&format!(
        "UPDATE documents SET status = 'parsed', updated_at = clock_timestamp() WHERE id = '{doc}'"
    ))
    .await;
    let status = client.wait_exit().await;
    assert!(status.success(), "ws-client log:\n{}", client.logs());
    let log = client.logs();
    assert!(log.matches("connected").count() >= 2, "{log}");
}
