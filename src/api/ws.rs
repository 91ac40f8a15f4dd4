//! `GET /ws`: the Phase 5 realtime contract. Every frame is exactly
//! `{"type", "payload"}`; nothing tells whether it came from the API or a
//! worker. Messages from clients are ignored apart from control frames.
//!
//! A client may send `auth.refresh` with a new token of the same user,
//! which moves the socket's expiry (see `refresh`); its other data
//! messages are ignored, within a size and rate bound.
//!
//! Close codes (`bridge::CloseCode`, the one list): 1001 server shutting
//! down, 4001 token expired, 4002 peer silent past the idle timeout, 4003 /
//! 4004 an `auth.refresh` token that is invalid / another user's, 4008 slow
//! consumer (its queue overflowed; resync through REST before
//! reconnecting), and RFC 6455's 1002, 1007, 1009 and 1011 for a client
//! that breaks the protocol (see `close`).
//!
//! `?since=<cursor>` resumes: the socket catches up on what changed since
//! the cursor before it goes live (see `resume`), within the token's
//! expiry, and within the caps on concurrent catch-ups (`catchups`).
//!
//! The upgrade is done here rather than through axum's `WebSocketUpgrade`
//! because the bridge needs the socket's raw write half: the router writes
//! event frames into it directly (see `bridge::Outlet`). tungstenite still
//! reads the client's frames and writes the protocol's own (pong, ping,
//! close), which go through the same outlet so that frames never
//! interleave.

mod close;
mod deadlines;
mod handshake;
mod refresh;
mod resume;
mod socket;
mod stream;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use super::catchups::Catchups;
use super::error::ApiError;
use super::state::AppState;
pub use super::ws_config::WsConfig;
use crate::auth::AuthUser;
use crate::events::resume::Cursor;
pub use close::Ending;
pub use handshake::{Credentials, Upgrade, credentials};
pub use refresh::{Action, Inbox};
pub use socket::READ_CHUNK;
use socket::{Resume, SocketCtx, Start};

#[derive(Deserialize, Default)]
pub struct WsQuery {
    token: Option<String>,
    resync: Option<String>,
    since: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<Upgrade, handshake::Rejection>,
) -> Response {
    let Query(query) = query.unwrap_or_default();
    let creds = credentials(query.token.as_deref(), &headers);
    let user: AuthUser = match state.verifier.verify(creds.token.as_deref().unwrap_or("")) {
        Ok(u) => u,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(hub) = state.hub.clone() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "realtime_disabled",
            "realtime is disabled on this server (--no-realtime); use REST",
        )
        .into_response();
    };
    let since = match query
        .since
        .as_deref()
        .map(|s| Cursor::parse(s, chrono::Utc::now()))
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", e.to_string())
                .into_response();
        }
    };
    // The caps come before the upgrade's own checks, so that a plain GET
    // (realtime.js probes with one after a failed handshake) learns of them.
    let slots = match take_slots(&state, &user) {
        Ok(slots) => slots,
        Err(e) => return e.into_response(),
    };
    let since = match since.map(|c| (c, state.ws.catchups.try_acquire(user.user_id))) {
        None => None,
        Some((cursor, Ok(slot))) => Some(Box::new(Resume { cursor, slot })),
        Some((_, Err(refused))) => return refused.into_error().into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // A resuming client reads `realtime.*` frames already: it is told of
    // gaps the bridge cannot heal without asking twice.
    let resync = matches!(query.resync.as_deref(), Some("1" | "true" | "yes")) || since.is_some();
    let Upgrade { key, on_upgrade } = upgrade;
    let ctx = SocketCtx {
        user,
        cfg: state.ws.clone(),
        verifier: state.verifier.clone(),
        shutdown: state.shutdown.clone(),
    };
    let start = Start {
        hub,
        interest: state.bridge.as_ref().and_then(|b| b.interest.clone()),
        since,
        resync,
        pool: state.pool.clone(),
    };
    let socket = state
        .sockets
        .track_future(socket::socket_task(on_upgrade, start, ctx, slots));
    tokio::spawn(socket);
    switching_protocols(&key, creds.protocol.as_deref())
}

/// The socket's slot of its user's share (checked first: a user at their
/// cap is told so even when the process is full), then of the process's.
fn take_slots(state: &AppState, user: &AuthUser) -> Result<socket::Slots, ApiError> {
    let per_user = &state.limits.ws_per_user;
    let mine = per_user
        .try_take(user.user_id)
        .ok_or_else(|| super::shares::too_many_sockets(per_user.cap()))?;
    let Ok(permit) = state.ws_slots.permits.clone().try_acquire_owned() else {
        metrics::counter!("ragctl_ws_refused_total", "reason" => "server_full").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this server holds its maximum of WebSocket connections",
        )
        .retry_after(super::shares::RETRY_AFTER_SECS));
    };
    Ok((permit, mine))
}

/// The 101 response; `protocol` is echoed byte for byte.
fn switching_protocols(key: &HeaderValue, protocol: Option<&str>) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a header value"),
    );
    // It came from a header value, so it is one.
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
}
