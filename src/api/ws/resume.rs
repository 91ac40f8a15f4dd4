//! Resume on connect (`/ws?since=<cursor>`): the socket is registered
//! holding (so no live event is missed), then gets the current state of
//! every row of its user changed at or after the cursor (documents, then
//! jobs, then messages, each oldest first), then the held live events that
//! add something, then `realtime.caught_up {cursor, count}`, then the live
//! stream. More than `max_catchup` state frames end in `realtime.resync`.
//!
//! Rows are read a page at a time (`db::changes::page`), and a page is
//! read only once the previous one is in the kernel: what a catch-up holds
//! is one page of rows and their frames, whatever the user's history
//! (docs/events.md states the bound). Message content in catch-up frames is
//! cut to `CONTENT_CHARS` (`content_truncated: true`); REST has it whole.

use std::collections::HashSet;
use std::time::Instant;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stream::flush;
use crate::api::ws_config::WsConfig;
use crate::bridge::{ConnGuard, Held, Outlet, Step, put_text_frame};
use crate::db::changes::{self, Changes, PageKey, Table};
use crate::events::resume::{Cursor, Sent, State, catch_up_states};

/// Live events held per socket while it catches up; past this the held
/// events are dropped (counted) and the client gets `realtime.resync`.
pub const HELD_EVENTS: usize = 4096;

/// Frames written to the socket per chunk during a catch-up.
const CHUNK_FRAMES: usize = 64;

/// Rows read per query: a page is at most 2 frames a row. Messages carry
/// up to `CONTENT_CHARS` of text, documents and jobs a few hundred bytes.
pub fn page_rows(table: Table) -> i64 {
    match table {
        Table::Messages => 32,
        Table::Documents | Table::Jobs => 256,
    }
}

/// Characters of a message's `content` a catch-up frame carries (6 bytes
/// each at most in JSON): a page's frames stay under ~1.6 MB.
pub const CONTENT_CHARS: usize = 4096;

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
/// is live, unless it returned `false` (the socket is gone, slow, or the
/// server shuts down).
pub async fn catch_up(
    pool: &Pool,
    user: Uuid,
    since: Cursor,
    conn: &ConnGuard,
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) -> bool {
    let started = Instant::now();
    metrics::counter!("ragctl_ws_catchups_total").increment(1);
    let mut sent = Sent::default();
    let pages = Pages {
        pool,
        user,
        since: since.0,
        outlet: &conn.outlet,
        cfg,
        shutdown,
    };
    let end = match pages.send_all(&mut sent).await {
        Ok(Paged::Gone) => return false,
        Ok(Paged::Done { cursor, count }) => {
            let cursor = Cursor(cursor.min(Utc::now())).encode();
            let done = json!({ "cursor": cursor, "count": count });
            End::CaughtUp(control_text("realtime.caught_up", done))
        }
        Ok(Paged::Overflow) => {
            metrics::counter!("ragctl_ws_catchup_overflow_total", "reason" => "rows").increment(1);
            End::Resync(resync_text("catchup_overflow"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "catch-up query failed; the client is told to resync");
            metrics::counter!("ragctl_ws_catchup_failures_total").increment(1);
            End::Resync(resync_text("catchup_failed"))
        }
    };
    metrics::histogram!("ragctl_ws_catchup_seconds").record(started.elapsed().as_secs_f64());
    release(conn, sent, end, cfg, shutdown).await
}

/// How the state frames ended.
enum Paged {
    Done { cursor: DateTime<Utc>, count: usize },
    Overflow,
    Gone,
}

/// What a page left to do.
enum PageEnd {
    /// A full page: the next one starts after this key.
    Next(PageKey),
    TableDone,
    Overflow,
    Gone,
}

/// How the catch-up ends once the held events are out.
enum End {
    CaughtUp(String),
    Resync(String),
}

/// One catch-up's reads and writes.
struct Pages<'a> {
    pool: &'a Pool,
    user: Uuid,
    since: DateTime<Utc>,
    outlet: &'a Outlet,
    cfg: &'a WsConfig,
    shutdown: &'a CancellationToken,
}

