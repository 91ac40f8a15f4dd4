//! The upload path of `POST /documents` up to the database: axum's
//! multipart extractor over an arbitrary body (in arbitrary chunks, with an
//! arbitrary boundary and `Content-Length`), then `read_file` with a real
//! upload budget. The handler's next step needs PostgreSQL, so it stops at
//! the file read and the MIME detection, which are pure.
//!
//! Checks: the file never exceeds the limit, the budget held never exceeds
//! the limit and always covers the file, it is all given back, refusals are
//! 4xx or 503, and the kept filename is a clean last path component.
#![no_main]

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart};
use axum::http::{HeaderMap, Request, header};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ragctl::api::limits::UploadBudget;
use ragctl::api::read_file;
use ragctl::rag::extract::detect_mime;
use uuid::Uuid;

struct Case {
    boundary: String,
    content_length: Option<String>,
    limit: usize,
    budget: (usize, usize, usize),
    chunks: Vec<Vec<u8>>,
}

fn case(u: &mut Unstructured) -> Result<Case> {
    let boundary = if u.arbitrary()? {
        "XyZ".to_string()
    } else {
        u.arbitrary()?
    };
    let content_length = match u.int_in_range(0..=2)? {
        0 => None,
        1 => Some("actual".to_string()),
        _ => Some(u.arbitrary::<u32>()?.to_string()),
    };
    let limit = u.int_in_range(0..=200_000)?;
    let budget = (
        u.int_in_range(0..=1 << 20)?,
        u.int_in_range(0..=1 << 20)?,
        u.int_in_range(0..=1 << 16)?,
    );
    let body = u.bytes(u.len())?;
    // Cut points from the body's own bytes keep the split deterministic.
    let step = 1 + body.first().copied().unwrap_or(0) as usize * 7;
    let chunks = body.chunks(step).map(<[u8]>::to_vec).collect();
    Ok(Case {
        boundary,
        content_length,
        limit,
        budget,
        chunks,
    })
}

fn request(c: &Case) -> Option<Request<Body>> {
    let len: usize = c.chunks.iter().map(Vec::len).sum();
    let mut b = Request::builder().method("POST").uri("/documents").header(
        header::CONTENT_TYPE,
        format!("multipart/form-data; boundary={}", c.boundary),
    );
    match c.content_length.as_deref() {
        Some("actual") => b = b.header(header::CONTENT_LENGTH, len),
        Some(n) => b = b.header(header::CONTENT_LENGTH, n),
        None => {}
    }
    let chunks = c
        .chunks
        .clone()
        .into_iter()
        .map(|v| Ok::<_, Infallible>(Bytes::from(v)));
    b.body(Body::from_stream(futures_util::stream::iter(chunks)))
        .ok()
}

fn clean_name(name: &str) {
    assert!(!name.is_empty());
    assert!(name.chars().count() <= 255, "{name:?}");
    assert!(!name.contains(['/', '\\']), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
}

async fn run(c: Case) {
    let Some(req) = request(&c) else { return };
    let headers: HeaderMap = req.headers().clone();
    let Ok(mut multipart) = Multipart::from_request(req, &()).await else {
        return; // no usable boundary: refused before any byte is read
    };
    let (total, per_user, floor) = c.budget;
    let budget = UploadBudget::new(total, per_user, floor);
    let mut reservation = budget.reserve(Uuid::from_u128(1));
    let read = read_file(&mut multipart, &headers, &mut reservation, c.limit).await;
    assert!(
        budget.in_flight() <= c.limit,
        "held {} over limit {}",
        budget.in_flight(),
        c.limit
    );
    match read {
        Ok((name, declared, bytes)) => {
            assert!(bytes.len() <= c.limit);
            assert!(
                bytes.len() <= budget.in_flight(),
                "the budget must cover the file"
            );
            clean_name(&name);
            let _ = detect_mime(&name, declared.as_deref(), &bytes);
        }
        Err(e) => {
            let s = e.status.as_u16();
            assert!(
                (400..500).contains(&s) || s == 503,
                "status {s}: {}",
                e.message
            );
        }
    }
    drop(reservation);
    assert_eq!(budget.in_flight(), 0, "the budget is given back");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = case(&mut Unstructured::new(data)) {
        ragctl_fuzz::block_on(run(c));
    }
});
