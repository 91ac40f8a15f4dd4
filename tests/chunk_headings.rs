//! Headings travel with their chunks (issue #19): a Markdown and an HTML
//! document, parsed and ingested by real workers, get chunks whose first
//! line is the section's heading path, also when a section is split.

mod common;

use common::*;
use uuid::Uuid;

/// Small chunks, so that each section is split in several.
const SMALL_CHUNKS: [(&str, &str); 4] = [
    ("RAG_RETRY_BACKOFF_MS", "50"),
    ("RAG_WORKER_POLL_MS", "200"),
    ("RAG_CHUNK_SIZE", "120"),
    ("RAG_CHUNK_OVERLAP", "20"),
];

async fn chunks_of(db: &TestDb, id: &str) -> Vec<String> {
    db.query(&format!(
        "SELECT content FROM chunks WHERE document_id = '{id}' ORDER BY chunk_index"
    ))
    .await
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

#[tokio::test]
async fn every_chunk_starts_with_its_heading_path() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _p = worker(&db, "parse", &SMALL_CHUNKS);
    let _i = worker(&db, "ingest", &SMALL_CHUNKS);
    let user = Uuid::new_v4();
    for (file, top, sub) in [
        (
            "handbook.md",
            "Employee Handbook: Time Off",
            "Requesting leave",
        ),
        (
            "handbook.html",
            "Employee Handbook: Office Access",
            "Lost badges",
        ),
    ] {
        let doc = upload(&api, user, file).await;
        let id = doc["id"].as_str().unwrap();
        wait_status(&api, user, id, "ingested").await;
        let chunks = chunks_of(&db, id).await;
        let sub_path = format!("{top} › {sub}\n");
        for c in &chunks {
            assert!(
                c.starts_with(top),
                "{file}: chunk without its heading path: {c:?}"
            );
            assert!(c.chars().count() <= 120, "{file}: {c:?}");
            assert!(!c.contains('#'), "{file}: heading marks left in {c:?}");
        }
        let in_sub = chunks.iter().filter(|c| c.starts_with(&sub_path)).count();
        assert!(
            in_sub >= 2,
            "{file}: the long section is not split with its path: {chunks:#?}"
        );
    }
}
