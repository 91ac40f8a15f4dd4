//! Paginated lists: `GET /documents`, `/conversations` and
//! `/conversations/{id}/messages` answer pages bounded in rows and bytes,
//! and following `next_cursor` returns every row exactly once, in order,
//! while rows are inserted meanwhile. Rows are inserted by SQL, so the
//! lists are long at once; ties on `created_at` are on purpose.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::Value;
use uuid::Uuid;

/// `PAGE_MAX_BYTES` (src/api/pages.rs): no page's body is longer, unless
/// one row alone is.
const PAGE_MAX_BYTES: usize = 1 << 20;

/// GET as `user`: the status and the raw body.
async fn get_raw(base: &str, user: Uuid, path: &str) -> (u16, Vec<u8>) {
    let r = http()
        .get(format!("{base}{path}"))
        .bearer_auth(token(user))
        .send()
        .await
        .expect("GET");
    (
        r.status().as_u16(),
        r.bytes().await.expect("a body").to_vec(),
    )
}

/// Follows `next_cursor` from `path` (which has a `?`), checking each page
/// against the byte bound; the ids in the order received, and the pages.
async fn follow(base: &str, user: Uuid, path: &str, key: &str) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    // A `cursor` the caller put last starts the walk; later pages use ours.
    let list = path.split("&cursor=").next().unwrap();
    loop {
        let url = match &cursor {
            Some(c) => format!("{list}&cursor={c}"),
            None => path.to_string(),
        };
        let (code, body) = get_raw(base, user, &url).await;
        assert_eq!(
            code,
            200,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        assert!(
            body.len() <= PAGE_MAX_BYTES,
            "a page of {} bytes (bound {PAGE_MAX_BYTES})",
            body.len()
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rows = v[key].as_array().expect("the list's array");
        ids.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert!(!rows.is_empty(), "an empty page with a next_cursor");
                cursor = Some(c.to_string());
            }
            None => {
                assert!(v["next_cursor"].is_null(), "{}", v["next_cursor"]);
                return (ids, pages);
            }
        }
    }
}

fn ids_of(rows: &[tokio_postgres::Row]) -> Vec<String> {
    rows.iter()
        .map(|r| r.get::<_, Uuid>(0).to_string())
        .collect()
}

/// `n` messages of 16,000 control characters (6 bytes each in JSON), three
/// to a `created_at`.
async fn insert_big_messages(db: &TestDb, user: Uuid, conv: &str, n: usize) {
    db.query(&format!(
        "INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at, updated_at)
         SELECT gen_random_uuid(), '{conv}', '{user}', 'user', repeat(chr(1), 16000), 'completed',
                t, t
           FROM generate_series(1, {n}) i,
                LATERAL (SELECT timestamptz '2026-01-01' + (i / 3) * interval '1 ms' AS t) s"
    ))
    .await;
}

/// Attack 2 of issue #17: one GET of a long conversation was a 442 MB body.
#[tokio::test]
async fn a_huge_conversation_answers_bounded_pages_and_every_message_once() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let conv = new_conversation(&api, user, Some("long")).await;
    insert_big_messages(&db, user, &conv, 3_000).await;
    let path = format!("/conversations/{conv}/messages?limit=200");

    // One GET at the largest limit: a page within the byte bound, and more.
    let (code, body) = get_raw(&api.url, user, &path).await;
    assert_eq!(code, 200);
    assert!(
        body.len() <= PAGE_MAX_BYTES,
        "one GET answered {} bytes (bound {PAGE_MAX_BYTES})",
        body.len()
    );
    let first: Value = serde_json::from_slice(&body).unwrap();
    assert!(first["next_cursor"].is_string(), "no next_cursor");
    let before = vm_hwm_kib(api.proc.pid());

    let expected = ids_of(
        &db.query(&format!(
            "SELECT id FROM messages WHERE conversation_id = '{conv}' ORDER BY created_at, id"
        ))
        .await,
    );
    // Four clients walk the whole conversation at once.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (url, path) = (api.url.clone(), path.clone());
            tokio::spawn(async move { follow(&url, user, &path, "messages").await })
        })
        .collect();
    for t in tasks {
        let (ids, pages) = t.await.unwrap();
        assert_eq!(ids.len(), expected.len(), "in {pages} pages");
        assert!(ids == expected, "not every message exactly once, in order");
    }
    let after = vm_hwm_kib(api.proc.pid());
    // Each request holds at most 201 rows of 16 KB and a 1 MiB body; the
    // unpaginated list held ~300 MB per client (a 288 MB body and its rows).
    let bound = before + 64 * 1024;
    eprintln!("VmHWM {before} kB -> {after} kB (bound {bound} kB)");
    assert!(after <= bound, "VmHWM grew from {before} kB to {after} kB");
}

/// `n` documents of `user` by SQL, four to a `created_at`.
async fn insert_documents(db: &TestDb, user: Uuid, n: usize, from: &str) {
    db.query(&format!(
        "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status, created_at, updated_at)
         SELECT gen_random_uuid(), '{user}', 'doc-' || i || '.txt', 'text/plain', 1, 'ingested', t, t
           FROM generate_series(1, {n}) i,
                LATERAL (SELECT timestamptz '{from}' + (i / 4) * interval '1 s' AS t) s"
    ))
    .await;
}

