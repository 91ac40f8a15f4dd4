//! The `/ws` handshake: token extraction from the query, `Authorization`
//! and the subprotocols, and the upgrade checks, over arbitrary headers.
#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Version, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ragctl::api::ws::{Upgrade, credentials};

/// Header names the checks read, and one they do not.
const NAMES: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::AUTHORIZATION,
];

fn headers(u: &mut Unstructured) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    while !u.is_empty() {
        let name = NAMES[u.choose_index(NAMES.len())?].clone();
        let raw: &[u8] = u.arbitrary()?;
        if let Ok(value) = HeaderValue::from_bytes(raw) {
            map.append(name, value);
        }
    }
    Ok(map)
}

fn check_credentials(query: Option<&str>, map: &HeaderMap) {
    let c = credentials(query, map);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        assert_eq!(c.token.as_deref(), Some(q), "the query token wins");
    }
    if let Some(p) = &c.protocol {
        assert!(p.eq_ignore_ascii_case("bearer"), "selected {p:?}");
        let offered = map
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim() == p));
        assert!(offered, "{p:?} is spelled as offered");
    }
}

/// The upgrade extractor, polled once: it awaits nothing.
fn check_upgrade(map: HeaderMap, version: Version) {
    let mut req = Request::builder()
        .version(version)
        .body(())
        .expect("request");
    *req.headers_mut() = map.clone();
    let (mut parts, ()) = req.into_parts();
    let fut = pin!(Upgrade::from_request_parts(&mut parts, &()));
    let Poll::Ready(res) = fut.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("the upgrade check awaited something");
    };
    // No connection to take over here, so it is always refused.
    let Err(rejection) = res else {
        panic!("upgraded without a connection")
    };
    let response = rejection.into_response();
    let status = response.status().as_u16();
    assert!(status == 400 || status == 426, "status {status}");
    if status == 426 {
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        assert_ne!(map[header::SEC_WEBSOCKET_VERSION], "13");
    }
}

/// Whether every header check passes (then only the missing connection
/// refuses the upgrade), judged independently of the product.
fn acceptable(map: &HeaderMap, version: Version) -> bool {
    let has = |name: HeaderName, token: &str| {
        map.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    version <= Version::HTTP_11
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && map
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && map
            .get(header::SEC_WEBSOCKET_KEY)
            .is_some_and(|k| B64.decode(k.as_bytes()).is_ok_and(|n| n.len() == 16))
}

fn run(u: &mut Unstructured) -> Result<()> {
    let query: Option<&str> = u.arbitrary()?;
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][u.choose_index(3)?];
    let map = headers(u)?;
    check_credentials(query, &map);
    let ok = acceptable(&map, version);
    let mut req = Request::builder()
        .version(version)
        .body(())
        .expect("request");
    *req.headers_mut() = map.clone();
    let (mut parts, ()) = req.into_parts();
    let fut = pin!(Upgrade::from_request_parts(&mut parts, &()));
    if let Poll::Ready(Err(r)) = fut.poll(&mut Context::from_waker(Waker::noop())) {
        let cannot = r.0.message.contains("cannot be upgraded");
        assert_eq!(
            cannot, ok,
            "verdict on {map:?} {version:?}: {}",
            r.0.message
        );
    }
    check_upgrade(map, version);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
