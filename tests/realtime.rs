//! The realtime bridge, end to end: the API as a spawned binary, the workers
//! as separate OS processes, and a WebSocket client acting as the user.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ragctl::events::{Envelope, EventType};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

/// Acceptance 1 and 3: a parse job and an ingest job done by worker
/// processes reach the client connected to the API process.
#[tokio::test]
async fn worker_events_reach_the_client() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    client.wait_live().await;
    let doc = upload(&api, user, "handbook.pdf").await;
    let id = s(doc["id"].as_str().unwrap());
    client
        .expect("document.created", |f| {
            is(
                f,
                "document.created",
                &[("document_id", id.clone()), ("status", s("uploaded"))],
            )
        })
        .await;
    let job = client
        .expect("parse success", |f| {
            is(
                f,
                "job.status_updated",
                &[
                    ("document_id", id.clone()),
                    ("kind", s("parse")),
                    ("status", s("success")),
                ],
            )
        })
        .await;
    assert_eq!(job["payload"]["retry_count"], 0);
    client
        .expect("parsed", |f| {
            is(
                f,
                "document.status_updated",
                &[("document_id", id.clone()), ("status", s("parsed"))],
            )
        })
        .await;
    client
        .expect("ingested", |f| {
            is(
                f,
                "document.status_updated",
                &[("document_id", id.clone()), ("status", s("ingested"))],
            )
        })
        .await;
    // Frames are exactly {type, payload}: nothing tells which process sent them.
    for f in &client.frames {
        let keys: Vec<_> = f.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["payload".to_string(), "type".to_string()], "{f}");
        assert!(f["payload"].get("origin").is_none());
    }
}

/// Acceptance 1, failure path. A corrupt PDF is retried only under
/// `RAG_RETRY_POLICY=all` (by default no retry can change it, so it fails
/// at once: tests/workers.rs).
#[tokio::test]
async fn a_parse_that_fails_three_retries_reaches_the_client() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let env = [
        FAST_RETRIES[0],
        FAST_RETRIES[1],
        ("RAG_RETRY_POLICY", "all"),
    ];
    let _p = worker(&db, "parse", &env);
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let doc = upload(&api, user, "corrupt.pdf").await;
    let id = s(doc["id"].as_str().unwrap());
    for retry in 1..=3 {
        client
            .expect("a retry", |f| {
                is(
                    f,
                    "job.status_updated",
                    &[
                        ("document_id", id.clone()),
                        ("status", s("queued")),
                        ("retry_count", json!(retry)),
                    ],
                )
            })
            .await;
    }
    let failed = client
        .expect("job failed", |f| {
            is(
                f,
                "job.status_updated",
                &[("document_id", id.clone()), ("status", s("failed"))],
            )
        })
        .await;
    assert_eq!(failed["payload"]["retry_count"], 3);
    assert!(
        failed["payload"]["error_message"]
            .as_str()
            .unwrap()
            .starts_with("corrupt PDF"),
        "{failed}"
    );
    let err = client
        .expect("document error", |f| {
            is(
                f,
                "document.status_updated",
                &[("document_id", id.clone()), ("status", s("error"))],
            )
        })
        .await;
    assert_eq!(
        err["payload"]["error_message"],
        failed["payload"]["error_message"]
    );
}

/// Acceptance 3: with realtime off the business flow is unchanged.
#[tokio::test]
async fn with_realtime_off_everything_else_works() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--no-realtime"], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let err = Client::connect_url(&format!("{}?token={}", api.ws_url(), token(user)))
        .await
        .err()
        .unwrap();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
    let doc = upload(&api, user, "handbook.html").await;
    wait_status(&api, user, doc["id"].as_str().unwrap(), "ingested").await;
    let (_, ready) = api.readyz().await;
    assert_eq!(ready["realtime"]["enabled"], false);
}

