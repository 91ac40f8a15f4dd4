//! The event contract and its wire form.
//!
//! Only this module knows the NOTIFY envelope: how an event is encoded for
//! `pg_notify`, how oversized envelopes are split into fragments, and how a
//! payload read off the channel is validated. Everything else speaks in
//! [`Envelope`] and [`Frame`] values.

mod contract;
mod drop;
mod kind;
pub mod ops;
mod payloads;
#[cfg(test)]
mod payloads_tests;
mod publish;
mod publish_error;
pub mod resume;
mod scan;
#[cfg(test)]
mod scan_tests;
mod wire;

pub use contract::{
    ContractError, ENVELOPE_VERSION, EventType, Field, Shape, validate_fields, validate_payload,
};
pub use payloads::{
    DocumentCreated, DocumentStatusUpdated, JobStatusUpdated, MessageCreated, MessageStatusUpdated,
    Outgoing, Payload,
};
pub use publish::{LocalDelivery, Publisher};
pub use publish_error::PublishError;
pub use scan::{Scanned, scan};
#[cfg(test)]
pub(crate) use wire::malformed_variants;
pub use wire::{
    DropReason, Envelope, FRAGMENT_CHUNK_BYTES, Frame, GroupProgress, MAX_ENVELOPE_BYTES,
    MAX_NOTIFY_BYTES, Reassembler, WireMessage, decode, encode_notifications, envelope,
};

/// Default NOTIFY channel for events.
pub const DEFAULT_CHANNEL: &str = "rag_events";