impl Pages<'_> {
    /// Sends every table's pages, noting what went out in `sent`.
    async fn send_all(&self, sent: &mut Sent) -> anyhow::Result<Paged> {
        // Read before the first page: see `db::changes`.
        let horizon = changes::horizon(&*self.pool.get().await?).await?;
        let mut count = 0;
        for table in Table::ALL {
            let mut after = None;
            loop {
                match self.send_page(table, after, sent, &mut count).await? {
                    PageEnd::Next(last) => after = Some(last),
                    PageEnd::TableDone => break,
                    PageEnd::Overflow => return Ok(Paged::Overflow),
                    PageEnd::Gone => return Ok(Paged::Gone),
                }
            }
        }
        let cursor = horizon.at;
        Ok(Paged::Done { cursor, count })
    }

    /// Reads the page after `after` and sends its states, once the
    /// previous page is in the kernel (`send` returned).
    async fn send_page(
        &self,
        table: Table,
        after: Option<PageKey>,
        sent: &mut Sent,
        count: &mut usize,
    ) -> anyhow::Result<PageEnd> {
        let (page, last) = self.read(table, after).await?;
        let full = page.rows() as i64 == page_rows(table);
        let states = states(page, self.since);
        let room = self.cfg.max_catchup - *count;
        let overflow = states.len() > room;
        let states = &states[..states.len().min(room)];
        for f in states {
            sent.note(f.key, f.at);
        }
        let texts: Vec<String> = states.iter().map(State::text).collect();
        if !send(self.outlet, &texts, self.cfg, self.shutdown).await {
            return Ok(PageEnd::Gone);
        }
        *count += states.len();
        metrics::counter!("ragctl_ws_catchup_rows_total").increment(states.len() as u64);
        Ok(match last {
            _ if overflow => PageEnd::Overflow,
            Some(last) if full => PageEnd::Next(last),
            _ => PageEnd::TableDone,
        })
    }

    async fn read(
        &self,
        table: Table,
        after: Option<PageKey>,
    ) -> anyhow::Result<(Changes, Option<PageKey>)> {
        let client = self.pool.get().await?;
        // One character more than is sent tells a cut.
        let chars = CONTENT_CHARS as i64 + 1;
        let limit = page_rows(table);
        let read = changes::page(&client, self.user, table, self.since, after, limit, chars);
        Ok(read.await?)
    }
}

/// A page's state frames, message contents cut to `CONTENT_CHARS`.
fn states(mut page: Changes, since: DateTime<Utc>) -> Vec<State> {
    let mut cut = HashSet::new();
    for m in &mut page.messages {
        if let Some((at, _)) = m.content.char_indices().nth(CONTENT_CHARS) {
            m.content.truncate(at);
            cut.insert(m.id);
        }
    }
    let mut states = catch_up_states(&page, since);
    if !cut.is_empty() {
        metrics::counter!("ragctl_ws_catchup_truncated_total").increment(cut.len() as u64);
        for s in &mut states {
            if s.key.0 == "message" && cut.contains(&s.key.1) {
                s.out.payload["content_truncated"] = Value::Bool(true);
            }
        }
    }
    states
}

/// Sends the resync that ends the catch-up if it is one, then the held
/// live events that add to what was sent (an overflow of the hold becomes
/// one resync), then `caught_up` if it ended so, and switches to live.
/// `false` if the socket went away meanwhile.
async fn release(
    conn: &ConnGuard,
    sent: Sent,
    end: End,
    cfg: &WsConfig,
    shutdown: &CancellationToken,
) -> bool {
    let Some(hold) = &conn.hold else { return true };
    let outlet = &conn.outlet;
    let (mut resynced, last) = match end {
        End::Resync(r) => {
            if !send(outlet, &[r], cfg, shutdown).await {
                return false;
            }
            (true, None)
        }
        End::CaughtUp(text) => (false, Some(text)),
    };
    loop {
        let step = hold.release(CHUNK_FRAMES, || {
            if let Some(text) = &last {
                let mut bytes = BytesMut::new();
                put_text_frame(&mut bytes, text);
                outlet.push(&crate::bridge::Chunk::control(bytes.freeze()));
            }
        });
        let texts: Vec<String> = match step {
            Step::Live => return true,
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
            return false;
        }
    }
}
