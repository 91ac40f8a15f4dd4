//! A LISTEN connection that stays up: a dedicated connection (never from the
//! pool), driven by hand with `Connection::poll_message` because the plain
//! `Connection` future throws notifications away.
//!
//! The socket is always being read: notifications go into a bounded queue
//! with `try_send`, and an overflow is counted, never waited on, since a
//! stalled listener pins the server's notify queue for every session. A
//! probe with a timeout (plus TCP keepalive) finds dead connections; then
//! it reconnects forever with exponential backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::changes::{HIDDEN_MARGIN, horizon};
pub use super::gap::{Gap, GapReason};
use super::{DbError, error_text};
use crate::backoff::Backoff;

/// `application_name` of the API's event listener, which operators (and
/// `ragctl tap`) count in `pg_stat_activity`.
pub const API_LISTENER_NAME: &str = "ragctl-listener";

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub url: String,
    pub application_name: String,
    pub channels: Vec<String>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

impl ListenerConfig {
    pub fn new(url: &str, application_name: &str, channels: &[&str]) -> ListenerConfig {
        ListenerConfig {
            url: url.to_string(),
            application_name: application_name.to_string(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
        }
    }
}

/// What the listener puts on its queue.
#[derive(Debug)]
pub enum ListenItem {
    Notification(Notification),
    /// Notifications may have been missed: the connection was re-established,
    /// or the queue overflowed.
    Gap(Gap),
}

#[derive(Debug)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
    pub received_at: Instant,
    pub received_wall: DateTime<Utc>,
}

/// Connection-level state, published on a watch channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListenerStatus {
    pub connected: bool,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// `pg_notification_queue_usage()` at the last probe (0.0 to 1.0).
    pub queue_usage: Option<f64>,
    /// `ragctl-listener` backends on this database at the last probe
    /// (notifications are per database).
    pub listeners: Option<i64>,
}

/// Counters read by metrics and readiness without touching the hot path's
/// locks.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub received: AtomicU64,
    pub dropped_overflow: AtomicU64,
    /// Unix milliseconds of the last notification, 0 if none yet.
    pub last_notification_ms: AtomicU64,
    pub horizons: Horizons,
}

/// The two newest horizons (`db::changes::horizon`) read on the LISTEN
/// connection: one right after each LISTEN, then one per probe. When the
/// connection was answering a probe, every notification of a transaction
/// that committed before that probe's statement was on its way, read in
/// order before the probe's answer; a transaction that commits after it
/// started at or after that probe's horizon. A gap is dated from the
/// *older* of the two horizons, so a whole probe interval is re-read as
/// margin (for a notification the server signalled to our backend late):
/// re-sent states are harmless, missed ones are not.
#[derive(Debug)]
pub struct Horizons {
    older: AtomicI64,
    newer: AtomicI64,
}

impl Default for Horizons {
    /// Before any horizon is read: the local clock less the hidden-role
    /// margin (the widest the reads themselves would give).
    fn default() -> Horizons {
        let start = (Utc::now() - HIDDEN_MARGIN).timestamp_micros();
        Horizons {
            older: AtomicI64::new(start),
            newer: AtomicI64::new(start),
        }
    }
}

impl Horizons {
    fn record(&self, at: DateTime<Utc>) {
        let newer = self.newer.swap(at.timestamp_micros(), Ordering::AcqRel);
        self.older.store(newer, Ordering::Release);
    }

    /// Where a gap that begins now begins.
    pub fn gap_since(&self) -> DateTime<Utc> {
        let us = self.older.load(Ordering::Acquire);
        DateTime::from_timestamp_micros(us).unwrap_or_default()
    }
}

/// Handles to a running listener.
#[derive(Clone)]
pub struct ListenerHandle {
    pub status: watch::Receiver<ListenerStatus>,
    pub counters: Arc<ListenerCounters>,
}

