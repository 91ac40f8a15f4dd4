//! Chat against a real PostgreSQL: extractive answers that cite the
//! uploaded document, and an OpenAI-compatible endpoint when configured.

mod common;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn chat_answers_cite_the_uploaded_document() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    for f in ["handbook.pdf", "handbook.md"] {
        let d = upload(&api, user, f).await;
        wait_status(&api, user, d["id"].as_str().unwrap(), "ingested").await;
    }
    let other = Uuid::new_v4();
    let d = upload(&api, other, "handbook.txt").await;
    wait_status(&api, other, d["id"].as_str().unwrap(), "ingested").await;

    let cid = new_conversation(&api, user, None).await;
    let cid = cid.as_str();
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({"content": "How does reimbursement work?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let answer = &body["assistant_message"];
    assert_eq!(answer["status"], "completed", "{body}");
    let text = answer["content"].as_str().unwrap();
    assert!(text.to_lowercase().contains("reimbursement"), "{text}");
    assert!(text.contains("[1] handbook.pdf, chunk"), "{text}");
    assert_eq!(answer["sources"][0]["filename"], "handbook.pdf");

    // Another user's documents are never retrieved.
    let r = http()
        .post(format!("{}/conversations/{cid}/messages", api.url))
        .bearer_auth(token(user))
        .json(&json!({"content": "Tell me about onboarding"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        !body["assistant_message"]["content"]
            .as_str()
            .unwrap()
            .contains("handbook.txt"),
        "{body}"
    );

    let (_, msgs) = get_json(&api, user, &format!("/conversations/{cid}/messages")).await;
    let roles: Vec<_> = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].clone())
        .collect();
    assert_eq!(
        roles,
        vec![
            json!("user"),
            json!("assistant"),
            json!("user"),
            json!("assistant")
        ]
    );
}

/// A stand-in for an OpenAI-compatible endpoint: records the requests and
/// answers with `reply` (or HTTP 500 when it is None).
async fn fake_llm(
    reply: Option<&'static str>,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>,
) {
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                log.lock().unwrap().push((auth, body));
                match reply {
                    Some(text) => (StatusCode::OK, Json(json!({"choices": [{"message": {"role": "assistant", "content": text}}]}))),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "model overloaded"}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Asks in a new conversation; the assistant's message.
async fn ask_anew(api: &Api, user: Uuid, question: &str) -> Value {
    let conv = new_conversation(api, user, None).await;
    common::holding::ask(api, user, &conv, question).await["assistant_message"].clone()
}

#[tokio::test]
async fn chat_uses_the_llm_endpoint_when_configured() {
    let (url, seen) = fake_llm(Some("Reimbursement needs an itemised receipt [1].")).await;
    let db = TestDb::new();
    let api = Api::start(
        &db,
        &[],
        &[
            ("RAG_LLM_URL", &url),
            ("RAG_LLM_API_KEY", "sk-test"),
            ("RAG_LLM_MODEL", "tiny"),
        ],
    )
    .await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let d = upload(&api, user, "handbook.pdf").await;
    wait_status(&api, user, d["id"].as_str().unwrap(), "ingested").await;

    let answer = ask_anew(&api, user, "How does reimbursement work?").await;
    assert_eq!(answer["status"], "completed", "{answer}");
    let text = answer["content"].as_str().unwrap();
    assert!(
        text.starts_with("Reimbursement needs an itemised receipt [1]."),
        "{text}"
    );
    assert!(text.contains("Sources:\n[1] handbook.pdf, chunk"), "{text}");
    let (auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(body["model"], "tiny");
    let prompt = body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        prompt.contains("[1] (handbook.pdf, chunk") && prompt.contains("reimbursement"),
        "{prompt}"
    );

    // A failing endpoint marks the message `error`, with the reason.
    let (bad_url, _) = fake_llm(None).await;
    let api2 = Api::start(&db, &[], &[("RAG_LLM_URL", &bad_url)]).await;
    let answer = ask_anew(&api2, user, "How does reimbursement work?").await;
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["error_message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{answer}"
    );
}
