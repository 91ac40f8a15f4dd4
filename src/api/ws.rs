//! `GET /ws`: the Phase 5 realtime contract. Every frame is exactly
//! `{"type", "payload"}`; nothing tells whether it came from the API or a
//! worker. Messages from clients are ignored apart from control frames.
//!
//! A client may send `auth.refresh` with a new token of the same user,
//! which moves the socket's expiry (see `refresh`); its other data
//! messages are ignored, within a size and rate bound.
//!
//! Close codes: 1001 server shutting down, 4001 token expired, 4002 peer
//! silent past the idle timeout, 4003 / 4004 an `auth.refresh` token that
//! is invalid / another user's, 4008 slow consumer (its queue overflowed;
//! resync through REST before reconnecting), and RFC 6455's 1002, 1007 and
//! 1009 for a client that breaks the protocol (see `close`).
//!
//! `?since=<cursor>` resumes: the socket catches up on what changed since
//! the cursor before it goes live (see `resume`).
//!
//! The upgrade is done here rather than through axum's `WebSocketUpgrade`
//! because the bridge needs the socket's raw write half: the router writes
//! event frames into it directly (see `bridge::Outlet`). tungstenite still
//! reads the client's frames and writes the protocol's own (pong, ping,
//! close), which go through the same outlet so that frames never
//! interleave.

mod close;
mod handshake;
mod refresh;
mod resume;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{Join, ReadHalf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::auth::{AuthUser, Verifier};
use crate::bridge::{CLOSE_SLOW_CONSUMER, ConnGuard, ControlWriter, Outlet};
use crate::events::resume::Cursor;
use close::Ending;
pub use handshake::{Credentials, Upgrade, credentials};
use refresh::{Action, Inbox};
pub use refresh::{CLOSE_REFRESH_INVALID, CLOSE_REFRESH_OTHER_USER};
use resume::HELD_EVENTS;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4002;

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub ping_interval: Duration,
    /// A peer that sends nothing (no pong, no frame) this long is closed
    /// with 4002.
    pub idle_timeout: Duration,
    /// A write that takes longer than this drops the socket.
    pub write_timeout: Duration,
    /// Largest frame or message a client may send (`auth.refresh` is the
    /// only message it means anything to send).
    pub max_client_frame: usize,
    /// Most state frames a resuming socket (`?since=`) is sent before
    /// `realtime.resync` replaces the rest.
    pub max_catchup: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_client_frame: 4096,
            max_catchup: 10_000,
        }
    }
}

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
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let Ok(permit) = state.ws_slots.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this server holds its maximum of WebSocket connections",
        )
        .into_response();
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
    let pool = state.pool.clone();
    let socket = state.sockets.track_future(async move {
        // Resolves once the 101 response below has been written.
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let start = Start {
            hub,
            since,
            resync,
            pool,
        };
        start.run(upgraded, ctx).await;
        drop(permit);
    });
    tokio::spawn(socket);
    switching_protocols(&key, creds.protocol.as_deref())
}

/// What an upgraded socket starts with besides its context.
struct Start {
    hub: crate::bridge::Hub,
    since: Option<Cursor>,
    resync: bool,
    pool: deadpool_postgres::Pool,
}

impl Start {
    /// Registers the socket with the hub, catches up (`?since=`), serves it.
    async fn run(self, upgraded: Upgraded, ctx: SocketCtx) {
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let (user, hub) = (ctx.user.user_id, &self.hub);
        let conn = match self.since {
            Some(_) => hub.register_holding(user, self.resync, Box::pin(write), HELD_EVENTS),
            None => hub.register(user, self.resync, Box::pin(write)),
        };
        let io = tokio::io::join(read, ControlWriter(conn.outlet.clone()));
        let config = WebSocketConfig::default()
            .max_message_size(Some(ctx.cfg.max_client_frame))
            .max_frame_size(Some(ctx.cfg.max_client_frame))
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        if let Some(since) = self.since {
            resume::catch_up(&self.pool, user, since, &conn, &ctx.cfg, &ctx.shutdown).await;
        }
        serve_socket(ws, conn, ctx).await;
    }
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

/// When a token that expires at `exp` (seconds since the epoch) does.
fn expiry_instant(exp: u64) -> Instant {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    Instant::now() + Duration::from_secs(exp.saturating_sub(now))
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

/// What a socket's task works with besides the socket.
struct SocketCtx {
    user: AuthUser,
    cfg: WsConfig,
    verifier: Verifier,
    shutdown: CancellationToken,
}

async fn serve_socket(mut socket: Socket, conn: ConnGuard, mut ctx: SocketCtx) {
    let outlet: Arc<Outlet> = conn.outlet.clone();
    let ending = run_socket(&mut socket, &outlet, &mut ctx).await;
    let reason = ending.finish(&mut socket, &outlet, &ctx.cfg).await;
    drop(conn);
    metrics::counter!("ragctl_ws_closed_total", "reason" => reason).increment(1);
}

/// Serves the socket until something ends it; says what.
async fn run_socket(socket: &mut Socket, outlet: &Outlet, ctx: &mut SocketCtx) -> Ending {
    let (cfg, shutdown) = (&ctx.cfg, &ctx.shutdown);
    // Moved by every `auth.refresh`.
    let expiry = tokio::time::sleep_until(expiry_instant(ctx.user.exp));
    tokio::pin!(expiry);
    let mut inbox = Inbox::new(std::time::Instant::now());
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.tick().await;
    // Pushed back by every frame from the client.
    let idle = tokio::time::sleep(cfg.idle_timeout);
    tokio::pin!(idle);
    // Created once: each registers a waiter on a token shared by sockets.
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let slow = outlet.slow.cancelled();
    tokio::pin!(slow);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutting_down => return Ending::server(CLOSE_GOING_AWAY, "server shutting down", "shutdown"),
            // The queue is full: the client missed events.
            _ = &mut slow => return Ending::slow(CLOSE_SLOW_CONSUMER, "slow consumer: resync via REST"),
            _ = &mut expiry => return Ending::server(CLOSE_TOKEN_EXPIRED, "token expired", "token_expired"),
            _ = &mut idle => return Ending::server(CLOSE_IDLE, "nothing from the client within the idle timeout", "idle"),
            _ = outlet.wake.notified() => {
                if !flush(outlet, shutdown, cfg.write_timeout).await {
                    return Ending::Gone("write_failed");
                }
            }
            incoming = socket.next() => match incoming {
                // tungstenite has queued its reply (1002 for a close code
                // that is not allowed).
                Some(Ok(Message::Close(_))) => return Ending::Replied,
                // Pongs, pings (answered by the library) and data messages:
                // proof of life; only `auth.refresh` means anything.
                Some(Ok(msg)) => {
                    idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                    match inbox.on_message(&msg, std::time::Instant::now(), &ctx.verifier, &ctx.user) {
                        Action::Ignore => {}
                        Action::Close(ending) => return ending,
                        Action::Refreshed(user, frame) => {
                            ctx.user = user;
                            expiry.as_mut().reset(expiry_instant(user.exp));
                            // Never waits: the frame goes into the outlet.
                            if socket.send(Message::Text(frame.into())).await.is_err() {
                                return Ending::Gone("write_failed");
                            }
                        }
                    }
                }
                Some(Err(e)) => return Ending::from_error(&e),
                None => return Ending::Gone("client_closed"),
            },
            _ = ping.tick() => {
                // Never waits: the frame goes into the outlet.
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return Ending::Gone("write_failed");
                }
            }
        }
    }
}
