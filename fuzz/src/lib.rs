//! Helpers shared by the fuzz targets: a runtime for the async parsers and
//! the reference decode the envelope scan is checked against.

use std::cell::RefCell;
use std::future::Future;

use ragctl::events::{DropReason, ENVELOPE_VERSION, Envelope, EventType, validate_payload};
use serde_json::Value;
use uuid::Uuid;

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime"),
    );
}

/// Runs `fut` to completion on one current-thread runtime per thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| rt.borrow().block_on(fut))
}

/// The decode that parses a whole `Value` tree first: the reference the
/// one-pass scan must agree with, reason for reason (a copy of the one in
/// src/events/scan.rs's tests). `Ok(None)` is a fragment.
pub fn tree_check(payload: &str) -> Result<Option<Uuid>, DropReason> {
    let value: Value = serde_json::from_str(payload).map_err(|_| DropReason::NotJson)?;
    let obj = value.as_object().ok_or(DropReason::NotJson)?;
    if obj.get("v").and_then(Value::as_u64) != Some(ENVELOPE_VERSION) {
        return Err(DropReason::UnknownVersion);
    }
    if obj.contains_key("frag") {
        return Ok(None);
    }
    let user = obj
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(DropReason::BadUserId)?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .and_then(EventType::parse)
        .ok_or(DropReason::UnknownType)?;
    let payload = obj.get("payload").ok_or(DropReason::BadPayload)?;
    validate_payload(kind, payload).map_err(|_| DropReason::BadPayload)?;
    serde_json::from_value::<Envelope>(value).map_err(|_| DropReason::BadEnvelope)?;
    Ok(Some(user))
}
