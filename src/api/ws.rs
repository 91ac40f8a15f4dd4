//! `GET /ws`: the Phase 5 realtime contract. Every frame is exactly
//! `{"type", "payload"}`; nothing tells whether it came from the API or a
//! worker. Messages from clients are ignored apart from control frames.
//!
//! Close codes: 1001 server shutting down, 4001 token expired, 4002 peer
//! silent past the idle timeout, 4008 slow consumer (its queue overflowed;
//! resync through REST before reconnecting).

use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::auth::AuthUser;
use crate::bridge::{CLOSE_SLOW_CONSUMER, Outbound};

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
    let protocols: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(pos) = protocols
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))
    {
        return (protocols.get(pos + 1).map(|t| t.to_string()), true);
    }
    (None, false)
}

pub async fn handler(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
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
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
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
    let mut upgrade = upgrade
        .max_message_size(cfg.max_client_frame)
        .max_frame_size(cfg.max_client_frame)
        .read_buffer_size(4096)
        .write_buffer_size(0);
    if via_protocol {
        upgrade = upgrade.protocols(["bearer"]);
    }
    let tracker = state.sockets.clone();
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(async move {
            let conn = hub.register(user.user_id, resync);
            serve_socket(socket, conn, user, cfg, state.shutdown.clone()).await;
            drop(permit);
        })
    })
}

/// Sends one message, giving up when the socket is marked slow, the server
/// shuts down, or the write takes too long.
async fn send(
    socket: &mut WebSocket,
    msg: Message,
    slow: &CancellationToken,
    timeout: Duration,
) -> bool {
    tokio::select! {
        r = socket.send(msg) => r.is_ok(),
        _ = slow.cancelled() => false,
        _ = tokio::time::sleep(timeout) => false,
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
}

async fn serve_socket(
    mut socket: WebSocket,
    mut conn: crate::bridge::ConnGuard,
    user: AuthUser,
    cfg: WsConfig,
    shutdown: CancellationToken,
) {
    let latency = metrics::histogram!("ragctl_bridge_delivery_seconds");
    let expires_in = Duration::from_secs(
        user.exp
            .saturating_sub(chrono::Utc::now().timestamp().max(0) as u64),
    );
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let never = CancellationToken::new();
    let reason = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut socket, CLOSE_GOING_AWAY, "server shutting down").await;
                break "shutdown";
            }
            _ = conn.slow.cancelled() => {
                // The queue is full: the client missed events. Best effort
                // close; the socket may be too clogged to take even that.
                close(&mut socket, CLOSE_SLOW_CONSUMER, "slow consumer: resync via REST").await;
                break "slow_consumer";
            }
            _ = &mut expiry => {
                close(&mut socket, CLOSE_TOKEN_EXPIRED, "token expired").await;
                break "token_expired";
            }
            out = conn.rx.recv() => {
                let Some(out) = out else { break "shutdown" };
                let (text, ts) = match out {
                    Outbound::Frame { text, ts } => (text, Some(ts)),
                    Outbound::Resync(text) => (text, None),
                };
                if !send(&mut socket, Message::Text(text), &conn.slow, cfg.write_timeout).await {
                    break "write_failed";
                }
                if let Some(ts) = ts {
                    let lag = (chrono::Utc::now() - ts).num_microseconds().unwrap_or(0).max(0);
                    latency.record(lag as f64 / 1e6);
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break "client_closed",
                // Pongs, pings (answered by the library) and anything else a
                // client sends: proof of life, content ignored.
                Some(Ok(_)) => last_seen = Instant::now(),
            },
            _ = ping.tick() => {
                if last_seen.elapsed() > cfg.idle_timeout {
                    close(&mut socket, CLOSE_IDLE, "no pong within the idle timeout").await;
                    break "idle";
                }
                if !send(&mut socket, Message::Ping(Default::default()), &never, cfg.write_timeout).await {
                    break "write_failed";
                }
            }
        }
    };
    metrics::counter!("ragctl_ws_closed_total", "reason" => reason).increment(1);
}
