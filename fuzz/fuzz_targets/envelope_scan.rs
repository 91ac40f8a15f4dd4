//! The one-pass NOTIFY scan against the tree decode: the same verdict and
//! the same drop reason for any payload; and `decode` (scan, then the
//! struct) never contradicts either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragctl::events::{DropReason, Scanned, WireMessage, decode, scan};
use ragctl_fuzz::tree_check;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return; // NOTIFY payloads are text
    };
    let scanned = scan(payload).map(|s| match s {
        Scanned::Envelope { user_id } => Some(user_id),
        Scanned::Fragment => None,
    });
    let reference = tree_check(payload);
    assert_eq!(
        scanned, reference,
        "scan and tree decode disagree on {payload:?}"
    );
    match (decode(payload), scanned) {
        (Err(r), Err(s)) => assert_eq!(r, s),
        (Err(r), Ok(None)) => assert_eq!(r, DropReason::BadFragment),
        // The struct refuses a key given twice, which the scan lets through.
        (Err(r), Ok(Some(_))) => assert_eq!(r, DropReason::BadEnvelope),
        (Ok(WireMessage::Fragment(_)), s) => assert_eq!(s, Ok(None)),
        (Ok(WireMessage::Envelope(env)), s) => assert_eq!(s, Ok(Some(env.user_id))),
    }
});
