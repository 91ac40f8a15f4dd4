//! One pass over a NOTIFY payload that validates it without building a JSON
//! tree: every API instance reads every event, and most are for users with
//! no socket there, so their check must cost as little as it can.
//!
//! Strings are borrowed from the payload where they have no escapes; nested
//! values a check does not look into are skipped, not stored. The checks and
//! their order are those of the full decode, so a payload is dropped for the
//! same reason whether or not this instance would have delivered it.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

use super::ENVELOPE_VERSION;
use super::contract::{EventType, Shape, validate_fields};
use super::drop::DropReason;

/// A string, borrowed from the input when it can be.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads any JSON value as a [`Shape`], skipping what is inside arrays and
/// objects.
struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Owned(s.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape<'de>, E> {
        Ok(Shape::Null)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Shape<'de>, E> {
        Ok(Shape::Num(Some(n)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Shape<'de>, E> {
        Ok(Shape::Num(u64::try_from(n).ok()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape<'de>, E> {
        Ok(Shape::Num(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape<'de>, E> {
        Ok(Shape::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }
}

struct AnyShape<'a>(Shape<'a>);

impl<'de> Deserialize<'de> for AnyShape<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor).map(AnyShape)
    }
}

/// An event payload: its top-level fields, or `None` if it is no object.
/// Duplicate keys: the last one counts, as in a parsed `Value`.
struct Fields<'a>(Option<Vec<(Cow<'a, str>, Shape<'a>)>>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<Shape<'a>> {
        let fields = self.0.as_ref()?;
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(8);
                while let Some(Text(k)) = map.next_key::<Text>()? {
                    let AnyShape(v) = map.next_value()?;
                    fields.push((k, v));
                }
                Ok(Fields(Some(fields)))
            }
            // Anything else is read (to stay a syntax check) and refused.
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Fields<'de>, A::Error> {
                ShapeVisitor.visit_seq(seq).map(|_| Fields(None))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Fields<'de>, E> {
                Ok(Fields(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The top-level fields the checks read; the rest is skipped.
#[derive(Default)]
struct Top<'a> {
    v: Option<Shape<'a>>,
    frag: bool,
    user_id: Option<Shape<'a>>,
    kind: Option<Shape<'a>>,
    payload: Option<Fields<'a>>,
    id: Option<Shape<'a>>,
    ts: Option<Shape<'a>>,
    origin: Option<Shape<'a>>,
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top::default();
                while let Some(Text(key)) = map.next_key::<Text>()? {
                    let slot = match key.as_ref() {
                        "payload" => {
                            top.payload = Some(map.next_value()?);
                            continue;
                        }
                        "frag" => {
                            map.next_value::<IgnoredAny>()?;
                            top.frag = true;
                            continue;
                        }
                        "v" => &mut top.v,
                        "user_id" => &mut top.user_id,
                        "type" => &mut top.kind,
                        "id" => &mut top.id,
                        "ts" => &mut top.ts,
                        "origin" => &mut top.origin,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<AnyShape>()?.0);
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

/// A payload read off the channel, checked.
#[derive(Debug)]
pub enum Scanned {
    /// A valid envelope for `user_id`; [`crate::events::decode`] builds it.
    Envelope { user_id: Uuid },
    /// A fragment of a larger envelope (its header is checked by `decode`).
    Fragment,
}

/// Checks one NOTIFY payload in one pass, in the order and with the
/// reasons of the full decode: JSON object, version, fragment or not,
/// `user_id`, `type`, `payload` against the contract, then the envelope's
/// own fields (`id`, `ts`, `origin`).
pub fn scan(payload: &str) -> Result<Scanned, DropReason> {
    let top: Top = serde_json::from_str(payload).map_err(|_| DropReason::NotJson)?;
    if top.v != Some(Shape::Num(Some(ENVELOPE_VERSION))) {
        return Err(DropReason::UnknownVersion);
    }
    if top.frag {
        return Ok(Scanned::Fragment);
    }
    let user_id = match &top.user_id {
        Some(Shape::Str(s)) => Uuid::parse_str(s).map_err(|_| DropReason::BadUserId)?,
        _ => return Err(DropReason::BadUserId),
    };
    let kind = match &top.kind {
        Some(Shape::Str(s)) => EventType::parse(s).ok_or(DropReason::UnknownType)?,
        _ => return Err(DropReason::UnknownType),
    };
    let fields = top.payload.as_ref().ok_or(DropReason::BadPayload)?;
    if fields.0.is_none() {
        return Err(DropReason::BadPayload);
    }
    validate_fields(kind, |f| fields.get(f)).map_err(|_| DropReason::BadPayload)?;
    let id_ok = matches!(&top.id, Some(Shape::Str(s)) if Uuid::parse_str(s).is_ok());
    let ts_ok = matches!(&top.ts, Some(Shape::Str(s)) if s.parse::<DateTime<Utc>>().is_ok());
    let origin_ok = matches!(&top.origin, Some(Shape::Str(_)));
    if !(id_ok && ts_ok && origin_ok) {
        return Err(DropReason::BadEnvelope);
    }
    Ok(Scanned::Envelope { user_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Envelope, malformed_variants, validate_payload};
    use serde_json::{Value, json};

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
}
