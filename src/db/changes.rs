//! What changed for a user at or after a cursor: the catch-up of a socket
//! that resumes (`/ws?since=`), and the cursor to resume from next time.
//!
//! The cursor argument (docs/events.md, "Resume and healing"): every write
//! sets `updated_at` to `now()` or `clock_timestamp()` inside its
//! transaction, so a row's `updated_at` is never before its transaction
//! started. The horizon is read *before* the catch-up snapshot is taken:
//! the oldest `xact_start` among this database's other backends, or the
//! statement's start if older ones are none. A row the snapshot cannot see
//! was committed by a transaction still open at the horizon read (so
//! `updated_at >= its xact_start >= horizon`) or started after it (so
//! `updated_at >= horizon`). Reading from the horizon (`>=`) again next time
//! finds it; rows seen twice are re-sent, which is harmless.
//!
//! A catch-up reads in pages (`page`), each its own statement, all after
//! the horizon: a row version no page saw was either committed after the
//! horizon read (so `updated_at >=` horizon, as above) or replaced, while
//! the pages went on, by such a version. Keyset order on `(updated_at, id)`
//! sees every other row exactly once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use super::DbError;
use super::chat::{MESSAGE_COLUMNS, Message};
use super::documents::{self, Document};
use super::jobs::{self, Job};

/// Taken off every horizon: covers a transaction that has set its start
/// time but not yet published it in `pg_stat_activity` (microseconds).
pub const CURSOR_MARGIN: Duration = Duration::from_secs(1);

/// Taken off the statement's start instead when a backend of this database
/// belongs to a role whose `xact_start` we cannot read (no
/// `pg_read_all_stats`): a write transaction open longer than this across
/// a catch-up could be missed. ragctl's own write transactions are short.
pub const HIDDEN_MARGIN: Duration = Duration::from_secs(60);

/// The oldest transaction start of this database's other backends, the
/// statement's start, and how many backends hide their `xact_start`.
const HORIZON_SQL: &str = "
WITH others AS (
    SELECT a.xact_start,
           a.usesysid IS NOT NULL
           AND NOT COALESCE(pg_has_role('pg_read_all_stats', 'USAGE')
                            OR pg_has_role(a.usesysid, 'USAGE'), false) AS hidden
    FROM pg_stat_activity a
    WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.pid <> pg_backend_pid())
SELECT statement_timestamp() AS started,
       (SELECT min(xact_start) FROM others) AS oldest,
       (SELECT count(*) FROM others WHERE hidden) AS hidden
";

/// The rows of one user changed at or after a cursor, each table oldest
/// first and cut at `limit` rows.
#[derive(Debug, Default)]
pub struct Changes {
    pub documents: Vec<Document>,
    pub jobs: Vec<Job>,
    pub messages: Vec<Message>,
    /// Where the next catch-up should start.
    pub cursor: Option<DateTime<Utc>>,
    /// Backends whose `xact_start` was hidden (the fallback margin applied).
    pub hidden: i64,
    /// When the snapshot's statement started: the window's end.
    pub read_at: Option<DateTime<Utc>>,
}

impl Changes {
    /// How many rows were read.
    pub fn rows(&self) -> usize {
        self.documents.len() + self.jobs.len() + self.messages.len()
    }
}

/// A point before which every transaction that may still commit started,
/// read now; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub at: DateTime<Utc>,
    /// The statement's start (the server's clock now).
    pub read_at: DateTime<Utc>,
    /// Backends whose `xact_start` was hidden (the fallback margin applied).
    pub hidden: i64,
}

/// The cursor a catch-up that starts now may hand out; also what the
/// bridge's listener records to know where a gap began.
pub async fn horizon(client: &Client) -> Result<Horizon, DbError> {
    let row = client.query_one(HORIZON_SQL, &[]).await?;
    let started: DateTime<Utc> = row.get("started");
    let oldest: Option<DateTime<Utc>> = row.get("oldest");
    let hidden: i64 = row.get("hidden");
    let at = if hidden > 0 {
        started - HIDDEN_MARGIN
    } else {
        oldest.map_or(started, |o| o.min(started)) - CURSOR_MARGIN
    };
    Ok(Horizon {
        at,
        read_at: started,
        hidden,
    })
}

/// The tables a catch-up reads, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Documents,
    Jobs,
    Messages,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Documents, Table::Jobs, Table::Messages];
}

/// Where a page ended: its last row's `(updated_at, id)`.
pub type PageKey = (DateTime<Utc>, Uuid);

/// One page of `user`'s rows of `table` changed at or after `since`, after
/// `after` in `(updated_at, id)` order, at most `limit` rows; message
/// `content` is read up to `content_chars` characters. Also returns the
/// page's last key.
pub async fn page(
    client: &Client,
    user: Uuid,
    table: Table,
    since: DateTime<Utc>,
    after: Option<PageKey>,
    limit: i64,
    content_chars: i64,
) -> Result<(Changes, Option<PageKey>), DbError> {
    let message_cols = MESSAGE_COLUMNS.replace(
        "content,",
        &format!("substr(content, 1, {content_chars}) AS content,"),
    );
    let (name, cols) = match table {
        Table::Documents => ("documents", documents::COLUMNS),
        Table::Jobs => ("jobs", jobs::COLUMNS),
        Table::Messages => ("messages", message_cols.as_str()),
    };
    // The first page from `since` itself (`>=` the nil id, the least),
    // the next ones after the key they got to: one index range each.
    let (op, key) = match after {
        Some(key) => (">", key),
        None => (">=", (since, Uuid::nil())),
    };
    let sql = format!(
        "SELECT {cols} FROM {name} WHERE user_id = $1 AND updated_at >= $2
         AND (updated_at, id) {op} ($3, $4) ORDER BY updated_at, id LIMIT $5"
    );
    let rows = client
        .query(&sql, &[&user, &since, &key.0, &key.1, &limit])
        .await?;
    let last = rows.last().map(|r| (r.get("updated_at"), r.get("id")));
    let mut changes = Changes::default();
    match table {
        Table::Documents => changes.documents = rows.iter().map(Document::from_row).collect(),
        Table::Jobs => changes.jobs = rows.iter().map(Job::from_row).collect(),
        Table::Messages => changes.messages = rows.iter().map(Message::from_row).collect(),
    }
    Ok((changes, last))
}

/// Everything of `users` changed at or after `since`, in one snapshot
/// taken after the horizon was read, one query per table, at most `limit`
/// rows per table (the bridge's heal: every user with a socket here).
pub async fn for_users(
    client: &mut Client,
    users: &[Uuid],
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Changes, DbError> {
    let h = horizon(client).await?;
    let tx = super::read_snapshot(client).await?;
    let select = |table: &str, cols: &str| {
        format!(
            "SELECT {cols} FROM {table} WHERE user_id = ANY($1) AND updated_at >= $2
             ORDER BY updated_at, id LIMIT $3"
        )
    };
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&users, &since, &limit];
    let docs = tx
        .query(&select("documents", documents::COLUMNS), &args)
        .await?;
    let job_rows = tx.query(&select("jobs", jobs::COLUMNS), &args).await?;
    let msgs = tx
        .query(&select("messages", MESSAGE_COLUMNS), &args)
        .await?;
    tx.commit().await?;
    Ok(Changes {
        documents: docs.iter().map(Document::from_row).collect(),
        jobs: job_rows.iter().map(Job::from_row).collect(),
        messages: msgs.iter().map(Message::from_row).collect(),
        cursor: Some(h.at),
        hidden: h.hidden,
        read_at: Some(h.read_at),
    })
}
