//! A deploy replaces the binary under running processes: the parse worker
//! keeps parsing, because its parser child runs the worker's own image
//! (`/proc/self/exe`), not whatever is now at the path it started from.

mod common;

use common::*;
use uuid::Uuid;

#[tokio::test]
async fn the_parse_worker_keeps_parsing_after_its_binary_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("ragctl");
    std::fs::copy(bin(), &exe).unwrap();
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let _parse = Proc::spawn_exe(
        &exe,
        "worker parse",
        &db.url,
        &["worker", "parse"],
        &FAST_RETRIES,
        |_| {},
    );
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let first = upload(&api, user, "handbook.txt").await;
    wait_status(&api, user, first["id"].as_str().unwrap(), "ingested").await;

    // As a deploy does: the file at the path goes away (here, replaced by
    // something that is not ragctl at all).
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, b"#!/bin/sh\nexit 99\n").unwrap();
    let second = upload(&api, user, "handbook.html").await;
    let doc = wait_status(&api, user, second["id"].as_str().unwrap(), "ingested").await;
    assert_eq!(doc["error_message"], serde_json::Value::Null);
}
