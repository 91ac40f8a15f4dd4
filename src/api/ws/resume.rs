//! Resume on connect (`/ws?since=<cursor>`): the socket is registered
//! holding (so no live event is missed), then gets the current state of
//! every row of its user changed at or after the cursor, oldest first, then
//! the held live events that add something, then
//! `realtime.caught_up {cursor, count}`, then the live stream. More than
//! `max_catchup` state frames end in `realtime.resync` instead.

use std::time::Instant;

use bytes::BytesMut;
use chrono::Utc;
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{WsConfig, flush};
use crate::bridge::{ConnGuard, Held, Outlet, Step, put_text_frame};
use crate::db::changes::{self, Changes};
use crate::events::resume::{Cursor, Sent, catch_up_states};

/// Live events held per socket while it catches up; past this the held
/// events are dropped (counted) and the client gets `realtime.resync`.
pub const HELD_EVENTS: usize = 4096;

/// Frames written to the socket per chunk during a catch-up.
const CHUNK_FRAMES: usize = 64;

fn control_text(kind: &str, payload: Value) -> String {
    json!({ "type": kind, "payload": payload }).to_string()
}

fn resync_text(reason: &str) -> String {
    control_text("realtime.resync", json!({ "reason": reason }))
}

/// Writes `texts` as frames, a chunk at a time, waiting for each chunk
/// that the kernel did not take at once (the queue never overflows).
/// `false` if the socket is gone or the server shuts down.
async fn send(
    outlet: &Outlet,
    texts: &[String],
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) -> bool {
    for group in texts.chunks(CHUNK_FRAMES) {
        let mut bytes = BytesMut::new();
        for t in group {
            put_text_frame(&mut bytes, t);
        }
        let mut chunk = crate::bridge::Chunk::control(bytes.freeze());
        chunk.frames = group.len();
        match outlet.push(&chunk) {
            crate::bridge::Pushed::Written => {}
            crate::bridge::Pushed::Queued => {
                if !flush(outlet, shutdown, cfg.write_timeout).await {
                    return false;
                }
            }
            _ => return false,
        }
        if shutdown.is_cancelled() || outlet.slow.is_cancelled() {
            return false;
        }
    }
    true
}

/// Runs the catch-up of a socket registered holding; on return the socket
/// is live (or gone).
pub async fn catch_up(
    pool: &Pool,
    user: Uuid,
    since: Cursor,
    conn: &ConnGuard,
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) {
    let started = Instant::now();
    metrics::counter!("ragctl_ws_catchups_total").increment(1);
    let outlet = &conn.outlet;
    let max = cfg.max_catchup;
    let outcome = match query(pool, user, since, max).await {
        Ok(changes) => send_state(outlet, &changes, since, max, cfg, shutdown).await,
        Err(e) => {
            tracing::warn!(error = %e, "catch-up query failed; the client is told to resync");
            metrics::counter!("ragctl_ws_catchup_failures_total").increment(1);
            Some((Sent::default(), None, Some(resync_text("catchup_failed"))))
        }
    };
    metrics::histogram!("ragctl_ws_catchup_seconds").record(started.elapsed().as_secs_f64());
    if let Some((sent, caught_up, resync)) = outcome {
        release(conn, sent, caught_up, resync, cfg, shutdown).await;
    }
}

async fn query(pool: &Pool, user: Uuid, since: Cursor, max: usize) -> anyhow::Result<Changes> {
    let mut client = pool.get().await?;
    // One more row per table than fits tells an overflow.
    Ok(changes::since(&mut client, user, since.0, max as i64 + 1).await?)
}

/// What was sent, the `caught_up` frame, or the resync that replaces it.
type Outcome = Option<(Sent, Option<String>, Option<String>)>;

async fn send_state(
    outlet: &Outlet,
    changes: &Changes,
    since: Cursor,
    max: usize,
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) -> Outcome {
    let frames = catch_up_states(changes, since.0);
    let overflow = frames.len() > max;
    let frames = &frames[..frames.len().min(max)];
    let mut sent = Sent::default();
    for f in frames {
        sent.note(f.key, f.at);
    }
    let texts: Vec<String> = frames.iter().map(|f| f.text()).collect();
    if !send(outlet, &texts, cfg, shutdown).await {
        return None;
    }
    metrics::counter!("ragctl_ws_catchup_rows_total").increment(frames.len() as u64);
    if overflow {
        metrics::counter!("ragctl_ws_catchup_overflow_total", "reason" => "rows").increment(1);
        return Some((sent, None, Some(resync_text("catchup_overflow"))));
    }
    let cursor = changes.cursor.map(|c| Cursor(c.min(Utc::now())).encode());
    let done = control_text(
        "realtime.caught_up",
        json!({ "cursor": cursor, "count": frames.len() }),
    );
    Some((sent, Some(done), None))
}

/// Sends `resync` if any, then the held live events that add to what was
/// sent (an overflow of the hold becomes one resync), then `caught_up`
/// unless the catch-up itself ended in a resync, and switches to live.
async fn release(
    conn: &ConnGuard,
    sent: Sent,
    caught_up: Option<String>,
    resync: Option<String>,
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) {
    let Some(hold) = &conn.hold else { return };
    let outlet = &conn.outlet;
    let mut resynced = resync.is_some();
    if let Some(r) = resync
        && !send(outlet, &[r], cfg, shutdown).await
    {
        return;
    }
    let last = caught_up.filter(|_| !resynced);
    loop {
        let step = hold.release(CHUNK_FRAMES, || {
            if let Some(text) = &last {
                let mut bytes = BytesMut::new();
                put_text_frame(&mut bytes, text);
                outlet.push(&crate::bridge::Chunk::control(bytes.freeze()));
            }
        });
        let texts: Vec<String> = match step {
            Step::Live => return,
            Step::Overflowed if resynced => continue,
            Step::Overflowed => {
                resynced = true;
                vec![resync_text("catchup_overflow")]
            }
            Step::Items(items) => items
                .into_iter()
                .filter_map(|item| match item {
                    Held::Event(env) if !sent.covers(&env) => Some(env.frame_text()),
                    Held::Event(_) => None,
                    Held::Resync(reason) => Some(resync_text(&reason)),
                })
                .collect(),
        };
        if !send(outlet, &texts, cfg, shutdown).await {
            return;
        }
    }
}
