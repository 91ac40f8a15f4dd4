//! The five event types of the Phase 5 contract and how a payload field is
//! checked: the names `contract` and `payloads` share. A leaf.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "document.created")]
    DocumentCreated,
    #[serde(rename = "document.status_updated")]
    DocumentStatusUpdated,
    #[serde(rename = "job.status_updated")]
    JobStatusUpdated,
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "message.status_updated")]
    MessageStatusUpdated,
}

/// How a field of a payload is checked.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Uuid,
    Text,
    OptText,
    Count,
    Time,
    OneOf(&'static [&'static str]),
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::DocumentCreated,
        EventType::DocumentStatusUpdated,
        EventType::JobStatusUpdated,
        EventType::MessageCreated,
        EventType::MessageStatusUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DocumentCreated => "document.created",
            EventType::DocumentStatusUpdated => "document.status_updated",
            EventType::JobStatusUpdated => "job.status_updated",
            EventType::MessageCreated => "message.created",
            EventType::MessageStatusUpdated => "message.status_updated",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