/// Acceptance 3 and recovery: the listener's backend is killed; the flow
/// completes, the bridge reconnects by itself, and with healing off
/// (`--max-heal 0`) `?resync=1` clients are told to refetch (tests/heal.rs
/// covers healing).
#[tokio::test]
async fn a_killed_listener_reconnects_and_resyncs() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--max-heal", "0"], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let mut plain = Client::connect(&api, user, "").await;
    let mut opted = Client::connect(&api, user, "&resync=1").await;
    let killed = db
        .query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ragctl-listener' AND datname = '{}'",
            db.name
        ))
        .await;
    assert_eq!(killed.len(), 1, "exactly one listener backend");
    let doc = upload(&api, user, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    wait_status(&api, user, id, "ingested").await;

    let resync = opted
        .expect("resync frame", |f| f["type"] == "realtime.resync")
        .await;
    assert_eq!(resync["payload"]["reason"], "listener_reconnected");
    api.wait_ready().await;
    let (_, ready) = api.readyz().await;
    assert!(
        ready["realtime"]["reconnects"].as_u64().unwrap() >= 1,
        "{ready}"
    );

    // Events flow again without a restart.
    let after = Uuid::new_v4();
    publish(&db, doc_status(user, after, "parsed")).await;
    let want = s(&after.to_string());
    plain
        .expect("event after reconnect", |f| {
            f["payload"]["document_id"] == want
        })
        .await;
    opted
        .expect("event after reconnect", |f| {
            f["payload"]["document_id"] == want
        })
        .await;
    assert!(
        plain.frames.iter().all(|f| f["type"] != "realtime.resync"),
        "resync sent to a client that did not opt in"
    );
}

/// Two API instances both listen; each of a user's sockets gets every
/// event exactly once, whichever instance it is on; users are isolated.
#[tokio::test]
async fn two_instances_deliver_each_event_once_and_only_to_its_user() {
    let db = TestDb::new();
    let a = Api::start(&db, &[], &[]).await;
    let b = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let mut on_a = Client::connect(&a, user, "").await;
    let mut on_b = Client::connect(&b, user, "").await;
    on_a.wait_live().await;
    on_b.wait_live().await;
    // Uploaded through instance A; the client on B must see it all too.
    let doc = upload(&a, user, "handbook.md").await;
    let id = s(doc["id"].as_str().unwrap());
    for c in [&mut on_a, &mut on_b] {
        c.expect("ingested", |f| {
            is(
                f,
                "document.status_updated",
                &[("document_id", id.clone()), ("status", s("ingested"))],
            )
        })
        .await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for f in &c.frames {
            let key = format!(
                "{} {} {} {}",
                f["type"],
                f["payload"]["job_id"],
                f["payload"]["status"],
                f["payload"]["retry_count"]
            );
            *seen.entry(key).or_default() += 1;
        }
        assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:#?}");
        assert_eq!(seen.len(), 11, "{seen:#?}");
    }

    // 50 users at once, clients spread over both instances.
    let users: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let mut clients = Vec::new();
    for (n, u) in users.iter().enumerate() {
        let api = if n % 2 == 0 { &a } else { &b };
        let mut client = Client::connect(api, *u, "").await;
        client.wait_live().await;
        clients.push(client);
    }
    let publisher = publisher(&db).await;
    let docs: Vec<Uuid> = users.iter().map(|_| Uuid::new_v4()).collect();
    for (u, d) in users.iter().zip(&docs) {
        publisher
            .publish(doc_status(*u, *d, "parsed"))
            .await
            .unwrap();
    }
    // A sentinel per user marks the end: everything before it must be the
    // user's own event and nothing else.
    for u in &users {
        publisher
            .publish(doc_status(*u, Uuid::nil(), "ingested"))
            .await
            .unwrap();
    }
    for (n, c) in clients.iter_mut().enumerate() {
        c.expect("sentinel", |f| {
            f["payload"]["document_id"] == s(&Uuid::nil().to_string())
        })
        .await;
        let own: Vec<_> = c
            .frames
            .iter()
            .map(|f| f["payload"]["document_id"].clone())
            .collect();
        assert_eq!(
            own,
            vec![s(&docs[n].to_string()), s(&Uuid::nil().to_string())],
            "user {n}"
        );
    }
}

