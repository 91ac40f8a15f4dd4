//! The first connection of a long-running process (`serve`, a worker): the
//! pool and the migrations, tried again with backoff while PostgreSQL
//! cannot be reached (restarting, not up yet, its database not created
//! yet) until it answers or the process is told to stop. Anything else (a
//! bad URL, refused credentials, a failed migration) fails at once.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{DbError, migrate, pool_with_timeout};
use crate::backoff::Backoff;

/// The first retry comes soon (a restart takes about a second)...
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// ...and they slow down to one every ~10 s: one warning line each.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What to open.
pub struct Spec<'a> {
    pub url: &'a str,
    pub size: usize,
    pub application_name: &'a str,
    /// Set on every connection of the pool; zero: the server's default.
    pub statement_timeout: Duration,
}

/// The pool, migrated, and how many migrations were applied; `None` if
/// `stop` came first.
pub async fn when_up(
    spec: &Spec<'_>,
    stop: &CancellationToken,
) -> Result<Option<(Pool, usize)>, DbError> {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let tried = tokio::select! {
            r = once(spec) => r,
            _ = stop.cancelled() => return Ok(None),
        };
        let e = match tried {
            Ok(opened) => {
                if attempt > 1 {
                    tracing::info!(attempts = attempt, "PostgreSQL reached");
                }
                return Ok(Some(opened));
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            error = %e,
            "PostgreSQL not reachable at start; retrying"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

async fn once(spec: &Spec<'_>) -> Result<(Pool, usize), DbError> {
    let pool = pool_with_timeout(
        spec.url,
        spec.size,
        spec.application_name,
        spec.statement_timeout,
    )
    .await?;
    let applied = migrate(&pool).await?;
    Ok((pool, applied))
}
