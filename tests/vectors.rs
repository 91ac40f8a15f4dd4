//! Chunk vectors against a real PostgreSQL, with an OpenAI-compatible
//! `/v1/embeddings` test double (an axum server in the test: a hashed bag
//! of words, 384 dimensions): ingest embeds every chunk; a worker started
//! with an embedder backfills old chunks through `embed` jobs; an endpoint
//! that is down does not stop ingest, and the embed job fills the vectors
//! in once it is back; bad flags stop the start naming the flag; dense
//! search finds the closest chunk, only the asker's, and never a removed
//! document's.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

use ragctl::db::{chunks, vectors};
use ragctl::embed::{EmbedOpts, Embedder, VectorCache, dense};

const DIMS: usize = 384;

/// The test double's vector: word counts hashed into 384 buckets plus a
/// constant bias (so no text is the zero vector), L2-normalised.
fn bag_of_words(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIMS];
    v[0] = 0.5;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in word.to_lowercase().bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        v[1 + (h % (DIMS as u64 - 1)) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// An OpenAI-compatible embeddings endpoint; `down` makes it answer 503.
struct Endpoint {
    url: String,
    down: Arc<AtomicBool>,
    texts: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Double {
    down: Arc<AtomicBool>,
    texts: Arc<AtomicUsize>,
}

async fn embeddings(State(d): State<Double>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if d.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "down"})),
        );
    }
    let input: Vec<&str> = match &body["input"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": "no input"}))),
    };
    d.texts.fetch_add(input.len(), Ordering::SeqCst);
    let data: Vec<Value> = input
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": bag_of_words(t)}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"object": "list", "data": data, "model": body["model"]})),
    )
}

