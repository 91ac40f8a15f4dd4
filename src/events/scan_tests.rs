//! The scan checked against the decode that parsed a whole `Value` tree:
//! a sibling, not a child of `scan.rs`, since it needs `wire`'s `Envelope`
//! and `wire` imports `scan`.

use serde_json::{Value, json};
use uuid::Uuid;

use super::contract::{ENVELOPE_VERSION, EventType, validate_payload};
use super::drop::DropReason;
use super::scan::{Scanned, scan};
use super::wire::{Envelope, malformed_variants};

/// The decode that parsed a whole `Value` tree first (before the scan):
/// the reference the scan must agree with, reason for reason.
fn tree_check(payload: &str) -> Result<Option<Uuid>, DropReason> {
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

fn scanned(payload: &str) -> Result<Option<Uuid>, DropReason> {
    scan(payload).map(|s| match s {
        Scanned::Envelope { user_id } => Some(user_id),
        Scanned::Fragment => None,
    })
}

fn good(user: Uuid) -> Value {
    let env = Envelope::new(
        user,
        EventType::JobStatusUpdated,
        json!({"job_id": Uuid::new_v4(), "document_id": Uuid::new_v4(), "kind": "parse",
               "status": "failed", "retry_count": 3, "error_message": null,
               "updated_at": "2026-11-28T10:00:00Z", "extra": {"nested": [1, {"a": 2}]}}),
        "test",
    );
    serde_json::to_value(env).unwrap()
}

#[test]
fn malformed_envelopes_are_refused_with_the_reasons_of_the_tree_decode() {
    let user = Uuid::new_v4();
    let good = good(user);
    assert_eq!(scanned(&good.to_string()), Ok(Some(user)));
    for (payload, reason) in malformed_variants(&good, Uuid::new_v4()) {
        let want = if reason == DropReason::BadFragment {
            Ok(None) // the fragment header is checked by decode
        } else {
            Err(reason)
        };
        assert_eq!(scanned(&payload), want, "{payload}");
        assert_eq!(tree_check(&payload), want, "{payload}");
    }
}

/// Each field of a valid envelope, and of its payload, removed or set to
/// each kind of JSON value: the scan and the tree decode agree.
#[test]
fn every_field_mutation_gets_the_same_verdict() {
    let good = good(Uuid::new_v4());
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(1),
        json!(1.5),
        json!(""),
        json!("x"),
        json!([1]),
        json!({"a": 1}),
        json!(Uuid::new_v4()),
        json!("2026-11-28T10:00:00Z"),
        json!("parse"),
        json!("failed"),
    ];
    let mut cases = vec![];
    let top: Vec<String> = good.as_object().unwrap().keys().cloned().collect();
    let inner: Vec<String> = good["payload"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for k in &top {
        let mut g = good.clone();
        g.as_object_mut().unwrap().remove(k);
        cases.push(g);
        for v in &values {
            let mut g = good.clone();
            g[k] = v.clone();
            cases.push(g);
        }
    }
    for k in &inner {
        let mut g = good.clone();
        g["payload"].as_object_mut().unwrap().remove(k);
        cases.push(g);
        for v in &values {
            let mut g = good.clone();
            g["payload"][k] = v.clone();
            cases.push(g);
        }
    }
    for v in &values {
        cases.push(v.clone()); // not an object at all
    }
    for case in cases {
        let text = case.to_string();
        assert_eq!(scanned(&text), tree_check(&text), "{text}");
    }
}

#[test]
fn escapes_trailing_bytes_and_repeated_keys_read_as_a_parsed_value_does() {
    let user = Uuid::new_v4();
    let good = good(user).to_string();
    // An escaped key and an escaped value.
    let escaped = good.replacen("\"user_id\"", "\"user\\u005fid\"", 1);
    let escaped = escaped.replacen("\"test\"", "\"t\\u0065st\"", 1);
    for text in [
        escaped,
        format!("{good} x"),
        format!("{{\"v\":2,{}", &good[1..]), // a later "v" wins
        format!("{{\"v\":1,\"type\":\"document.deleted\",{}", &good[1..]),
        "[1,2]".to_string(),
        String::new(),
    ] {
        assert_eq!(scanned(&text), tree_check(&text), "{text}");
    }
}

/// Regression (found writing fuzz/envelope_scan): values the scan skips (an
/// unknown key, `frag`, inside the payload's arrays and objects) are still
/// checked as a parsed `Value` checks them. as a parsed `Value` checks them.
#[test]
fn skipped_values_are_refused_where_a_parsed_value_is() {
    let good = good(Uuid::new_v4()).to_string();
    let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
    for bad in [r#""\ud800""#, "1e999", "-1e999", &deep] {
        for text in [
            format!("{{\"x\":{bad},{}", &good[1..]),
            good.replacen("\"payload\":{", &format!("\"payload\":{{\"x\":[{bad}],"), 1),
            format!("{{\"v\":1,\"frag\":{bad}}}"),
        ] {
            assert_eq!(scanned(&text), Err(DropReason::NotJson), "{text}");
            assert_eq!(tree_check(&text), Err(DropReason::NotJson), "{text}");
        }
    }
}
