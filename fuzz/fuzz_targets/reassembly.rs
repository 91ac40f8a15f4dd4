//! Fragment reassembly: arbitrary sequences of fragments (well-formed or
//! not, for a few groups, out of order, repeated), each through `decode`
//! as the bridge reads them; and a real oversized envelope split by
//! `encode_notifications`, fed in a shuffled order, must come back whole.
#![no_main]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ragctl::events::{
    DropReason, Envelope, EventType, Reassembler, Scanned, WireMessage, decode,
    encode_notifications, scan,
};
use serde_json::json;
use uuid::Uuid;

const GROUPS: [Uuid; 3] = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];

/// One fragment payload as it would arrive on the channel.
fn junk_fragment(u: &mut Unstructured) -> Result<String> {
    let id = GROUPS[u.choose_index(GROUPS.len())?];
    let seq: u64 = if u.arbitrary()? {
        u.int_in_range(0..=4)?
    } else {
        u.arbitrary()?
    };
    let total: u64 = if u.arbitrary()? {
        u.int_in_range(0..=4)?
    } else {
        u.arbitrary()?
    };
    let bytes: Vec<u8> = u.arbitrary()?;
    let data = if u.arbitrary()? {
        B64.encode(&bytes)
    } else {
        String::from_utf8_lossy(&bytes).into()
    };
    Ok(json!({"v": 1, "frag": {"id": id, "seq": seq, "total": total}, "data": data}).to_string())
}

fn push(
    r: &mut Reassembler,
    payload: &str,
    now: Instant,
) -> Option<std::result::Result<Option<Envelope>, DropReason>> {
    let WireMessage::Fragment(f) = decode(payload).ok()? else {
        return None;
    };
    let (res, _evicted) = r.push(f, now);
    Some(res)
}

fn junk(u: &mut Unstructured) -> Result<()> {
    let max_groups = u.int_in_range(1..=4)?;
    let mut r = Reassembler::new(max_groups, Duration::from_secs(30));
    let t0 = Instant::now();
    let mut step = 0u64;
    while !u.is_empty() {
        step += u.int_in_range(0..=20)?;
        let now = t0 + Duration::from_secs(step);
        if u.ratio(1, 8)? {
            let before = r.in_flight();
            assert!(r.expire(now) <= before);
            continue;
        }
        let payload = junk_fragment(u)?;
        if let Some(Ok(Some(env))) = push(&mut r, &payload, now) {
            // Whatever comes out is an envelope the scan accepts.
            let text = serde_json::to_string(&env).expect("serialises");
            assert!(
                matches!(scan(&text), Ok(Scanned::Envelope { user_id }) if user_id == env.user_id)
            );
        }
        assert!(r.in_flight() <= max_groups);
        for g in r.groups() {
            assert!(g.fragments >= 1);
        }
    }
    Ok(())
}

/// A real envelope, over the NOTIFY limit or not, its fragments shuffled.
fn real(u: &mut Unstructured) -> Result<()> {
    let len = u.int_in_range(0..=60_000)?;
    let fill: char = u.arbitrary()?;
    let message: String = std::iter::repeat_n(fill, len / fill.len_utf8()).collect();
    let mut env = Envelope::new(
        Uuid::from_u128(7),
        EventType::DocumentStatusUpdated,
        json!({"document_id": Uuid::from_u128(8), "status": "error",
               "error_message": message, "updated_at": "2026-11-28T10:00:00Z"}),
        "fuzz",
    );
    env.id = Uuid::from_u128(9);
    let Ok(mut parts) = encode_notifications(&env) else {
        return Ok(());
    };
    if let [one] = parts.as_slice() {
        let Ok(WireMessage::Envelope(back)) = decode(one) else {
            panic!("a small envelope is one notification");
        };
        assert_eq!(*back, env);
        return Ok(());
    }
    for i in (1..parts.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        parts.swap(i, j);
    }
    let mut r = Reassembler::default();
    let now = Instant::now();
    for (i, p) in parts.iter().enumerate() {
        let res = push(&mut r, p, now).expect("every part is a fragment");
        if i + 1 < parts.len() {
            assert_eq!(res, Ok(None));
        } else {
            assert_eq!(res, Ok(Some(env.clone())));
        }
    }
    assert_eq!(r.in_flight(), 0);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.arbitrary::<bool>() {
        Ok(true) => real(&mut u),
        _ => junk(&mut u),
    };
});
