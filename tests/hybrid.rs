//! Retrieval end to end: a real `serve`, real workers, real PostgreSQL and
//! (where named) the real all-MiniLM-L6-v2 model, installed by
//! `scripts/model.sh` (`.ci/run`, or `common::model` on first use).

mod common;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

const NOT_FOUND: &str = "I could not find that in your documents.";

/// A small corpus: one passage per topic, so "the right passage" is a file.
const CORPUS: &[(&str, &str)] = &[
    (
        "refunds.md",
        "# Returns\n\nA customer who receives a damaged or defective item may return it \
         within thirty days and is paid the full price again.\n",
    ),
    (
        "shipping.md",
        "# Shipping\n\nOrders leave the warehouse within two working days. Money spent on \
         express shipping buys delivery the next day. Every purchase ships with a receipt.\n",
    ),
    (
        "garden.md",
        "# Garden\n\nTomatoes need six hours of sun and water at the roots. Prune the \
         side shoots every week so the plant puts its energy into fruit.\n",
    ),
    (
        "security.md",
        "# Accounts\n\nPasswords are stored as Argon2id hashes. After five failed sign-in \
         attempts the account is locked for fifteen minutes.\n",
    ),
];

async fn ingest_corpus(api: &Api, user: Uuid) {
    for (name, text) in CORPUS {
        let (status, d) = upload_bytes(api, user, name, text.as_bytes().to_vec()).await;
        assert_eq!(status, 201, "{d}");
        wait_status(api, user, d["id"].as_str().unwrap(), "ingested").await;
    }
}

async fn ask_anew(api: &Api, user: Uuid, question: &str) -> Value {
    let conv = new_conversation(api, user, None).await;
    common::holding::ask(api, user, &conv, question).await["assistant_message"].clone()
}

fn first_source(answer: &Value) -> Option<String> {
    answer["sources"][0]["filename"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn unanswerable_questions_get_no_sources_and_answerable_ones_answer() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    ingest_corpus(&api, user).await;

    for q in [
        "How often must the pressure valve be inspected?",
        "What is the boiling point of mercury?",
    ] {
        let a = ask_anew(&api, user, q).await;
        assert_eq!(a["status"], "completed", "{a}");
        assert_eq!(a["content"], NOT_FOUND, "{q}: {a}");
        assert_eq!(a["sources"], json!([]), "{q}: {a}");
    }
    let a = ask_anew(
        &api,
        user,
        "How long is an account locked after failed sign-in attempts?",
    )
    .await;
    assert_eq!(first_source(&a).as_deref(), Some("security.md"), "{a}");
    assert!(
        a["content"].as_str().unwrap().contains("fifteen minutes"),
        "{a}"
    );
    // How people ask ("how many", "do I get") is not what the passage must
    // hold: without the filler list this one fell under the floor.
    let a = ask_anew(&api, user, "How many sign-in attempts do I get?").await;
    assert_eq!(first_source(&a).as_deref(), Some("security.md"), "{a}");
    assert!(
        a["content"]
            .as_str()
            .unwrap()
            .contains("five failed sign-in attempts"),
        "{a}"
    );
}

/// The paraphrase shares no word with its passage and two ("money",
/// "purchase") with another: BM25 alone finds only the wrong passage; the
/// model finds the right one.
const PARAPHRASE: &str = "How do I get my money back for a broken purchase?";

/// Chunks of `user` without a vector of the model, and in all.
async fn unembedded(db: &TestDb) -> (i64, i64) {
    let rows = db
        .query(
            "SELECT count(*) FILTER (WHERE v.chunk_id IS NULL), count(*)
             FROM chunks c LEFT JOIN chunk_vectors v ON v.chunk_id = c.id",
        )
        .await;
    (rows[0].get(0), rows[0].get(1))
}

#[tokio::test]
async fn backfill_then_hybrid_finds_the_paraphrase_bm25_misses() {
    let model = common::model::model_dir();
    let model = model.to_str().unwrap();
    let db = TestDb::new();
    let bm25 = Api::start(&db, &["--retrieval", "bm25"], &[]).await;
    // Ingested before any model is configured: no vectors.
    let [_parse, ingest] = workers(&db);
    let user = Uuid::new_v4();
    ingest_corpus(&bm25, user).await;
    let (missing, all) = unembedded(&db).await;
    assert!(
        all >= CORPUS.len() as i64 && missing == all,
        "{missing} of {all}"
    );
    let a = ask_anew(&bm25, user, PARAPHRASE).await;
    assert_ne!(first_source(&a).as_deref(), Some("refunds.md"), "{a}");
    let cited: Vec<&Value> = a["sources"].as_array().unwrap().iter().collect();
    assert!(
        !cited.iter().any(|s| s["filename"] == "refunds.md"),
        "BM25 alone has no word of the paraphrase in refunds.md: {a}"
    );

    // A model is configured: the new ingest worker embeds every old chunk
    // through the queue.
    drop(ingest);
    let env = [("RAG_EMBED_MODEL", model), FAST_RETRIES[0], FAST_RETRIES[1]];
    let _ingest = worker(&db, "ingest", &env);
    loop {
        let (missing, _) = unembedded(&db).await;
        if missing == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rows = db
        .query("SELECT count(*) FROM jobs WHERE kind = 'embed' AND status = 'success'")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), CORPUS.len() as i64);

    let hybrid = Api::start(&db, &[], &[("RAG_EMBED_MODEL", model)]).await;
    let a = ask_anew(&hybrid, user, PARAPHRASE).await;
    assert_eq!(a["status"], "completed", "{a}");
    let files: Vec<&str> = a["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filename"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"refunds.md"), "hybrid finds it: {a}");
    // And the model does not make an unanswerable question answerable.
    let a = ask_anew(
        &hybrid,
        user,
        "How often must the pressure valve be inspected?",
    )
    .await;
    assert_eq!(a["content"], NOT_FOUND, "{a}");
    assert_eq!(a["sources"], json!([]), "{a}");
}

/// An endpoint that accepts connections and never answers.
async fn hanging_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/embeddings", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

#[tokio::test]
async fn an_embeddings_endpoint_that_is_down_or_hangs_falls_back_to_bm25_and_says_so() {
    // Nothing listens on a port just bound and closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/v1/embeddings", closed.local_addr().unwrap());
    drop(closed);
    let db = TestDb::new();
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    for (i, url) in [down, hanging_endpoint().await].iter().enumerate() {
        let api = Api::start(&db, &[], &[("RAG_EMBED_URL", url)]).await;
        if i == 0 {
            ingest_corpus(&api, user).await;
        }
        let fallback = "ragctl_dense_fallback_total{reason=\"endpoint\"}";
        assert_eq!(api.metric(fallback).await, 0.0);
        let q = "How long is an account locked after failed sign-in attempts?";
        let a = ask_anew(&api, user, q).await;
        assert_eq!(a["status"], "completed", "{url}: {a}");
        assert_eq!(first_source(&a).as_deref(), Some("security.md"), "{a}");
        assert!(
            a["content"].as_str().unwrap().contains("fifteen minutes"),
            "{a}"
        );
        assert_eq!(api.metric(fallback).await, 1.0, "{url}");
    }
}