/// Starts the listener task. It runs until `shutdown` is cancelled.
pub fn spawn(
    cfg: ListenerConfig,
    queue: mpsc::Sender<ListenItem>,
    shutdown: CancellationToken,
) -> (ListenerHandle, tokio::task::JoinHandle<()>) {
    let (status_tx, status_rx) = watch::channel(ListenerStatus::default());
    let counters = Arc::new(ListenerCounters::default());
    let task = tokio::spawn(run(cfg, queue, status_tx, counters.clone(), shutdown));
    (
        ListenerHandle {
            status: status_rx,
            counters,
        },
        task,
    )
}

async fn run(
    cfg: ListenerConfig,
    queue: mpsc::Sender<ListenItem>,
    status: watch::Sender<ListenerStatus>,
    counters: Arc<ListenerCounters>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut connected_once = false;
    // Labelled by connection: in one `serve`, the API's listener and the
    // relay's are different connections with different jobs.
    let app = cfg.application_name.clone();
    let reconnects = metrics::counter!("ragctl_listener_reconnects_total", "app" => app);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&cfg, &queue, &status, &counters, &shutdown, &mut connected_once, &mut backoff) => r,
        };
        let error = match outcome {
            Ok(()) => return, // shutdown
            Err(e) => e,
        };
        if shutdown.is_cancelled() {
            return;
        }
        status.send_modify(|s| {
            if s.connected {
                s.reconnects += 1;
                reconnects.increment(1);
            }
            s.connected = false;
            s.last_error = Some(error.to_string());
        });
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, app = %cfg.application_name, "LISTEN connection lost; reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Why a LISTEN session ended; the text is what the status reports.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Connect(#[from] DbError),
    /// The connection failed while reading, or LISTEN failed.
    #[error("{}", error_text(.0))]
    Connection(#[source] tokio_postgres::Error),
    #[error("connection closed")]
    Closed,
    #[error("reader ended")]
    ReaderEnded,
    #[error("LISTEN timed out")]
    ListenTimeout,
    #[error("probe failed: {}", error_text(.0))]
    Probe(#[source] tokio_postgres::Error),
    #[error("probe timed out after {0:?}")]
    ProbeTimeout(Duration),
    #[error("horizon read failed: {0}")]
    Horizon(#[source] DbError),
}

/// One connection's life. Returns `Ok(())` on shutdown, `Err` when the
/// connection failed or died.
async fn session(
    cfg: &ListenerConfig,
    queue: &mpsc::Sender<ListenItem>,
    status: &watch::Sender<ListenerStatus>,
    counters: &Arc<ListenerCounters>,
    shutdown: &CancellationToken,
    connected_once: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), ListenError> {
    let (client, conn) = super::connect(&cfg.url, &cfg.application_name).await?;
    let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<ListenError>();
    let reader = Reader::new(queue.clone(), counters.clone(), &cfg.application_name);
    // Aborts the reader (and so closes the socket) however this returns.
    let _guard = AbortOnDrop(tokio::spawn(async move {
        let _ = dead_tx.send(reader.run(conn).await);
    }));

    let listen_sql: String = cfg
        .channels
        .iter()
        .map(|c| format!("LISTEN {};", quote_ident(c)))
        .collect();
    tokio::time::timeout(cfg.probe_timeout, client.batch_execute(&listen_sql))
        .await
        .map_err(|_| ListenError::ListenTimeout)?
        .map_err(ListenError::Connection)?;

    // Dated before this session's first horizon is recorded.
    let gap = Gap::all(GapReason::Reconnected, counters.horizons.gap_since());
    record_horizon(cfg, &client, counters).await?;
    backoff.reset();
    status.send_modify(|s| {
        s.connected = true;
        s.last_error = None;
    });
    tracing::info!(app = %cfg.application_name, channels = ?cfg.channels, "listening");
    if std::mem::replace(connected_once, true) {
        // Control items may wait: nothing is being read from Postgres on our
        // side of the queue yet, and the router drains continuously.
        let _ = queue.send(ListenItem::Gap(gap)).await;
    }

    let mut tick = tokio::time::interval(cfg.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            reason = &mut dead_rx => return Err(reason.unwrap_or(ListenError::ReaderEnded)),
            _ = tick.tick() => {
                probe(cfg, &client, status).await?;
                record_horizon(cfg, &client, counters).await?;
            }
        }
    }
}

/// Reads a horizon on the LISTEN connection (so after every notification
/// read so far) and records it.
async fn record_horizon(
    cfg: &ListenerConfig,
    client: &tokio_postgres::Client,
    counters: &ListenerCounters,
) -> Result<(), ListenError> {
    let h = tokio::time::timeout(cfg.probe_timeout, horizon(client))
        .await
        .map_err(|_| ListenError::ProbeTimeout(cfg.probe_timeout))?
        .map_err(ListenError::Horizon)?;
    counters.horizons.record(h.at);
    Ok(())
}

/// Checks the connection with a timeout and records the server's
/// notification queue usage and the API listeners on this database.
async fn probe(
    cfg: &ListenerConfig,
    client: &tokio_postgres::Client,
    status: &watch::Sender<ListenerStatus>,
) -> Result<(), ListenError> {
    let sql = format!(
        "SELECT pg_notification_queue_usage(), \
        (SELECT count(*) FROM pg_stat_activity \
        WHERE application_name = '{API_LISTENER_NAME}' AND datname = current_database())"
    );
    let row = tokio::time::timeout(cfg.probe_timeout, client.query_one(&sql, &[]))
        .await
        .map_err(|_| ListenError::ProbeTimeout(cfg.probe_timeout))?
        .map_err(ListenError::Probe)?;
    let usage: f64 = row.get(0);
    let listeners: i64 = row.get(1);
    metrics::gauge!("ragctl_pg_notification_queue_usage").set(usage);
    status.send_if_modified(|s| {
        let changed = s.queue_usage != Some(usage) || s.listeners != Some(listeners);
        s.queue_usage = Some(usage);
        s.listeners = Some(listeners);
        changed
    });
    Ok(())
}

/// Reads the connection's socket without ever waiting on the queue.
struct Reader {
    queue: mpsc::Sender<ListenItem>,
    counters: Arc<ListenerCounters>,
    received: metrics::Counter,
    dropped: metrics::Counter,
    /// An overflow dropped notifications since then; a gap is owed to the
    /// queue.
    gap_pending: Option<DateTime<Utc>>,
}

impl Reader {
    fn new(queue: mpsc::Sender<ListenItem>, counters: Arc<ListenerCounters>, app: &str) -> Reader {
        let app = app.to_string();
        Reader {
            queue,
            counters,
            received: metrics::counter!("ragctl_listener_notifications_total", "app" => app.clone()),
            dropped: metrics::counter!("ragctl_listener_queue_dropped_total", "app" => app),
            gap_pending: None,
        }
    }

    /// Runs until the connection fails or closes, and says why.
    async fn run(mut self, mut conn: super::Connection) -> ListenError {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => self.push(&n),
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::info!(notice = %n.message(), "postgres notice on LISTEN connection");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return ListenError::Connection(e),
                None => return ListenError::Closed,
            }
        }
    }

    fn push(&mut self, n: &tokio_postgres::Notification) {
        self.received.increment(1);
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        self.counters
            .last_notification_ms
            .store(now.timestamp_millis() as u64, Ordering::Relaxed);
        if let Some(since) = self.gap_pending {
            let gap = Gap::all(GapReason::Overflow, since);
            if self.queue.try_send(ListenItem::Gap(gap)).is_ok() {
                self.gap_pending = None;
            }
        }
        let item = ListenItem::Notification(Notification {
            channel: n.channel().to_string(),
            payload: n.payload().to_string(),
            received_at: Instant::now(),
            received_wall: now,
        });
        if self.queue.try_send(item).is_err() {
            self.dropped.increment(1);
            self.counters
                .dropped_overflow
                .fetch_add(1, Ordering::Relaxed);
            // Dated from the first drop: later drops are inside the window.
            self.gap_pending
                .get_or_insert_with(|| self.counters.horizons.gap_since());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Quotes an identifier for LISTEN (channel names are validated in config,
/// this is the second line of defence).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("rag_events"), "\"rag_events\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
