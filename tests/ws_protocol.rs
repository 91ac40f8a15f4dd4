//! The WebSocket edge against RFC 6455, byte by byte: close codes for
//! protocol errors, the close handshake, the upgrade checks, the idle
//! close, every form of the token, and the slow consumer's 4008.

mod common;
mod raw_ws;

use std::time::{Duration, Instant};

use common::*;
use ragctl::events::{Envelope, EventType};
use raw_ws::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// Waits until the counter `ragctl_ws_closed_total{reason}` reaches `n`.
async fn wait_closed_count(api: &Api, reason: &str, n: f64) {
    let metric = format!("ragctl_ws_closed_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = api.metric(&metric).await;
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{metric} is {got}, wanted {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bytes a case sends after the upgrade, and the close code it must get.
fn protocol_cases() -> Vec<(String, Vec<u8>, u16)> {
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("RSV1 set".into(), masked(FIN | RSV1 | TEXT, b"hi"), 1002),
        ("RSV2 set".into(), masked(FIN | RSV2 | TEXT, b"hi"), 1002),
        (
            "RSV3 set on a ping".into(),
            masked(FIN | RSV3 | PING, b""),
            1002,
        ),
        (
            "unmasked client frame".into(),
            frame(FIN | TEXT, b"hi", false),
            1002,
        ),
        (
            "ping over 125 bytes".into(),
            masked(FIN | PING, &[b'p'; 126]),
            1002,
        ),
        ("fragmented ping".into(), masked(PING, b"p"), 1002),
        (
            "continuation with no start".into(),
            masked(FIN | CONT, b"x"),
            1002,
        ),
        (
            "new text while a fragmented message is open".into(),
            [masked(TEXT, b"a"), masked(FIN | TEXT, b"b")].concat(),
            1002,
        ),
        (
            "1-byte close payload".into(),
            masked(FIN | CLOSE, &[0x03]),
            1002,
        ),
        (
            "invalid UTF-8 text".into(),
            masked(FIN | TEXT, &[b'a', 0xff, b'b']),
            1007,
        ),
        (
            "invalid UTF-8 in a fragmented text".into(),
            [masked(TEXT, &[0xce, 0xba, 0xf8]), masked(FIN | CONT, b"ok")].concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason".into(),
            masked(FIN | CLOSE, &close_payload(1000, &[0xce, 0xff])),
            1007,
        ),
        (
            "frame over 4 KiB".into(),
            masked(FIN | BINARY, &[7; 4097]),
            1009,
        ),
        (
            "message over 4 KiB in fragments".into(),
            [masked(BINARY, &[7; 3000]), masked(FIN | CONT, &[7; 3000])].concat(),
            1009,
        ),
    ];
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push((
            format!("reserved opcode {op:#x}"),
            masked(FIN | op, b""),
            1002,
        ));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let close = masked(FIN | CLOSE, &close_payload(code, b""));
        cases.push((format!("close code {code}"), close, 1002));
    }
    // Valid close codes are echoed (the client closed, nothing was wrong).
    for code in [1000u16, 1001, 3000, 4999] {
        let close = masked(FIN | CLOSE, &close_payload(code, b"bye"));
        cases.push((format!("valid close code {code}"), close, code));
    }
    cases
}

#[tokio::test]
async fn protocol_errors_get_their_close_code_before_the_connection_ends() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let jwt = token(Uuid::new_v4());
    let cases = protocol_cases();
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let mut raw = Raw::connect(&api.url, &jwt).await;
        raw.send(bytes).await;
        match raw.close_code().await {
            Ok(Some(code)) if code == *want => {}
            other => failures.push(format!("{name}: wanted close {want}, got {other:?}")),
        }
        // Then FIN: the server ends the connection, without a reset.
        if let Err(e) = raw.eof().await {
            failures.push(format!("{name}: the connection ended with {e}, not FIN"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Counted by reason; a bad close code is the client's close (answered
    // with 1002), so only the 19 other protocol errors count as such.
    wait_closed_count(&api, "protocol_error", 19.0).await;
    wait_closed_count(&api, "invalid_utf8", 3.0).await;
    wait_closed_count(&api, "too_big", 2.0).await;
}

#[tokio::test]
async fn upgrade_requests_with_a_wrong_version_or_key_are_refused_clearly() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let path = format!("/ws?token={}", token(Uuid::new_v4()));
    let (resp, _) = request(&api.url, &path, &["Sec-WebSocket-Version: 8".into()]).await;
    assert_eq!(resp.status, 426, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-version"), Some("13"));
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["error"]["code"], "upgrade_required", "{body}");
    for key in ["c2hvcnQ=", "not base64 at all", "AAAAAAAAAAAAAAAAAAAAAAAA"] {
        let (resp, _) = request(&api.url, &path, &[format!("Sec-WebSocket-Key: {key}")]).await;
        assert_eq!(resp.status, 400, "key {key:?}: {resp:?}");
        let body: Value = serde_json::from_slice(&resp.body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Sec-WebSocket-Key"), "{message}");
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4002() {
    let db = TestDb::new();
    // Pings far apart: only the idle deadline can close the socket.
    let api = Api::start(&db, &["--ws-ping-secs", "600", "--ws-idle-secs", "1"], &[]).await;
    let mut raw = Raw::connect(&api.url, &token(Uuid::new_v4())).await;
    assert_eq!(raw.close_code().await, Ok(Some(4002)));
    raw.send(&masked(FIN | CLOSE, &close_payload(4002, b"")))
        .await;
    raw.eof().await.expect("FIN after the close handshake");
    wait_closed_count(&api, "idle", 1.0).await;
}

#[tokio::test]
async fn every_token_form_upgrades_and_the_offered_subprotocol_is_echoed_exactly() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let jwt = token(user);
    let with_query = format!("/ws?token={jwt}");
    let cases: Vec<(&str, &str, Vec<String>, Option<&str>)> = vec![
        ("?token=", &with_query, vec![], None),
        (
            "Authorization",
            "/ws",
            vec![format!("Authorization: Bearer {jwt}")],
            None,
        ),
        (
            "bearer, JWT",
            "/ws",
            vec![format!("Sec-WebSocket-Protocol: bearer, {jwt}")],
            Some("bearer"),
        ),
        (
            "Bearer, JWT",
            "/ws",
            vec![format!("Sec-WebSocket-Protocol: Bearer, {jwt}")],
            Some("Bearer"),
        ),
        (
            "BEARER, JWT",
            "/ws",
            vec![format!("Sec-WebSocket-Protocol: BEARER, {jwt}")],
            Some("BEARER"),
        ),
        (
            "?token= and bearer, JWT",
            &with_query,
            vec![format!("Sec-WebSocket-Protocol: bearer, {jwt}")],
            Some("bearer"),
        ),
    ];
    for (name, path, headers, echoed) in cases {
        let (resp, mut raw) = request(&api.url, path, &headers).await;
        assert_eq!(resp.status, 101, "{name}: {resp:?}");
        assert_eq!(resp.header("sec-websocket-protocol"), echoed, "{name}");
        // The socket is the user's: it receives the user's events (once
        // registered: under load the event could beat the registration).
        raw.wait_live().await;
        let doc = Uuid::new_v4();
        publish(&db, doc_status(user, doc, "parsed")).await;
        let (op, payload) = raw.next_frame().await.expect("an event frame");
        assert_eq!(op, TEXT, "{name}");
        let frame: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(frame["payload"]["document_id"], doc.to_string(), "{name}");
    }
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused_on_rest_and_ws() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let now = chrono::Utc::now().timestamp();
    let claims =
        json!({"sub": Uuid::new_v4(), "exp": now + 3600, "nbf": now + 600, "aud": "authenticated"});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let early = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let (resp, _) = request(&api.url, &format!("/ws?token={early}"), &[]).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nbf"),
        "{body}"
    );
    let r = http()
        .get(format!("{}/documents", api.url))
        .bearer_auth(&early)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nbf"),
        "{body}"
    );
}

/// A close the server starts waits for the client's reply: frames the
/// client still sends are read, and the connection ends with FIN after the
/// reply (closing at once would answer them with a reset).
#[tokio::test]
async fn server_closes_wait_for_the_clients_reply() {
    let db = TestDb::new();
    let mut api = Api::start(&db, &[], &[]).await;
    let short = ragctl::auth::mint(SECRET, Uuid::new_v4(), Duration::from_secs(2)).unwrap();
    let mut expiring = Raw::connect(&api.url, &short).await;
    let mut staying = Raw::connect(&api.url, &token(Uuid::new_v4())).await;
    assert_eq!(expiring.close_code().await, Ok(Some(4001)));
    expiring.send(&masked(FIN | TEXT, b"still talking")).await;
    expiring
        .send(&masked(FIN | CLOSE, &close_payload(1000, b"")))
        .await;
    expiring
        .eof()
        .await
        .expect("FIN after the reply, not a reset");
    wait_closed_count(&api, "token_expired", 1.0).await;

    api.proc.signal(libc::SIGTERM);
    assert_eq!(staying.close_code().await, Ok(Some(1001)));
    staying.send(&masked(FIN | PING, b"late")).await;
    staying
        .send(&masked(FIN | CLOSE, &close_payload(1001, b"")))
        .await;
    staying
        .eof()
        .await
        .expect("FIN after the reply, not a reset");
    assert!(api.proc.wait_exit().await.success(), "{}", api.proc.logs());
}

/// A client that stops reading overflows its queue; its 4008 close frame is
/// queued behind at most one partly written frame, so once the client reads
/// again (within the 10 s write timeout) it finds the close frame.
#[tokio::test]
async fn a_stuck_client_finds_its_4008_when_it_reads_again() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--ws-queue", "16"], &[]).await;
    let user = Uuid::new_v4();
    // A small receive window, so that the kernel holds few frames.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8192).unwrap();
    let addr = api.url.trim_start_matches("http://");
    let stream = sock.connect(addr.parse().unwrap()).await.unwrap();
    let (resp, mut raw) =
        request_on(stream, addr, &format!("/ws?token={}", token(user)), &[]).await;
    assert_eq!(resp.status, 101);
    let publisher = publisher(&db).await;
    let filler = "x".repeat(60_000);
    let slow = "ragctl_ws_dropped_total{reason=\"slow_consumer\"}";
    let mut sent = 0;
    while api.metric(slow).await < 1.0 {
        assert!(sent < 2000, "the socket never overflowed");
        for _ in 0..10 {
            let env = Envelope::new(
                user,
                EventType::MessageStatusUpdated,
                json!({"message_id": Uuid::new_v4(), "conversation_id": Uuid::nil(), "status": "completed",
                       "content": format!("{sent} {filler}"), "updated_at": chrono::Utc::now()}),
                "test",
            );
            publisher.publish(env).await.unwrap();
            sent += 1;
        }
    }
    // Stuck a while longer (past the 1 s any other close frame gets, well
    // within the write timeout), then reading again: the events the
    // kernel held, then the close frame.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(raw.close_code().await, Ok(Some(4008)));
    raw.send(&masked(FIN | CLOSE, &close_payload(4008, b"")))
        .await;
    raw.eof().await.expect("FIN after the close handshake");
    wait_closed_count(&api, "slow_consumer", 1.0).await;
}
