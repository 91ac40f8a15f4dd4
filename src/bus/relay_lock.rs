//! Leadership: a session advisory lock per (database, channel), held on a
//! connection of its own (`ragctl-relay-lock`), so that it goes when that
//! session dies. Standbys poll for it; the leader watches the session and
//! says at once when it is lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::db::{self, Connection};

/// `application_name` of the session that holds the lock.
pub const LOCK_SESSION_NAME: &str = "ragctl-relay-lock";
/// How often a standby asks for the lock (a killed leader is replaced
/// within this plus the server noticing the dead session).
const POLL: Duration = Duration::from_millis(250);
/// How often the leader checks its lock session, and how long a check may take.
const PROBE: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended('ragctl-relay:' || $1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('ragctl-relay:' || $1, 0))";

/// A session that holds the lock.
pub struct LockSession {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
    channel: String,
    /// Another session held the lock when this one first asked.
    pub waited: bool,
}

/// Waits until this process holds the lock; `None` on shutdown.
pub async fn acquire(
    url: &str,
    channel: &str,
    shutdown: &CancellationToken,
) -> Option<LockSession> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut waited = false;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = try_session(url, channel, &mut waited, shutdown) => r,
        };
        match attempt {
            Ok(Some(session)) => return Some(session),
            Ok(None) => return None,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "relay lock session failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One session: asks for the lock until it is had, the session fails
/// (`Err`) or shutdown (`Ok(None)`).
async fn try_session(
    url: &str,
    channel: &str,
    waited: &mut bool,
    shutdown: &CancellationToken,
) -> Result<Option<LockSession>, String> {
    let (client, conn) = db::connect(url, LOCK_SESSION_NAME)
        .await
        .map_err(|e| e.to_string())?;
    let conn = drive(conn);
    loop {
        if conn.is_finished() {
            return Err("the lock session closed".into());
        }
        let row = tokio::time::timeout(PROBE_TIMEOUT, client.query_one(TRY_LOCK, &[&channel]))
            .await
            .map_err(|_| "the lock query timed out".to_string())?
            .map_err(|e| db::error_text(&e))?;
        if row.get::<_, bool>(0) {
            return Ok(Some(LockSession {
                client,
                conn,
                channel: channel.to_string(),
                waited: *waited,
            }));
        }
        if !*waited {
            tracing::info!(channel, "another relay leads; standing by");
        }
        *waited = true;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

fn drive(conn: Connection) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %db::error_text(&e), "relay lock session ended");
        }
    })
}

impl LockSession {
    /// Holds the lock until `stop` (then releases it) or until the session
    /// is lost (then cancels `lost` at once).
    pub async fn hold(mut self, lost: CancellationToken, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PROBE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut self.conn => {
                    tracing::error!("relay lock session lost; no longer leading");
                    lost.cancel();
                    return;
                }
                _ = tick.tick() => {
                    let probe = tokio::time::timeout(PROBE_TIMEOUT, self.client.query_one("SELECT 1", &[])).await;
                    if !matches!(probe, Ok(Ok(_))) {
                        tracing::error!("relay lock session does not answer; no longer leading");
                        lost.cancel();
                        self.conn.abort();
                        return;
                    }
                }
            }
        }
        // Closing the session would release it too; this is at once.
        let _ = tokio::time::timeout(
            PROBE_TIMEOUT,
            self.client.query_one(UNLOCK, &[&self.channel]),
        )
        .await;
        self.conn.abort();
    }
}