/// Acceptance 4 / the documented envelope: a worker in any language can
/// publish with plain SQL.
#[tokio::test]
async fn an_envelope_from_psql_reaches_the_client() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    client.wait_live().await;
    let doc = Uuid::new_v4();
    let envelope = json!({
        "v": 1, "id": Uuid::new_v4(), "user_id": user, "type": "job.status_updated",
        "payload": {"job_id": Uuid::new_v4(), "document_id": doc, "kind": "ingest", "status": "success",
                    "retry_count": 1, "error_message": null, "updated_at": "2026-11-28T10:00:00Z"},
        "ts": "2026-11-28T10:00:00Z", "origin": "go-worker"
    });
    let sql = format!(
        "SELECT pg_notify('rag_events', '{}')",
        envelope.to_string().replace('\'', "''")
    );
    let out = std::process::Command::new("psql")
        .arg(db.url.split('?').next().unwrap())
        .args(["-X", "-q", "-c", &sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = client
        .expect("the psql event", |f| {
            f["payload"]["document_id"] == s(&doc.to_string())
        })
        .await;
    assert_eq!(
        got,
        json!({"type": "job.status_updated", "payload": envelope["payload"]})
    );
}

/// A 100 KB assistant message is over the NOTIFY limit and arrives intact.
#[tokio::test]
async fn payloads_over_the_notify_limit_arrive_intact() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    let content: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect::<String>()
        + " — Tiếng Việt ✓";
    let env = Envelope::new(
        user,
        EventType::MessageStatusUpdated,
        json!({"message_id": Uuid::new_v4(), "conversation_id": Uuid::new_v4(), "status": "completed",
               "content": content, "updated_at": chrono::Utc::now()}),
        "test",
    );
    assert!(ragctl::events::encode_notifications(&env).unwrap().len() > 1);
    publish(&db, env.clone()).await;
    let got = client
        .expect("the big message", |f| f["type"] == "message.status_updated")
        .await;
    assert_eq!(got["payload"], env.payload);
}

/// Malformed NOTIFY payloads, one of each reason, are dropped and counted;
/// the bridge keeps delivering.
#[tokio::test]
async fn malformed_payloads_are_counted_and_the_bridge_survives() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    client.wait_live().await;
    let good = serde_json::to_value(doc_status(user, Uuid::new_v4(), "parsed")).unwrap();
    let bad = malformed(&good);
    notify_raw(&db, bad.iter().map(|(_, p)| p)).await;
    let after = Uuid::new_v4();
    publish(&db, doc_status(user, after, "ingested")).await;
    let got = client
        .expect("the good event", |f| {
            f["payload"]["document_id"] == s(&after.to_string())
        })
        .await;
    assert_eq!(
        client.frames.len(),
        1,
        "a malformed payload reached the client: {:#?}",
        client.frames
    );
    assert_eq!(got["payload"]["status"], "ingested");
    for (reason, _) in &bad {
        let n = api
            .metric(&format!(
                "ragctl_events_dropped_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert_eq!(n, 1.0, "{reason}");
    }
    assert!(api.proc.logs().contains("dropped a malformed event"));
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let exp = chrono::Utc::now().timestamp() + 600;
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": user, "exp": exp, "aud": "authenticated"}))
    );
    let sign = |claims: Value| {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let cases = [
        ("missing", String::new(), 401),
        ("garbage", "abc".to_string(), 401),
        (
            "other secret",
            ragctl::auth::mint("nope", user, Duration::from_secs(60)).unwrap(),
            401,
        ),
        (
            "expired",
            sign(json!({"sub": user, "exp": exp - 1200, "aud": "authenticated"})),
            401,
        ),
        (
            "wrong audience",
            sign(json!({"sub": user, "exp": exp, "aud": "anon"})),
            401,
        ),
        ("alg none", unsigned, 401),
        (
            "anon (no sub)",
            sign(json!({"role": "anon", "exp": exp, "aud": "authenticated"})),
            403,
        ),
    ];
    for (what, token, status) in cases {
        let err = Client::connect_url(&format!("{}?token={token}", api.ws_url()))
            .await
            .err();
        match err {
            Some(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), status, "{what}")
            }
            other => panic!("{what}: expected HTTP {status}, got {other:?}"),
        }
    }
    // The token may also come in a header or as a subprotocol (browsers).
    let mut req = api.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(user)).parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    let mut req = api.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {}", token(user)).parse().unwrap(),
    );
    let (_, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bearer");
    // A valid token on a request that is not a WebSocket upgrade: 400.
    let resp = http()
        .get(format!("{}/ws?token={}", api.url, token(user)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body.to_string().contains("upgrade"), "{body}");
    // No token ever reaches a log line.
    assert!(!api.proc.logs().contains(&token(user)[..40]));
}

/// A client that never reads is closed; the other clients stay on time.
#[tokio::test]
async fn a_client_that_never_reads_is_dropped_alone() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--ws-queue", "16"], &[]).await;
    let user = Uuid::new_v4();
    let stuck = Client::connect(&api, user, "").await;
    let mut reader = Client::connect(&api, user, "").await;
    let other_user = Uuid::new_v4();
    let mut other = Client::connect(&api, other_user, "").await;
    let publisher = publisher(&db).await;
    let filler = "x".repeat(60_000);
    let total = 400;
    for n in 0..total {
        let env = Envelope::new(
            user,
            EventType::MessageStatusUpdated,
            json!({"message_id": Uuid::new_v4(), "conversation_id": Uuid::nil(), "status": "completed",
                   "content": format!("{n} {filler}"), "updated_at": chrono::Utc::now()}),
            "test",
        );
        publisher.publish(env).await.unwrap();
        // The reading client keeps up as it goes.
        reader
            .expect("message", |f| {
                f["payload"]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{n} "))
            })
            .await;
    }
    let marker = Uuid::new_v4();
    publisher
        .publish(doc_status(other_user, marker, "parsed"))
        .await
        .unwrap();
    other
        .expect("other user's event", |f| {
            f["payload"]["document_id"] == s(&marker.to_string())
        })
        .await;
    assert!(
        api.metric("ragctl_ws_dropped_total{reason=\"slow_consumer\"}")
            .await
            >= 1.0
    );
    drop(stuck);
    // The bridge still delivers after all that.
    let last = Uuid::new_v4();
    publisher
        .publish(doc_status(user, last, "ingested"))
        .await
        .unwrap();
    reader
        .expect("last", |f| {
            f["payload"]["document_id"] == s(&last.to_string())
        })
        .await;
}

