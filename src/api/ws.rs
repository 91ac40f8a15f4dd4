//! `GET /ws`: the Phase 5 realtime contract. Every frame is exactly
//! `{"type", "payload"}`; nothing tells whether it came from the API or a
//! worker. Messages from clients are ignored apart from control frames.
//!
//! Close codes: 1001 server shutting down, 4001 token expired, 4002 peer
//! silent past the idle timeout, 4008 slow consumer (its queue overflowed;
//! resync through REST before reconnecting).
//!
//! The upgrade is done here rather than through axum's `WebSocketUpgrade`
//! because the bridge needs the socket's raw write half: the router writes
//! event frames into it directly (see `bridge::Outlet`). tungstenite still
//! reads the client's frames and writes the protocol's own (pong, ping,
//! close), which go through the same outlet so that frames never
//! interleave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{Join, ReadHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::auth::AuthUser;
use crate::bridge::{CLOSE_SLOW_CONSUMER, ConnGuard, ControlWriter, Outlet};

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4002;

#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Bound of each socket's outbound queue.
    pub queue: usize,
    pub ping_interval: Duration,
    /// A peer silent (no pong, no frame) this long is dropped.
    pub idle_timeout: Duration,
    /// A write that takes longer than this drops the socket.
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// Largest frame a client may send (clients only send control frames).
    pub max_client_frame: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            queue: 256,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            max_client_frame: 4096,
        }
    }
}

#[derive(Deserialize, Default)]
pub struct WsQuery {
    token: Option<String>,
    resync: Option<String>,
}

/// The token from `?token=`, `Authorization: Bearer`, or the
/// `Sec-WebSocket-Protocol` header (`bearer, <jwt>`), for browsers.
fn token<'a>(query: &'a WsQuery, headers: &'a HeaderMap) -> (Option<String>, bool) {
    if let Some(t) = query.token.as_deref().filter(|t| !t.is_empty()) {
        return (Some(t.to_string()), false);
    }
    if let Some(t) = super::bearer(headers) {
        return (Some(t.to_string()), false);
    }
    let protocols: Vec<&str> = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).collect();
    if let Some(pos) = protocols
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))
    {
        return (protocols.get(pos + 1).map(|t| t.to_string()), true);
    }
    (None, false)
}

/// A valid WebSocket upgrade request (RFC 6455 section 4.2.1, over
/// HTTP/1.1). Its rejection is a 400 in the API's error shape.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// The comma-separated, trimmed tokens of every `name` header.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.version > Version::HTTP_11 {
            return Err(ApiError::bad_request(
                "WebSocket upgrades are served over HTTP/1.1 only",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(ApiError::bad_request(
                "`Connection` header did not include `upgrade`",
            ));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(ApiError::bad_request(
                "`Upgrade` header did not include `websocket`",
            ));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(ApiError::bad_request(
                "`Sec-WebSocket-Version` header is not `13`",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| ApiError::bad_request("`Sec-WebSocket-Key` header is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

pub async fn handler(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<Upgrade, ApiError>,
) -> Response {
    let Query(query) = query.unwrap_or_default();
    let (token, via_protocol) = token(&query, &headers);
    let user: AuthUser = match state.verifier.verify(token.as_deref().unwrap_or("")) {
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
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = state.ws_permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this server holds its maximum of WebSocket connections",
        )
        .into_response();
    };
    let resync = matches!(query.resync.as_deref(), Some("1" | "true" | "yes"));
    let cfg = state.ws.clone();
    let Upgrade { key, on_upgrade } = upgrade;
    let shutdown = state.shutdown.clone();
    let socket = state.sockets.track_future(async move {
        // Resolves once the 101 response below has been written.
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let conn = hub.register(user.user_id, resync, Box::pin(write));
        let io = tokio::io::join(read, ControlWriter(conn.outlet.clone()));
        let config = WebSocketConfig::default()
            .max_message_size(Some(cfg.max_client_frame))
            .max_frame_size(Some(cfg.max_client_frame))
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve_socket(ws, conn, user, cfg, shutdown).await;
        drop(permit);
    });
    tokio::spawn(socket);
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a header value"),
    );
    if via_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer"),
        );
    }
    response
}

/// What tungstenite reads from (the socket's read half) and writes to (the
/// outlet, for the protocol's own frames).
type Socket = WebSocketStream<Join<ReadHalf<TokioIo<Upgraded>>, ControlWriter>>;

/// Writes what is queued in the outlet, giving up when the socket is marked
/// slow, the server shuts down, or no flush completes within `timeout`.
async fn flush(outlet: &Outlet, shutdown: &CancellationToken, timeout: Duration) -> bool {
    tokio::select! {
        r = tokio::time::timeout(timeout, outlet.flush()) => matches!(r, Ok(Ok(()))),
        // Both are handled by the socket loop, which closes the socket.
        _ = outlet.slow.cancelled() => true,
        _ = shutdown.cancelled() => true,
    }
}

/// Sends a close frame behind what is queued (or, with `discard`, behind
/// only a partly written frame) and waits a moment for it to leave.
async fn close(
    socket: &mut Socket,
    outlet: &Outlet,
    code: u16,
    reason: &'static str,
    discard: bool,
) {
    outlet.close(discard);
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }));
    // Never waits: the frame goes into the outlet.
    let _ = socket.send(frame).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), outlet.flush()).await;
}

async fn serve_socket(
    mut socket: Socket,
    conn: ConnGuard,
    user: AuthUser,
    cfg: WsConfig,
    shutdown: CancellationToken,
) {
    let outlet: Arc<Outlet> = conn.outlet.clone();
    let expires_in = Duration::from_secs(
        user.exp
            .saturating_sub(chrono::Utc::now().timestamp().max(0) as u64),
    );
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.tick().await;
    let mut last_seen = Instant::now();
    // Created once: each registers a waiter on a token shared by sockets.
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let slow = outlet.slow.cancelled();
    tokio::pin!(slow);
    let reason = loop {
        tokio::select! {
            biased;
            _ = &mut shutting_down => {
                close(&mut socket, &outlet, CLOSE_GOING_AWAY, "server shutting down", false).await;
                break "shutdown";
            }
            _ = &mut slow => {
                // The queue is full: the client missed events. Best effort
                // close; the socket may be too clogged to take even that.
                close(&mut socket, &outlet, CLOSE_SLOW_CONSUMER, "slow consumer: resync via REST", true).await;
                break "slow_consumer";
            }
            _ = &mut expiry => {
                close(&mut socket, &outlet, CLOSE_TOKEN_EXPIRED, "token expired", false).await;
                break "token_expired";
            }
            _ = outlet.wake.notified() => {
                if !flush(&outlet, &shutdown, cfg.write_timeout).await {
                    break "write_failed";
                }
            }
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_))) => {
                    // tungstenite has queued its reply; let it leave.
                    let _ = socket.flush().await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), outlet.flush()).await;
                    break "client_closed";
                }
                None | Some(Err(_)) => break "client_closed",
                // Pongs, pings (answered by the library) and anything else a
                // client sends: proof of life, content ignored.
                Some(Ok(_)) => last_seen = Instant::now(),
            },
            _ = ping.tick() => {
                if last_seen.elapsed() > cfg.idle_timeout {
                    close(&mut socket, &outlet, CLOSE_IDLE, "no pong within the idle timeout", false).await;
                    break "idle";
                }
                // Never waits: the frame goes into the outlet.
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break "write_failed";
                }
            }
        }
    };
    drop(conn);
    metrics::counter!("ragctl_ws_closed_total", "reason" => reason).increment(1);
}