impl Endpoint {
    async fn start() -> Endpoint {
        let double = Double {
            down: Arc::default(),
            texts: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(double.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint {
            url: format!("http://{addr}/v1/embeddings"),
            down: double.down,
            texts: double.texts,
            _task: task,
        }
    }

    /// The model id vectors from this endpoint are stored under.
    fn model(&self) -> String {
        let host = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        format!("{host}/all-MiniLM-L6-v2")
    }

    fn embedder(&self) -> Embedder {
        EmbedOpts {
            embed_url: Some(self.url.clone()),
            embed_name: "all-MiniLM-L6-v2".into(),
            ..EmbedOpts::default()
        }
        .load()
        .unwrap()
        .unwrap()
    }
}

/// A text of several paragraphs: several chunks at the default size.
fn long_text(topic: &str) -> Vec<u8> {
    (0..8)
        .map(|i| {
            format!(
                "Section {i} about {topic}. The {topic} team reviews paragraph {i} every quarter, \
                 and each reviewer signs the {topic} register before the meeting closes. \
                 Nothing else in paragraph {i} matters for the {topic} audit, which is kept for \
                 seven years in the archive room on the second floor.\n\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.query(sql).await[0].get(0)
}

/// Chunks of `doc` with no vector for `model`.
async fn missing(db: &TestDb, doc: &str, model: &str) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM chunks c WHERE c.document_id = '{doc}' AND NOT EXISTS (
                SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.model = '{model}')"
        ),
    )
    .await
}

/// Waits until `sql` counts `want`.
async fn wait_count(db: &TestDb, sql: &str, want: i64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = count(db, sql).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ingest_worker(db: &TestDb, extra: &[(&str, &str)]) -> Proc {
    let mut env = FAST_RETRIES.to_vec();
    env.extend_from_slice(extra);
    worker(db, "ingest", &env)
}

#[tokio::test]
async fn ingest_with_an_endpoint_gives_every_chunk_its_vector() {
    let db = TestDb::new();
    let ep = Endpoint::start().await;
    let api = Api::start(&db, &[], &[]).await;
    let _parse = worker(&db, "parse", &FAST_RETRIES);
    let _ingest = ingest_worker(&db, &[("RAG_EMBED_URL", &ep.url)]);
    let user = Uuid::new_v4();
    let (code, doc) = upload_bytes(&api, user, "audit.txt", long_text("audit")).await;
    assert_eq!(code, 201, "{doc}");
    let id = doc["id"].as_str().unwrap();
    wait_status(&api, user, id, "ingested").await;
    let rows = db
        .query(&format!(
            "SELECT c.content, v.vec, v.user_id::text, v.model FROM chunks c
             JOIN chunk_vectors v ON v.chunk_id = c.id WHERE c.document_id = '{id}'"
        ))
        .await;
    let chunks = count(
        &db,
        &format!("SELECT count(*) FROM chunks WHERE document_id = '{id}'"),
    )
    .await;
    assert!(chunks >= 2, "a long text makes several chunks: {chunks}");
    assert_eq!(rows.len() as i64, chunks, "every chunk has a vector");
    for r in rows {
        let (content, bytes): (String, Vec<u8>) = (r.get(0), r.get(1));
        let mut v = vec![];
        assert!(vectors::decode_into(&bytes, DIMS, &mut v));
        let want = bag_of_words(&content);
        let diff: f32 = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum();
        assert!(
            diff < 1e-4,
            "the stored vector is the endpoint's for this chunk"
        );
        assert_eq!(r.get::<_, String>(2), user.to_string());
        assert_eq!(r.get::<_, String>(3), ep.model());
    }
    assert_eq!(missing(&db, id, &ep.model()).await, 0);
    // No backfill was needed: no embed job.
    let embed_jobs = count(&db, "SELECT count(*) FROM jobs WHERE kind = 'embed'").await;
    assert_eq!(embed_jobs, 0);
}

#[tokio::test]
async fn a_worker_started_with_an_embedder_backfills_old_chunks() {
    let db = TestDb::new();
    let ep = Endpoint::start().await;
    let api = Api::start(&db, &[], &[]).await;
    let _parse = worker(&db, "parse", &FAST_RETRIES);
    let mut plain = ingest_worker(&db, &[]);
    let user = Uuid::new_v4();
    let mut ids = vec![];
    for topic in ["audit", "payroll", "safety"] {
        let (_, doc) = upload_bytes(&api, user, &format!("{topic}.txt"), long_text(topic)).await;
        let id = doc["id"].as_str().unwrap().to_string();
        wait_status(&api, user, &id, "ingested").await;
        ids.push(id);
    }
    assert_eq!(count(&db, "SELECT count(*) FROM chunk_vectors").await, 0);
    let before = db
        .query("SELECT id::text, updated_at, status FROM documents ORDER BY id")
        .await;
    plain.signal(libc::SIGTERM);
    plain.wait_exit().await;

    // Two workers start at once: each document is queued once.
    let env = [("RAG_EMBED_URL", ep.url.as_str())];
    let _a = ingest_worker(&db, &env);
    let _b = ingest_worker(&db, &env);
    let model = ep.model();
    for id in &ids {
        let sql = format!(
            "SELECT count(*) FROM jobs WHERE document_id = '{id}' AND kind = 'embed' AND status = 'success'"
        );
        wait_count(&db, &sql, 1, "embed job done").await;
        assert_eq!(
            missing(&db, id, &model).await,
            0,
            "every old chunk has a vector"
        );
    }
    let embed_jobs = count(&db, "SELECT count(*) FROM jobs WHERE kind = 'embed'").await;
    assert_eq!(embed_jobs, 3, "one embed job per document");
    let after = db
        .query("SELECT id::text, updated_at, status FROM documents ORDER BY id")
        .await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.get::<_, String>(2), "ingested");
        let (tb, ta): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            (b.get(1), a.get(1));
        assert_eq!(tb, ta, "the backfill never touched the document's status");
    }
    // `ragctl queue` lists the embed kind.
    let out = std::process::Command::new(bin())
        .args(["queue", "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let snapshot: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let kinds: Vec<&str> = snapshot["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"embed"), "{snapshot}");
}

#[tokio::test]
async fn an_endpoint_down_at_ingest_leaves_the_vectors_to_an_embed_job() {
    let db = TestDb::new();
    let ep = Endpoint::start().await;
    ep.down.store(true, Ordering::SeqCst);
    let api = Api::start(&db, &[], &[]).await;
    let _parse = worker(&db, "parse", &FAST_RETRIES);
    let _ingest = ingest_worker(
        &db,
        &[("RAG_EMBED_URL", &ep.url), ("RAG_MAX_RETRIES", "30")],
    );
    let user = Uuid::new_v4();
    let (_, doc) = upload_bytes(&api, user, "audit.txt", long_text("audit")).await;
    let id = doc["id"].as_str().unwrap();
    wait_status(&api, user, id, "ingested").await;
    let model = ep.model();
    assert!(
        missing(&db, id, &model).await > 0,
        "no vectors while the endpoint is down"
    );
    let pending = format!(
        "SELECT count(*) FROM jobs WHERE document_id = '{id}' AND kind = 'embed' AND status IN ('queued', 'running')"
    );
    assert_eq!(
        count(&db, &pending).await,
        1,
        "the ingest queued an embed job"
    );

    ep.down.store(false, Ordering::SeqCst);
    let done = format!(
        "SELECT count(*) FROM jobs WHERE document_id = '{id}' AND kind = 'embed' AND status = 'success'"
    );
    wait_count(
        &db,
        &done,
        1,
        "the embed job succeeds once the endpoint is back",
    )
    .await;
    assert_eq!(missing(&db, id, &model).await, 0);
    let (_, now) = get_json(&api, user, &format!("/documents/{id}")).await;
    assert_eq!(now["status"], "ingested");
    assert!(ep.texts.load(Ordering::SeqCst) > 0);
}

#[test]
fn bad_embedding_flags_stop_the_start_naming_the_flag() {
    let db = "postgres://nobody@127.0.0.1:1/none";
    for cmd in [&["worker", "ingest"][..], &["serve", "--no-workers"][..]] {
        let with = |extra: &[&'static str]| -> Vec<&'static str> { [cmd, extra].concat() };
        assert_usage_error(
            &with(&["--embed-url", "not a url"]),
            &[("DATABASE_URL", db)],
            &["--embed-url", "RAG_EMBED_URL"],
        );
        assert_usage_error(
            &with(&["--embed-model", "/nonexistent/model"]),
            &[("DATABASE_URL", db)],
            &["--embed-model", "RAG_EMBED_MODEL", "/nonexistent/model"],
        );
        assert_usage_error(
            &with(&[
                "--embed-model",
                "/tmp",
                "--embed-url",
                "http://127.0.0.1:9/v1/embeddings",
            ]),
            &[("DATABASE_URL", db)],
            &["--embed-model", "--embed-url"],
        );
    }
}

/// A user's document with `texts` as its chunks and their vectors, as the
/// ingest writes them (one transaction).
async fn store(
    client: &mut deadpool_postgres::Object,
    ep: &Embedder,
    user: Uuid,
    name: &str,
    texts: &[&str],
) -> Uuid {
    let doc = Uuid::new_v4();
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let vecs = ep.embed(texts).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
         VALUES ($1, $2, $3, 'text/plain', 1, 'ingested')",
        &[&doc, &user, &name],
    )
    .await
    .unwrap();
    chunks::replace(&tx, doc, user, &owned).await.unwrap();
    vectors::put_document(&tx, doc, ep.id(), &vecs)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    doc
}

#[tokio::test]
async fn dense_search_finds_the_closest_chunk_of_the_asker_only() {
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 2, "vectors-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let ep = Endpoint::start().await;
    let embedder = ep.embedder();
    let mut client = pool.get().await.unwrap();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let texts = [
        "The boiler pressure valve is inspected every spring by the caretaker.",
        "Invoices are paid within thirty days of receipt.",
        "Holiday requests go to your manager two weeks ahead.",
    ];
    let manual = store(&mut client, &embedder, alice, "manual.txt", &texts).await;
    let question = "when is the pressure valve inspected";
    // Bob's chunk is the question itself: the closest of all, and never Alice's.
    store(&mut client, &embedder, bob, "bob.txt", &[question]).await;
    for cap in [0, 64 << 20] {
        let cache = VectorCache::new(cap);
        let hits = dense::search(&client, &cache, &embedder, alice, question, 2)
            .await
            .unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].content, texts[0], "the closest chunk first");
        assert_eq!(hits[0].document_id, manual);
        assert!(
            hits.iter().all(|h| h.filename == "manual.txt"),
            "only Alice's chunks"
        );
        assert!(hits[0].cosine.unwrap() > hits[1].cosine.unwrap());
        assert_eq!(hits[0].score, hits[0].cosine.unwrap());
        assert_eq!(hits[0].coverage, 0.0);
        let bobs = dense::search(&client, &cache, &embedder, bob, question, 5)
            .await
            .unwrap();
        assert_eq!(bobs.len(), 1);
        assert!(bobs[0].cosine.unwrap() > 0.999, "the same text");
    }

    // The cache sees the removal (the version moves); the vectors go with
    // their chunks.
    let cache = VectorCache::new(64 << 20);
    assert_eq!(
        dense::search(&client, &cache, &embedder, alice, question, 5)
            .await
            .unwrap()
            .len(),
        3
    );
    client
        .execute("DELETE FROM documents WHERE id = $1", &[&manual])
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM chunk_vectors WHERE user_id = '{alice}'")
        )
        .await,
        0,
        "removed with their chunks"
    );
    let after = dense::search(&client, &cache, &embedder, alice, question, 5)
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
}

