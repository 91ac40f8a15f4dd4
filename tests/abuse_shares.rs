//! One user's share (issue #17, attacks 4, 5 and 6): an attacker with one
//! or a few accounts cannot take every WebSocket slot, pin the upload
//! budget, or starve the database pool with chat searches; another user
//! still gets a socket, an upload and REST answers. Answers and refusals
//! are counted, never timed; slow searches are made by a lock on `chunks`.

mod common;

use common::raw::*;
use common::*;
use tokio_tungstenite::tungstenite;
use uuid::Uuid;

#[tokio::test]
async fn one_user_cannot_take_every_websocket() {
    let db = TestDb::new();
    // A modest process cap, so that the attack is quick; the per-user cap
    // is the default (64).
    let api = Api::start(&db, &["--ws-max-connections", "200"], &[]).await;
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let url = format!("{}?token={}", api.ws_url(), token(attacker));
    let mut held = vec![];
    let refused = loop {
        match Client::connect_url(&url).await {
            Ok(c) => held.push(c),
            Err(tungstenite::Error::Http(r)) => break r,
            Err(e) => panic!("after {} sockets: {e}", held.len()),
        }
    };
    let body: serde_json::Value =
        serde_json::from_slice(refused.body().as_deref().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        refused.status(),
        429,
        "after {} sockets: {body}",
        held.len()
    );
    assert_eq!(body["error"]["code"], "too_many_sockets", "{body}");
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(held.len(), 64, "the default per-user cap");

    // Another user connects and gets live events.
    let mut client = Client::connect(&api, victim, "").await;
    client.wait_live().await;
    let (code, doc) = upload_bytes(&api, victim, "note.txt", b"hello".to_vec()).await;
    assert_eq!(code, 201, "{doc}");
    let id = doc["id"].clone();
    client
        .expect("the victim's document.created", |f| {
            is(f, "document.created", &[("document_id", id.clone())])
        })
        .await;
    let refusals = "ragctl_ws_refused_total{reason=\"user_cap\"}";
    assert_eq!(api.metric(refusals).await, 1.0);
    drop(held);
}

/// A multipart upload of `size` bytes split after `sent` bytes of the file.
fn upload_split(size: usize, sent: usize) -> (Vec<u8>, Vec<u8>, String) {
    let (first, rest, ctype) = multipart(size);
    let whole = [first, rest].concat();
    let file_at = find(&whole, b"\r\n\r\n").unwrap() + 4;
    let (a, b) = whole.split_at(file_at + sent);
    (a.to_vec(), b.to_vec(), ctype)
}

/// Starts an upload of `size` bytes and sends `sent` bytes of its file.
async fn start_upload(api: &Api, user: Uuid, size: usize, sent: usize) -> (Raw, Vec<u8>) {
    let (first, rest, ctype) = upload_split(size, sent);
    let length = first.len() + rest.len();
    let raw = Raw::start(&api.url, "POST", "/documents", user, &ctype, length, &first).await;
    (raw, rest)
}

/// Waits until the upload bytes in flight are more than `than`.
async fn wait_budget_above(api: &Api, than: f64) -> f64 {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = api.metric("ragctl_upload_bytes_in_flight").await;
        if now > than {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "stuck at {now}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Uploads `size` bytes as `user`; checks 201 and the stored length.
async fn upload_stored(api: &Api, db: &TestDb, user: Uuid, size: usize) {
    let r = full_upload(&api.url, user, size).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap();
    let rows = db
        .query(&format!(
            "SELECT length(content) FROM document_blobs WHERE document_id = '{id}'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i32>(0), size as i32);
}

#[tokio::test]
async fn declared_and_slow_uploads_cannot_pin_the_upload_budget() {
    let db = TestDb::new();
    let (budget, max) = (32 * MIB, 4 * MIB);
    let api = Api::start(
        &db,
        &[
            "--upload-budget-bytes",
            &budget.to_string(),
            "--max-upload-bytes",
            &max.to_string(),
        ],
        &[],
    )
    .await;
    let attackers: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let victim = Uuid::new_v4();

    // 1. Eight uploads from four accounts declare 4 MiB each (the whole
    // budget) and send one byte; each has been read once the bytes in
    // flight grow.
    let mut heads = vec![];
    let mut in_flight = 0.0;
    for user in attackers.iter().chain(&attackers) {
        heads.push(start_upload(&api, *user, max, 1).await);
        in_flight = wait_budget_above(&api, in_flight).await;
    }
    upload_stored(&api, &db, victim, 10 * 1024).await;
    drop(heads);
    wait_metric(&api, "ragctl_upload_bytes_in_flight", 0.0).await;

    // 2. The same uploads send all their bytes but one, one after the
    // other, and stall: each holds what it sent, until the bytes above the
    // users' floors reach their part of the budget; the eighth is refused
    // though the budget has room, which is kept for users holding little.
    let mut held = vec![];
    for (i, user) in attackers.iter().flat_map(|u| [u, u]).enumerate() {
        let (raw, rest) = start_upload(&api, *user, max, max - 1).await;
        if i < 7 {
            let want = ((i + 1) * max) as f64;
            wait_metric(&api, "ragctl_upload_bytes_in_flight", want).await;
            held.push((raw, rest));
        } else {
            assert_refused(&raw.response().await, 503, "server_busy");
        }
    }
    // Other users still upload, each within the floor (1 MiB).
    upload_stored(&api, &db, victim, 10 * 1024).await;
    upload_stored(&api, &db, Uuid::new_v4(), 512 * 1024).await;
    assert_eq!(
        api.metric("ragctl_upload_bytes_in_flight").await,
        (7 * max) as f64
    );
    // The attackers' uploads were held, not lost: they finish.
    for (mut raw, rest) in held {
        raw.send(&rest).await;
        assert_eq!(raw.response().await.status, 201);
    }
}

#[tokio::test]
async fn one_users_searches_cannot_starve_the_pool() {
    let db = TestDb::new();
    let api = Api::start(&db, &["--statement-timeout-ms", "600000"], &[]).await;
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let conv = new_conversation(&api, attacker, None).await;
    let lock = TableLock::searches(&db).await;

    // Twenty questions at once; every search waits on the lock.
    let mut asks = vec![];
    for i in 0..20 {
        asks.push(ask(&api, attacker, &conv, &format!("question {i}")).await);
    }
    let answers: Vec<_> = asks
        .into_iter()
        .map(|raw| tokio::spawn(raw.response()))
        .collect();
    let deadline = std::time::Instant::now() + PATIENCE;
    while running_searches(&db).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no searches running");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Another user's REST is served meanwhile.
    let (code, body) = get_json(&api, victim, "/documents").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get_json(&api, victim, "/conversations").await;
    assert_eq!(code, 200, "{body}");
    // The attacker has two searches running; the other eighteen were
    // refused at once.
    let refusals = "ragctl_searches_refused_total{reason=\"user_cap\"}";
    wait_metric(&api, refusals, 18.0).await;
    assert_eq!(wait_searches(&db, 2).await.len(), 2);

    lock.release().await;
    let (mut created, mut refused) = (0, 0);
    for a in answers {
        let r = a.await.unwrap();
        match r.status {
            201 => created += 1,
            _ => {
                assert_refused(&r, 429, "too_many_searches");
                refused += 1;
            }
        }
    }
    assert_eq!((created, refused), (2, 18));
}