#[tokio::test]
async fn expired_tokens_and_shutdown_close_with_documented_codes() {
    let db = TestDb::new();
    let mut api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let short = ragctl::auth::mint(SECRET, user, Duration::from_secs(2)).unwrap();
    let mut expiring = Client::connect_url(&format!("{}?token={short}", api.ws_url()))
        .await
        .unwrap();
    assert_eq!(expiring.expect_close().await, Some(4001));

    let mut client = Client::connect(&api, user, "").await;
    client
        .socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "ignored".into(),
        ))
        .await
        .unwrap();
    api.proc.signal(libc::SIGTERM);
    assert_eq!(client.expect_close().await, Some(1001));
    assert!(api.proc.wait_exit().await.success(), "{}", api.proc.logs());
}

/// The protocol's own frames share the socket with events: a client's ping
/// is answered with its payload, and a client's close with a close, after
/// the events already sent.
#[tokio::test]
async fn pings_and_closes_from_clients_are_answered() {
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut client = Client::connect(&api, user, "").await;
    client.wait_live().await;
    let doc = Uuid::new_v4();
    publish(&db, doc_status(user, doc, "parsed")).await;
    client
        .expect("the event", |f| {
            f["payload"]["document_id"] == s(&doc.to_string())
        })
        .await;
    client
        .socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            match client.socket.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("socket ended before the pong: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
    client.socket.send(Message::Close(None)).await.unwrap();
    // The server's close frame (or, at worst, the end of the stream) must
    // come; an error or a hang fails.
    tokio::time::timeout(PATIENCE, async {
        loop {
            match client.socket.next().await {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("no close reply: {e}"),
            }
        }
    })
    .await
    .expect("a close reply");
    let deadline = std::time::Instant::now() + PATIENCE;
    while api
        .metric("ragctl_ws_closed_total{reason=\"client_closed\"}")
        .await
        < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "close not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server pings; a peer that never answers is dropped, one that does
/// stays.
#[tokio::test]
async fn silent_peers_are_dropped_and_live_ones_kept() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--ws-ping-secs", "1"], &[]).await;
    let user = Uuid::new_v4();
    let silent = Client::connect(&api, user, "").await; // never reads, so never pongs
    let mut live = Client::connect(&api, user, "").await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        // Reading answers the server's pings.
        let _ = live.next(Duration::from_millis(200)).await;
        if api.metric("ragctl_ws_closed_total{reason=\"idle\"}").await >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the silent peer was never dropped"
        );
    }
    let doc = Uuid::new_v4();
    publish(&db, doc_status(user, doc, "parsed")).await;
    live.expect("event on the live socket", |f| {
        f["payload"]["document_id"] == s(&doc.to_string())
    })
    .await;
    assert_eq!(api.metric("ragctl_ws_sockets").await, 1.0);
    drop(silent);
}