/// Percentiles of `samples` (ms): (p50, p99).
fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Measurement, not a check (`cargo test --test vectors -- --ignored
/// --nocapture`): dense search over 10,000 chunks x 384 dims, question
/// embedding included, reading the vectors from PostgreSQL on every
/// question (cache cap 0) vs the versioned cache; and the fetch alone as
/// bytea vs real[].
#[tokio::test]
#[ignore]
async fn measure_dense_search_10k() {
    const N: usize = 10_000;
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 2, "vectors-bench").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let ep = Endpoint::start().await;
    let embedder = ep.embedder();
    let mut client = pool.get().await.unwrap();
    let user = Uuid::new_v4();
    let texts: Vec<String> = (0..N)
        .map(|i| format!("chunk {i} about topic {}", i % 97))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    store(&mut client, &embedder, user, "big.txt", &refs).await;
    let n = count(
        &db,
        &format!("SELECT count(*) FROM chunk_vectors WHERE user_id = '{user}'"),
    )
    .await;
    assert_eq!(n as usize, N);
    let question = "what about topic 42";
    for (label, cap) in [("postgres every question", 0usize), ("cache", 256 << 20)] {
        let cache = VectorCache::new(cap);
        let mut ms = vec![];
        for i in 0..105 {
            let t = Instant::now();
            let hits = dense::search(&client, &cache, &embedder, user, question, 5)
                .await
                .unwrap();
            if i >= 5 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            assert_eq!(hits.len(), 5);
        }
        let (p50, p99) = p50_p99(ms);
        println!("dense search, {label}: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    let mut ms = vec![];
    for _ in 0..100 {
        let t = Instant::now();
        embedder.embed(&[question]).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (p50, p99) = p50_p99(ms);
    println!("question embedding alone (test double over HTTP): p50 {p50:.1} ms, p99 {p99:.1} ms");
    // The same vectors as real[].
    client
        .batch_execute("CREATE TABLE vec_real (chunk_id uuid, user_id uuid, vec real[])")
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT chunk_id, vec FROM chunk_vectors WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    for r in &rows {
        let mut v = vec![];
        vectors::decode_into(r.get::<_, &[u8]>(1), DIMS, &mut v);
        let id: Uuid = r.get(0);
        client
            .execute(
                "INSERT INTO vec_real VALUES ($1, $2, $3)",
                &[&id, &user, &v],
            )
            .await
            .unwrap();
    }
    for (label, sql) in [
        (
            "bytea",
            "SELECT chunk_id, vec FROM chunk_vectors WHERE user_id = $1",
        ),
        (
            "real[]",
            "SELECT chunk_id, vec FROM vec_real WHERE user_id = $1",
        ),
    ] {
        let mut ms = vec![];
        for _ in 0..20 {
            let t = Instant::now();
            let rows = client.query(sql, &[&user]).await.unwrap();
            let mut flat: Vec<f32> = Vec::with_capacity(N * DIMS);
            for r in &rows {
                if label == "bytea" {
                    vectors::decode_into(r.get::<_, &[u8]>(1), DIMS, &mut flat);
                } else {
                    flat.extend(r.get::<_, Vec<f32>>(1));
                }
            }
            assert_eq!(flat.len(), N * DIMS);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (p50, p99) = p50_p99(ms);
        println!("fetch + decode {N} vectors as {label}: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
}
