//! A socket's one task, from the upgrade to the close.
//!
//! Its future is what every idle socket keeps in memory (with 100,000
//! sockets, each 100 bytes of it is 10 MB), so: the socket and its guard
//! live in one place and the loops borrow them; the rarely taken paths
//! (catch-up, the close handshake, flushing a backlog) are boxed where they
//! are awaited; one timer serves pings, the idle timeout and the token's
//! expiry (`deadlines`); and the select yields a small `Step` that is
//! handled outside it, so no frame or error is held across an await.
//! docs/capacity-memory.md has the accounting.

use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::close::Ending;
use super::deadlines::{Deadlines, Due, expiry_instant};
use super::refresh::{Action, Inbox};
use super::resume::{self, HELD_EVENTS};
use super::stream::{Socket, flush};
use crate::api::catchups::Slot;
use crate::api::conn::WatchedIo;
use crate::api::shares::UserSlot;
use crate::api::ws_config::WsConfig;
use crate::auth::{AuthUser, Verifier};
use crate::bridge::{CloseCode, ConnGuard, ControlWriter, Hub, Outlet, Sink, unbuffered_ws_config};
use crate::bus::Interest;
use crate::events::resume::Cursor;

/// Bytes tungstenite reads from the socket at a time, and what its read
/// buffer starts with. Clients send little (pongs, an `auth.refresh` now
/// and then) and the buffer lives as long as the socket, so it is small:
/// the 4 KiB it was made half of an idle socket's cost. A larger frame
/// grows it to the frame's size (at most `max_client_frame`).
pub const READ_CHUNK: usize = 256;

/// The socket's slot of the process's WebSockets and of its user's share;
/// given back when the task ends.
pub(super) type Slots = (OwnedSemaphorePermit, UserSlot);

/// What an upgraded socket starts with besides its context.
pub(super) struct Start {
    pub(super) hub: Hub,
    /// The user's NATS subscription (`--bus nats`).
    pub(super) interest: Option<Interest>,
    /// `?since=`: boxed, as most sockets do not resume.
    pub(super) since: Option<Box<Resume>>,
    pub(super) resync: bool,
    pub(super) pool: deadpool_postgres::Pool,
}

/// Where a resuming socket catches up from, and its catch-up slot, held
/// until the catch-up ends.
pub(super) struct Resume {
    pub(super) cursor: Cursor,
    pub(super) slot: Slot,
}

/// What a socket's task works with besides the socket.
pub(super) struct SocketCtx {
    pub(super) user: AuthUser,
    pub(super) cfg: WsConfig,
    pub(super) verifier: Verifier,
    pub(super) shutdown: CancellationToken,
}

/// The task: upgrade, register, catch up (`?since=`), serve, close.
pub(super) async fn socket_task(
    on_upgrade: OnUpgrade,
    mut start: Start,
    mut ctx: SocketCtx,
    slots: Slots,
) {
    // Resolves once the 101 response has been written.
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
    };
    let Some((mut socket, conn)) = start.open(upgraded, &ctx).await else {
        return;
    };
    // Subscribed and confirmed by the server before the catch-up reads the
    // rows: an event committed after that read arrives live. Boxed: done
    // once, and only with the NATS bus.
    let held = match &start.interest {
        Some(interest) => Some(Box::pin(interest.hold(ctx.user.user_id)).await),
        None => None,
    };
    let cut = match start.since.take() {
        Some(resume) => Box::pin(catch_up(&start.pool, *resume, &conn, &ctx)).await,
        None => None,
    };
    let ending = match cut {
        Some(ending) => ending,
        None => run_socket(&mut socket, &conn.outlet, &mut ctx).await,
    };
    let reason = Box::pin(ending.finish(&mut socket, &conn.outlet, &ctx.cfg)).await;
    drop((socket, conn, slots, held));
    metrics::counter!("ragctl_ws_closed_total", "reason" => reason).increment(1);
}

impl Start {
    /// Registers the socket with the hub and wraps it for tungstenite.
    async fn open(&self, upgraded: Upgraded, ctx: &SocketCtx) -> Option<(Socket, ConnGuard)> {
        // `conn::serve` hands hyper a `TokioIo<WatchedIo<TcpStream>>`: taken
        // back, the stream splits into two `Arc` halves, without
        // `Upgraded`'s boxed stream, its read-ahead buffer or `io::split`'s
        // lock (and without the write timeout of HTTP responses).
        let Ok(parts) = upgraded.downcast::<TokioIo<WatchedIo<TcpStream>>>() else {
            tracing::error!("an upgraded connection is not a TCP stream; closing it");
            return None;
        };
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        // What the client sent right behind its upgrade request, if any,
        // copied out: `read_buf` shares hyper's 8 KiB read buffer, which
        // must not live as long as the socket.
        let early = read_buf.to_vec();
        drop(read_buf);
        let (read, write) = io.into_inner().into_inner().into_split();
        let (user, write) = (ctx.user.user_id, Sink::tcp(write));
        let conn = match self.since {
            Some(_) => self
                .hub
                .register_holding(user, self.resync, write, HELD_EVENTS),
            None => self.hub.register(user, self.resync, write),
        };
        let config = unbuffered_ws_config()
            .max_message_size(Some(ctx.cfg.max_client_frame))
            .max_frame_size(Some(ctx.cfg.max_client_frame))
            .read_buffer_size(READ_CHUNK);
        let io = tokio::io::join(read, ControlWriter::new(conn.outlet.clone(), &config));
        let socket = WebSocketStream::from_partially_read(io, early, Role::Server, Some(config));
        Some((socket.await, conn))
    }
}

