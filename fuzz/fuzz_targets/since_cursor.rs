//! The `since` cursor of `/ws?since=`: any text either parses to a time not
//! past now plus the skew, or is refused; a parsed cursor's opaque form
//! parses back to the same microsecond; and every time the server can
//! encode round-trips.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use ragctl::events::resume::{CLOCK_SKEW, Cursor, CursorError};

fuzz_target!(|data: &[u8]| {
    let now = DateTime::from_timestamp(1_795_000_000, 0).expect("a fixed now");
    if let Ok(text) = std::str::from_utf8(data) {
        match Cursor::parse(text, now) {
            Ok(c) => {
                assert!(c.0 <= now + CLOCK_SKEW);
                let back = Cursor::parse(&c.encode(), now).expect("its own cursor parses");
                assert_eq!(back.0.timestamp_micros(), c.0.timestamp_micros());
            }
            Err(CursorError::Future(at)) => assert!(at > now + CLOCK_SKEW),
            Err(_) => {}
        }
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(&data[..data.len().min(8)]) {
        let micros = i64::from_be_bytes(bytes);
        if let Some(at) = DateTime::<Utc>::from_timestamp_micros(micros) {
            let c = Cursor(at);
            match Cursor::parse(&c.encode(), now) {
                Ok(back) => assert_eq!(back, c),
                Err(e) => assert_eq!(e, CursorError::Future(at)),
            }
        }
    }
});
