//! The HTML depth guard: bounded by its limit, and consistent across
//! limits (a lower limit gives the same depth, capped one past it), so the
//! verdict "deeper than the limit" never depends on where counting stopped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragctl::rag::html_depth::html_depth;

/// Deeper than any input of the fuzzer's sizes can nest.
const UNBOUNDED: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limit = usize::from(first) * 4;
    let html = String::from_utf8_lossy(rest);
    let capped = html_depth(&html, limit);
    assert!(capped <= limit + 1, "depth {capped} past limit {limit}");
    let full = html_depth(&html, UNBOUNDED);
    assert_eq!(capped, full.min(limit + 1), "limit {limit}, {html:?}");
});
