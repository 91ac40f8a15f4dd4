//! The five event payloads, one `Serialize` struct each, built from the
//! row the event announces. Each struct carries the contract of its type
//! next to it: the required fields and how each is checked
//! ([`Payload::FIELDS`]); `contract.rs` reads them from here, and a test
//! checks them against the keys the struct serialises.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::kind::{EventType, Field};
use crate::db::chat::Message;
use crate::db::documents::Document;
use crate::db::jobs::Job;
use crate::db::status::{DocumentStatus, JobKind, JobStatus, MessageRole, MessageStatus};

/// An event payload: its type and the fields the contract requires.
pub trait Payload: Serialize {
    const TYPE: EventType;
    /// Required fields, in contract order. Extra keys are allowed.
    const FIELDS: &'static [(&'static str, Field)];
}

/// One event ready to publish: whom it is for, its type, its payload.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub user_id: Uuid,
    pub kind: EventType,
    pub payload: Value,
}

impl Outgoing {
    pub fn new<P: Payload>(user_id: Uuid, payload: &P) -> Outgoing {
        Outgoing {
            user_id,
            kind: P::TYPE,
            // Cannot fail: the structs hold strings, numbers, UUIDs,
            // timestamps and JSON values, and no map with non-string keys.
            payload: serde_json::to_value(payload).expect("payload structs serialise"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DocumentCreated<'a> {
    pub document_id: Uuid,
    pub filename: &'a str,
    pub mime_type: &'a str,
    pub size_bytes: i64,
    pub status: DocumentStatus,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Document> for DocumentCreated<'a> {
    fn from(d: &'a Document) -> Self {
        DocumentCreated {
            document_id: d.id,
            filename: &d.filename,
            mime_type: &d.mime_type,
            size_bytes: d.size_bytes,
            status: d.status,
            created_at: d.created_at,
        }
    }
}

impl Payload for DocumentCreated<'_> {
    const TYPE: EventType = EventType::DocumentCreated;
    const FIELDS: &'static [(&'static str, Field)] = &[
        ("document_id", Field::Uuid),
        ("filename", Field::Text),
        ("mime_type", Field::Text),
        ("size_bytes", Field::Count),
        ("status", Field::OneOf(DocumentStatus::NAMES)),
        ("created_at", Field::Time),
    ];
}

#[derive(Debug, Serialize)]
pub struct DocumentStatusUpdated<'a> {
    pub document_id: Uuid,
    pub status: DocumentStatus,
    pub error_message: Option<&'a str>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Document> for DocumentStatusUpdated<'a> {
    fn from(d: &'a Document) -> Self {
        DocumentStatusUpdated {
            document_id: d.id,
            status: d.status,
            error_message: d.error_message.as_deref(),
            updated_at: d.updated_at,
        }
    }
}

impl Payload for DocumentStatusUpdated<'_> {
    const TYPE: EventType = EventType::DocumentStatusUpdated;
    const FIELDS: &'static [(&'static str, Field)] = &[
        ("document_id", Field::Uuid),
        ("status", Field::OneOf(DocumentStatus::NAMES)),
        ("error_message", Field::OptText),
        ("updated_at", Field::Time),
    ];
}

#[derive(Debug, Serialize)]
pub struct JobStatusUpdated<'a> {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub retry_count: i32,
    pub error_message: Option<&'a str>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Job> for JobStatusUpdated<'a> {
    fn from(j: &'a Job) -> Self {
        JobStatusUpdated {
            job_id: j.id,
            document_id: j.document_id,
            kind: j.kind,
            status: j.status,
            retry_count: j.retry_count,
            error_message: j.error_message.as_deref(),
            updated_at: j.updated_at,
        }
    }
}

impl Payload for JobStatusUpdated<'_> {
    const TYPE: EventType = EventType::JobStatusUpdated;
    const FIELDS: &'static [(&'static str, Field)] = &[
        ("job_id", Field::Uuid),
        ("document_id", Field::Uuid),
        ("kind", Field::OneOf(JobKind::NAMES)),
        ("status", Field::OneOf(JobStatus::NAMES)),
        ("retry_count", Field::Count),
        ("error_message", Field::OptText),
        ("updated_at", Field::Time),
    ];
}

#[derive(Debug, Serialize)]
pub struct MessageCreated<'a> {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub role: MessageRole,
    pub content: &'a str,
    pub status: MessageStatus,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Message> for MessageCreated<'a> {
    fn from(m: &'a Message) -> Self {
        MessageCreated {
            message_id: m.id,
            conversation_id: m.conversation_id,
            role: m.role,
            content: &m.content,
            status: m.status,
            created_at: m.created_at,
        }
    }
}

impl Payload for MessageCreated<'_> {
    const TYPE: EventType = EventType::MessageCreated;
    const FIELDS: &'static [(&'static str, Field)] = &[
        ("message_id", Field::Uuid),
        ("conversation_id", Field::Uuid),
        ("role", Field::OneOf(MessageRole::NAMES)),
        ("content", Field::Text),
        ("status", Field::OneOf(MessageStatus::NAMES)),
        ("created_at", Field::Time),
    ];
}

/// Also carries the answer's `sources`, beyond what the contract requires.
#[derive(Debug, Serialize)]
pub struct MessageStatusUpdated<'a> {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub status: MessageStatus,
    pub content: &'a str,
    pub sources: &'a Value,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Message> for MessageStatusUpdated<'a> {
    fn from(m: &'a Message) -> Self {
        MessageStatusUpdated {
            message_id: m.id,
            conversation_id: m.conversation_id,
            status: m.status,
            content: &m.content,
            sources: &m.sources,
            updated_at: m.updated_at,
        }
    }
}

impl Payload for MessageStatusUpdated<'_> {
    const TYPE: EventType = EventType::MessageStatusUpdated;
    const FIELDS: &'static [(&'static str, Field)] = &[
        ("message_id", Field::Uuid),
        ("conversation_id", Field::Uuid),
        ("status", Field::OneOf(MessageStatus::NAMES)),
        ("content", Field::Text),
        ("updated_at", Field::Time),
    ];
}