/// Runs the catch-up unless the token expires first (a client that reads
/// slowly is not served past its token); what ends the socket if it does
/// not go live. Idle clients: a write that makes no progress within the
/// write timeout ends the catch-up.
async fn catch_up(
    pool: &deadpool_postgres::Pool,
    resume: Resume,
    conn: &ConnGuard,
    ctx: &SocketCtx,
) -> Option<Ending> {
    // Held until the catch-up ends, then freed.
    let Resume {
        cursor,
        slot: _slot,
    } = resume;
    let expiry = token_expiry(ctx.user.exp);
    let (user, cfg, shutdown) = (ctx.user.user_id, &ctx.cfg, &ctx.shutdown);
    let catching_up = resume::catch_up(pool, user, cursor, conn, cfg, shutdown);
    tokio::select! {
        live = catching_up => {
            // Shutdown and a slow socket are the socket loop's to close.
            let other = shutdown.is_cancelled() || conn.outlet.slow.is_cancelled();
            (!live && !other).then_some(Ending::Gone("write_failed"))
        }
        _ = tokio::time::sleep_until(expiry) => {
            metrics::counter!("ragctl_ws_catchup_cut_total", "reason" => "token_expired")
                .increment(1);
            Some(Ending::server(CloseCode::TokenExpired))
        }
    }
}

/// When a token that expires at `exp` (seconds since the epoch) does:
/// checked and capped (`deadlines::MAX_TOKEN_LIFE`).
fn token_expiry(exp: u64) -> Instant {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    expiry_instant(exp, now_ms, Instant::now())
}

/// What the timer calls for: the end, a ping, or nothing yet (the idle
/// deadline moved since it was armed). Re-arms it.
fn on_timer(d: &mut Deadlines, timer: Pin<&mut Sleep>) -> Result<Option<Message>, Ending> {
    let due = d.due(Instant::now());
    timer.reset(d.next());
    match due {
        Some(Due::Expiry) => Err(Ending::server(CloseCode::TokenExpired)),
        Some(Due::Idle) => Err(Ending::server(CloseCode::Idle)),
        Some(Due::Ping) => Ok(Some(Message::Ping(Default::default()))),
        None => Ok(None),
    }
}

/// What woke the socket loop, small enough to hold across its awaits.
enum Step {
    End(Ending),
    Timer,
    Wake,
    Heard(Action),
}

/// Serves the socket until something ends it; says what.
async fn run_socket(socket: &mut Socket, outlet: &Outlet, ctx: &mut SocketCtx) -> Ending {
    let mut inbox = Inbox::new(std::time::Instant::now());
    let exp = token_expiry(ctx.user.exp);
    let cfg = &ctx.cfg;
    // Spread over the first interval (see `deadlines`).
    let first_ping = 1.0 - rand::random::<f64>() / 2.0;
    let (ping, idle) = (cfg.ping_interval, cfg.idle_timeout);
    let mut deadlines = Deadlines::new(Instant::now(), ping, idle, exp, first_ping);
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);
    // Created once: each registers a waiter on a token shared by sockets.
    let shutting_down = ctx.shutdown.cancelled();
    tokio::pin!(shutting_down);
    let slow = outlet.slow.cancelled();
    tokio::pin!(slow);
    loop {
        let step = tokio::select! {
            biased;
            _ = &mut shutting_down => Step::End(Ending::server(CloseCode::GoingAway)),
            // The queue is full: the client missed events.
            _ = &mut slow => Step::End(Ending::slow_consumer()),
            _ = &mut timer => Step::Timer,
            _ = outlet.wake.notified() => Step::Wake,
            incoming = socket.next() => match incoming {
                // tungstenite has queued its reply (1002 for a close code
                // that is not allowed).
                Some(Ok(Message::Close(_))) => Step::End(Ending::Replied),
                // Pongs, pings (answered by the library) and data messages:
                // proof of life; only `auth.refresh` means anything.
                Some(Ok(msg)) => {
                    deadlines.heard(Instant::now());
                    let now = std::time::Instant::now();
                    Step::Heard(inbox.on_message(&msg, now, &ctx.verifier, &ctx.user))
                }
                Some(Err(e)) => Step::End(Ending::from_error(&e)),
                None => Step::End(Ending::Gone("client_closed")),
            },
        };
        let frame = match step {
            Step::End(ending) => return ending,
            Step::Timer => match on_timer(&mut deadlines, timer.as_mut()) {
                Err(ending) => return ending,
                Ok(Some(ping)) => ping,
                Ok(None) => continue,
            },
            Step::Wake => {
                // Boxed: a backlog is rare, and its future is not small.
                let flushing = flush(outlet, &ctx.shutdown, ctx.cfg.write_timeout);
                if !Box::pin(flushing).await {
                    return Ending::Gone("write_failed");
                }
                continue;
            }
            Step::Heard(Action::Ignore) => continue,
            Step::Heard(Action::Close(ending)) => return ending,
            Step::Heard(Action::Refreshed(user, frame)) => {
                ctx.user = user;
                deadlines.expire_at(token_expiry(user.exp));
                timer.as_mut().reset(deadlines.next());
                Message::Text(frame.into())
            }
        };
        // Never waits: the frame goes into the outlet.
        if socket.send(frame).await.is_err() {
            return Ending::Gone("write_failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn of three arguments returns.
    fn future_size<F, A, B, C, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn task_size<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The socket task's future is what an idle socket costs most; this
    /// keeps it from growing back unnoticed (a cold path left unboxed,
    /// a frame held across an await). The bound holds in debug builds,
    /// whose futures are the larger.
    #[test]
    fn an_idle_sockets_task_stays_small() {
        let task = task_size(socket_task);
        let serving = future_size(run_socket);
        eprintln!("socket task {task} bytes, of which the loop {serving}");
        assert!(serving < task, "the loop is part of the task");
        assert!(task <= 1536, "the socket task's future is {task} bytes");
    }
}
