//! `ragctl queue`: what the job queue holds right now, per kind (counts,
//! the oldest waiting job, slots in use per worker, the top users), as a
//! table or JSON, once or every second (`--watch`). Read-only: one
//! connection, one read-only transaction per snapshot (`db::queue`).

pub mod table;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectOpts;
use crate::db::DbError;
use crate::db::queue::{Bounds, Snapshot};

/// Workers listed per kind; the table and JSON say how many there are.
const WORKERS_LISTED: i64 = 100;
/// No snapshot query may run longer than this (they are bounded scans).
const STATEMENT_TIMEOUT: &str = "SET statement_timeout = '10s'";
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ragctl queue
  ragctl queue --top 10 --watch
  ragctl queue --json | jq '.kinds[] | {kind, due, oldest_due_age_secs}'")]
pub struct QueueArgs {
    /// Print JSON (one object per line; one line per refresh with --watch).
    #[arg(long)]
    pub json: bool,
    /// Users listed per kind, by running + queued jobs.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(i64).range(0..=1000))]
    pub top: i64,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Rows each scan reads at most (per kind and status); a count that
    /// reaches it is shown as a lower bound (`N+`, `"capped": true`).
    #[arg(long, value_name = "ROWS", default_value_t = 100_000,
          value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    pub scan_limit: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the database has no jobs table: run `ragctl db migrate` (or start `ragctl serve`) first"
    )]
    NoSchema,
    #[error("cannot read the queue: {0}")]
    Read(DbError),
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> QueueError {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            QueueError::NoSchema
        } else {
            QueueError::Read(e)
        }
    }
}

pub async fn run(connect: ConnectOpts, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let url = connect.database_url()?;
    let (mut client, conn) = crate::db::connect(&url, "ragctl-queue").await?;
    // Its errors reach the client's calls; the task only drives it.
    tokio::spawn(conn);
    client
        .batch_execute(STATEMENT_TIMEOUT)
        .await
        .map_err(DbError::from)?;
    let bounds = Bounds {
        scan_limit: args.scan_limit,
        top_users: args.top,
        workers: WORKERS_LISTED,
    };
    if !args.watch {
        print(&read(&mut client, bounds).await?, args.json, Frame::Once)?;
        return Ok(ExitCode::SUCCESS);
    }
    let stop = CancellationToken::new();
    super::signal::cancel_on_signal(stop.clone());
    watch(&mut client, bounds, args.json, stop).await?;
    Ok(ExitCode::SUCCESS)
}

async fn read(client: &mut Client, bounds: Bounds) -> Result<Snapshot, QueueError> {
    Ok(crate::db::queue::snapshot(client, bounds).await?)
}

/// A snapshot every second until `stop`; the table redraws in place on a
/// terminal.
async fn watch(
    client: &mut Client,
    bounds: Bounds,
    json: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let frame = if !json && std::io::stdout().is_terminal() {
        Frame::Redraw
    } else {
        Frame::Append
    };
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let snap = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            s = read(client, bounds) => s?,
        };
        print(&snap, json, frame)?;
    }
}

/// How a table snapshot goes on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Once,
    /// `--watch` on a terminal: over the previous one.
    Redraw,
    /// `--watch` into a pipe or file: after the previous one, a blank line
    /// between.
    Append,
}

fn print(snap: &Snapshot, json: bool, frame: Frame) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, snap)?;
        writeln!(out)?;
    } else {
        if frame == Frame::Redraw {
            // Cursor home, clear the screen.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{}", table::render(snap, snap.at))?;
        if frame == Frame::Append {
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
