//! The PDF inflate budget. Any bytes as a FlateDecode stream (deflated up
//! to three times over): the measure never passes its cap, and an unfiltered
//! stream measures its length. Any bytes as a PDF file: loading and the
//! budget check do not panic, and the check is monotone in its limit (what
//! fits a budget fits every larger one).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pdf_extract::{Dictionary, Document, Object, Stream};
use ragctl::rag::pdf_budget::{check, inflated_len};

fn stream(u: &mut Unstructured) -> Result<()> {
    let layers = u.int_in_range(0..=3)?;
    let cap = u.int_in_range(0..=1u64 << 22)?;
    let mut dict = Dictionary::new();
    if layers == 1 {
        dict.set("Filter", "FlateDecode");
    } else if layers > 1 {
        let names = (0..layers)
            .map(|_| Object::from("FlateDecode"))
            .collect::<Vec<_>>();
        dict.set("Filter", names);
    }
    let content = u.bytes(u.len())?.to_vec();
    let len = content.len() as u64;
    let s = Stream::new(dict, content);
    let measured = inflated_len(&s, cap);
    if layers == 0 {
        assert_eq!(measured, len);
    } else {
        assert!(measured <= cap, "{measured} inflated past the cap {cap}");
    }
    Ok(())
}

fn file(u: &mut Unstructured) -> Result<()> {
    let limit = u.int_in_range(0..=1u64 << 24)?;
    let Ok(doc) = Document::load_mem(u.bytes(u.len())?) else {
        return Ok(());
    };
    if check(&doc, limit).is_ok() {
        assert!(
            check(&doc, limit.saturating_mul(2)).is_ok(),
            "not monotone at {limit}"
        );
    } else {
        assert!(check(&doc, limit / 2).is_err(), "not monotone at {limit}");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.arbitrary::<bool>() {
        Ok(true) => file(&mut u),
        _ => stream(&mut u),
    };
});
