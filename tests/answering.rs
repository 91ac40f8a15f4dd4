//! Answering against a real PostgreSQL: bad questions get a clear 400 or
//! "I could not find that in your documents." with no sources, and the
//! retrieval flags fail at start with a message naming flag and variable.

mod common;

use common::holding::post_message as post;
use common::*;
use serde_json::json;
use uuid::Uuid;

const NOT_FOUND: &str = "I could not find that in your documents.";

#[tokio::test]
async fn bad_questions_get_a_clear_400_or_the_could_not_find_answer() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_PASSAGES", "2")]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let d = upload(&api, user, "handbook.pdf").await;
    wait_status(&api, user, d["id"].as_str().unwrap(), "ingested").await;
    let conv = new_conversation(&api, user, None).await;

    let (status, body) = post(&api, user, &conv, "   ").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("must not be empty"), "{body}");

    let (status, body) = post(&api, user, &conv, &"why ".repeat(4001)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("16000 characters"), "{body}");

    // Only stop words: nothing to look for.
    let (status, body) = post(&api, user, &conv, "Why is it there, and what does it do?").await;
    assert_eq!(status, 201, "{body}");
    let answer = &body["assistant_message"];
    assert_eq!(answer["status"], "completed", "{body}");
    assert_eq!(answer["content"], NOT_FOUND, "{body}");
    assert_eq!(answer["sources"], json!([]), "{body}");

    // An answerable question still answers, from at most --passages chunks.
    let (status, body) = post(&api, user, &conv, "How does reimbursement work?").await;
    assert_eq!(status, 201, "{body}");
    let answer = &body["assistant_message"];
    let text = answer["content"].as_str().unwrap();
    assert!(text.starts_with("From your documents:\n- "), "{text}");
    assert!(text.to_lowercase().contains("reimburs"), "{text}");
    let sources = answer["sources"].as_array().unwrap();
    assert!((1..=2).contains(&sources.len()), "{body}");
}

#[tokio::test]
async fn dense_retrieval_without_a_model_fails_at_start_naming_the_flags() {
    let db = TestDb::new();
    for (args, env) in [
        (
            vec!["serve", "--port", "0", "--retrieval", "hybrid"],
            vec![],
        ),
        (
            vec!["serve", "--port", "0"],
            vec![("RAG_RETRIEVAL", "dense")],
        ),
    ] {
        let mut p = Proc::spawn("serve", &db.url, &args, &env);
        let status = p.wait_exit().await;
        assert!(!status.success(), "{}", p.logs());
        let logs = p.logs();
        assert!(logs.contains("--retrieval / RAG_RETRIEVAL"), "{logs}");
        assert!(logs.contains("--embed-model"), "{logs}");
    }
    let mut p = Proc::spawn(
        "serve",
        &db.url,
        &["serve", "--port", "0"],
        &[("RAG_MIN_RELEVANCE", "2")],
    );
    assert!(!p.wait_exit().await.success());
    let logs = p.logs();
    assert!(
        logs.contains("--min-relevance / RAG_MIN_RELEVANCE"),
        "{logs}"
    );
}
