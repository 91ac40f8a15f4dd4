//! The payload structs against the contract: a sibling, not a child of
//! `payloads.rs`, since `contract` imports `payloads`.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::contract::validate_payload;
use super::kind::EventType;
use super::payloads::*;
use crate::db::chat::Message;
use crate::db::documents::Document;
use crate::db::jobs::Job;
use crate::db::status::{DocumentStatus, JobKind, JobStatus, MessageRole, MessageStatus};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 123_456_000)
        .unwrap()
}

fn document(error: Option<&str>) -> Document {
    Document {
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        filename: "a.pdf".into(),
        mime_type: "application/pdf".into(),
        size_bytes: 42,
        status: DocumentStatus::Error,
        error_message: error.map(str::to_string),
        created_at: at(0),
        updated_at: at(1),
    }
}

fn job() -> Job {
    Job {
        id: Uuid::new_v4(),
        document_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        kind: JobKind::Ingest,
        status: JobStatus::Failed,
        retry_count: 3,
        max_retries: 3,
        error_message: Some("boom".into()),
        run_after: at(2),
        created_at: at(0),
        updated_at: at(3),
    }
}

fn message() -> Message {
    Message {
        id: Uuid::new_v4(),
        conversation_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        role: MessageRole::Assistant,
        content: "answer".into(),
        status: MessageStatus::Completed,
        sources: json!([{"document_id": Uuid::nil(), "chunk_index": 0}]),
        error_message: None,
        created_at: at(0),
        updated_at: at(4),
    }
}

/// The keys a payload serialises are its required fields plus `extra`,
/// and the payload passes the contract.
fn check<P: Payload>(p: &P, extra: &[&str]) -> Value {
    let out = Outgoing::new(Uuid::new_v4(), p);
    let mut keys: Vec<&str> = out
        .payload
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut expected: Vec<&str> = P::FIELDS
        .iter()
        .map(|(n, _)| *n)
        .chain(extra.iter().copied())
        .collect();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{}", P::TYPE);
    assert_eq!(out.kind, P::TYPE);
    validate_payload(P::TYPE, &out.payload).unwrap();
    out.payload
}

/// Byte for byte what the hand-written `json!` payloads sent before the
/// structs: same keys, same value formats (RFC 3339 with microseconds and
/// `Z`, nulls kept).
#[test]
fn payloads_match_the_wire_form() {
    for error in [None, Some("bad xref")] {
        let d = document(error);
        let created = check(&DocumentCreated::from(&d), &[]);
        let before = json!({
            "document_id": d.id, "filename": d.filename, "mime_type": d.mime_type,
            "size_bytes": d.size_bytes, "status": "error", "created_at": d.created_at,
        });
        assert_eq!(created.to_string(), before.to_string());
        let status = check(&DocumentStatusUpdated::from(&d), &[]);
        let before = json!({
            "document_id": d.id, "status": "error", "error_message": d.error_message,
            "updated_at": d.updated_at,
        });
        assert_eq!(status.to_string(), before.to_string());
    }
    let j = job();
    let before = json!({
        "job_id": j.id, "document_id": j.document_id, "kind": "ingest", "status": "failed",
        "retry_count": 3, "error_message": "boom", "updated_at": j.updated_at,
    });
    assert_eq!(
        check(&JobStatusUpdated::from(&j), &[]).to_string(),
        before.to_string()
    );
    assert!(before["updated_at"].as_str().unwrap().ends_with(".123456Z"));
    let m = message();
    let before = json!({
        "message_id": m.id, "conversation_id": m.conversation_id, "role": "assistant",
        "content": "answer", "status": "completed", "created_at": m.created_at,
    });
    assert_eq!(
        check(&MessageCreated::from(&m), &[]).to_string(),
        before.to_string()
    );
    let before = json!({
        "message_id": m.id, "conversation_id": m.conversation_id, "status": "completed",
        "content": "answer", "sources": m.sources, "updated_at": m.updated_at,
    });
    let updated = check(&MessageStatusUpdated::from(&m), &["sources"]);
    assert_eq!(updated.to_string(), before.to_string());
}

/// Every event type has exactly one payload struct.
#[test]
fn every_type_has_its_payload() {
    let types = [
        DocumentCreated::TYPE,
        DocumentStatusUpdated::TYPE,
        JobStatusUpdated::TYPE,
        MessageCreated::TYPE,
        MessageStatusUpdated::TYPE,
    ];
    assert_eq!(types, EventType::ALL);
}
