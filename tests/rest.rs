//! The REST API's answers to bad input, and the scoping of every query to
//! its caller, against a real `ragctl serve`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_MAX_UPLOAD_BYTES", "2048")]).await;
    let user = Uuid::new_v4();
    let c = http();
    let url = |p: &str| format!("{}{p}", api.url);
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_string();

    // No token, a garbage token, a token signed with another secret.
    let r = c.get(url("/documents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    let r = c
        .get(url("/documents"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let forged = ragctl::auth::mint("another-secret", user, Duration::from_secs(60)).unwrap();
    let r = c
        .get(url("/documents"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Malformed multipart, no file field, empty file, too large, unsupported.
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let form = reqwest::multipart::Form::new().text("other", "x");
    let r = c
        .post(url("/documents"))
        .bearer_auth(token(user))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no `file` field"));
    let (s, body) = upload_bytes(&api, user, "empty.txt", vec![]).await;
    assert_eq!((s, code(&body)), (400, "bad_request".into()), "{body}");
    let (s, body) = upload_bytes(&api, user, "big.txt", vec![b'a'; 4096]).await;
    assert_eq!(
        (s, code(&body)),
        (413, "payload_too_large".into()),
        "{body}"
    );
    let png = std::fs::read(fixture("image.png")).unwrap();
    let (s, body) = upload_bytes(&api, user, "image.png", png).await;
    assert_eq!(
        (s, code(&body)),
        (415, "unsupported_media_type".into()),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("PNG"),
        "{body}"
    );

    // Malformed JSON and empty chat content.
    let conv = new_conversation(&api, user, None).await;
    let conv = conv.as_str();
    for body in [
        "{not json",
        r#"{"text":"no content field"}"#,
        r#"{"content":"   "}"#,
    ] {
        let r = c
            .post(url(&format!("/conversations/{conv}/messages")))
            .bearer_auth(token(user))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "bad_request");
    }

    // Unknown ids, ids that are not UUIDs, unknown routes.
    for path in [
        format!("/documents/{}", Uuid::new_v4()),
        "/documents/not-a-uuid".to_string(),
        format!("/documents/{}/jobs", Uuid::new_v4()),
        format!("/conversations/{}/messages", Uuid::new_v4()),
        "/nope".to_string(),
    ] {
        let (s, body) = get_json(&api, user, &path).await;
        assert_eq!(
            (s, code(&body)),
            (404, "not_found".into()),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn another_users_documents_and_conversations_answer_404() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let doc = upload(&api, alice, "handbook.txt").await;
    let id = doc["id"].as_str().unwrap();
    assert_eq!(
        get_json(&api, alice, &format!("/documents/{id}")).await.0,
        200
    );
    assert_eq!(
        get_json(&api, bob, &format!("/documents/{id}")).await.0,
        404
    );
    assert_eq!(
        get_json(&api, bob, &format!("/documents/{id}/jobs"))
            .await
            .0,
        404
    );
    let (_, bobs) = get_json(&api, bob, "/documents").await;
    assert_eq!(bobs["documents"], json!([]));

    let cid = new_conversation(&api, alice, Some("alice's")).await;
    let cid = cid.as_str();
    assert_eq!(
        get_json(&api, bob, &format!("/conversations/{cid}/messages"))
            .await
            .0,
        404
    );
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(bob))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