#[tokio::test]
async fn documents_page_newest_first_stable_under_inserts_and_scoped_by_user() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    insert_documents(&db, alice, 120, "2026-01-01").await;
    insert_documents(&db, bob, 7, "2026-01-01").await;
    let expected = ids_of(
        &db.query(&format!(
            "SELECT id FROM documents WHERE user_id = '{alice}' ORDER BY created_at DESC, id DESC"
        ))
        .await,
    );

    // The default page is 50 rows, with a cursor to the rest.
    let (code, page) = get_json(&api, alice, "/documents").await;
    assert_eq!(code, 200);
    let rows = page["documents"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["id"], expected[0]);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();

    // Newer uploads meanwhile do not shift the pages that follow.
    insert_documents(&db, alice, 5, "2026-06-01").await;
    let (rest, pages) = follow(
        &api.url,
        alice,
        &format!("/documents?limit=50&cursor={cursor}"),
        "documents",
    )
    .await;
    assert_eq!(pages, 2);
    let all: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .chain(rest)
        .collect();
    assert!(all == expected, "not every document exactly once, in order");

    // Alice's cursor is hers: Bob gets a refusal, not a page.
    let (code, body) = get_json(&api, bob, &format!("/documents?cursor={cursor}")).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_cursor");
    assert!(body.get("documents").is_none());
    let (bobs, _) = follow(&api.url, bob, "/documents?limit=3", "documents").await;
    assert_eq!(bobs.len(), 7);
    assert!(bobs.iter().all(|id| !expected.contains(id)));
}

#[tokio::test]
async fn conversations_and_messages_page_in_their_orders() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut convs = Vec::new();
    for i in 0..5 {
        convs.push(new_conversation(&api, user, Some(&format!("c{i}"))).await);
    }
    let (listed, pages) = follow(&api.url, user, "/conversations?limit=2", "conversations").await;
    assert_eq!(pages, 3);
    convs.reverse();
    assert_eq!(listed, convs, "newest first");
    let (oldest_first, _) = follow(
        &api.url,
        user,
        "/conversations?limit=2&order=asc",
        "conversations",
    )
    .await;
    convs.reverse();
    assert_eq!(oldest_first, convs);

    // Messages: oldest first; newest first on request (a chat's latest
    // page); messages added while paging come at the end, once.
    let conv = &convs[0];
    insert_big_messages(&db, user, conv, 10).await;
    let all = ids_of(
        &db.query(&format!(
            "SELECT id FROM messages WHERE conversation_id = '{conv}' ORDER BY created_at, id"
        ))
        .await,
    );
    let path = format!("/conversations/{conv}/messages?limit=4&order=desc");
    let (newest_first, _) = follow(&api.url, user, &path, "messages").await;
    assert_eq!(newest_first, all.iter().rev().cloned().collect::<Vec<_>>());
    let (code, page) = get_json(
        &api,
        user,
        &format!("/conversations/{conv}/messages?limit=4"),
    )
    .await;
    assert_eq!(code, 200);
    let cursor = page["next_cursor"].as_str().unwrap();
    db.query(&format!(
        "INSERT INTO messages (id, conversation_id, user_id, role, content, status)
         VALUES (gen_random_uuid(), '{conv}', '{user}', 'user', 'late', 'completed')"
    ))
    .await;
    let (rest, _) = follow(
        &api.url,
        user,
        &format!("/conversations/{conv}/messages?limit=4&cursor={cursor}"),
        "messages",
    )
    .await;
    let seen: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .chain(rest.iter().map(String::as_str))
        .collect();
    assert_eq!(seen.len(), 11);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 11);
    assert!(seen[..10].iter().zip(&all).all(|(a, b)| a == b));

    // A cursor of one conversation does not continue another, nor the
    // other order.
    let other = &convs[1];
    for bad in [
        format!("/conversations/{other}/messages?cursor={cursor}"),
        format!("/conversations/{conv}/messages?cursor={cursor}&order=desc"),
        format!("/conversations?cursor={cursor}"),
    ] {
        let (code, body) = get_json(&api, user, &bad).await;
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (400, Some("invalid_cursor")),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn bad_page_parameters_are_refused_naming_the_parameter() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let conv = new_conversation(&api, user, None).await;
    for list in [
        "/documents",
        "/conversations",
        &format!("/conversations/{conv}/messages"),
    ] {
        for (query, code, names) in [
            ("limit=0", "bad_request", "`limit`"),
            ("limit=201", "bad_request", "`limit`"),
            ("limit=ten", "bad_request", "`limit`"),
            ("order=sideways", "bad_request", "`order`"),
            ("cursor=bm90LWEtY3Vyc29y", "invalid_cursor", "`cursor`"),
            ("cursor=%FF%FE", "invalid_cursor", "`cursor`"),
        ] {
            let (status, body) = get_json(&api, user, &format!("{list}?{query}")).await;
            assert_eq!(status, 400, "{list}?{query}: {body}");
            assert_eq!(body["error"]["code"], code, "{list}?{query}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(names), "{list}?{query}: {message}");
        }
    }
    let (status, body) = get_json(&api, user, "/documents?limit=200").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"documents": [], "next_cursor": null})
    );
}

/// `ragctl docs` follows the pages: it prints every document, more than
/// one page's worth, each once.
#[tokio::test]
async fn ragctl_docs_prints_every_page() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    insert_documents(&db, user, 450, "2026-01-01").await;
    let (url, user_arg) = (api.url.clone(), user.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args([
                "docs", "--url", &url, "--user", &user_arg, "--format", "json",
            ])
            .env("RAG_JWT_SECRET", SECRET)
            .output()
            .expect("run ragctl docs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 450);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 450);
}
