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
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

use super::contract::{ENVELOPE_VERSION, EventType, Shape, validate_fields};
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
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Shape::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Shape::Other)
    }
}

/// A value read and dropped. Not serde's `IgnoredAny`: serde_json skips
/// that without the checks a parsed `Value` makes (a lone surrogate escape,
/// a number out of range, nesting past 128), so the scan accepted payloads
/// the decode refuses as `not_json` (found writing fuzz/envelope_scan).
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor).map(|_| Skip)
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
                            map.next_value::<Skip>()?;
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
                            map.next_value::<Skip>()?;
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
