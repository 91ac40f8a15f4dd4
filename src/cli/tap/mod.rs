//! `ragctl tap`: a live inspector for the NOTIFY traffic on the event
//! channel.
//!
//! The TUI follows The Elm Architecture: [`app`] holds the state and the one
//! `update` function that changes it, [`view`] draws a frame from that state
//! and nothing else, and [`term`] owns the terminal and the event loop. The
//! LISTEN connection lives in `source.rs`; it feeds [`Input`]s in through a
//! bounded channel. Without a TTY (or with `--no-tui`) [`run_jsonl`] prints
//! one JSON object per notification instead.

mod app;
mod source;
mod term;
mod view;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::Receiver;

/// Default ring buffer capacity (rows kept in the TUI).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// What the source sends to the inspector.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// One NOTIFY, exactly as it came off the connection.
    Notification {
        channel: String,
        payload: String,
        received_at: DateTime<Utc>,
    },
    /// The state of the LISTEN connection, sent whenever it changes and
    /// periodically with fresh queue usage and listener counts.
    Status(SourceStatus),
}

/// The state of the LISTEN connection: the shared listener's own status.
pub use crate::db::listener::ListenerStatus as SourceStatus;

#[derive(Clone, Debug)]
pub struct TapOptions {
    /// Ring buffer capacity; the oldest rows are evicted (and counted) past it.
    pub capacity: usize,
    /// Exit after this many notifications (reassembled fragments count once).
    pub count: Option<u64>,
    /// Initial user filter.
    pub user: Option<uuid::Uuid>,
    /// Initial type filter (substring of the type name, or `invalid`).
    pub kind: Option<String>,
    /// Initial free-text filter (matched against the raw payload).
    pub text: Option<String>,
    /// Where `w` saves the buffer: a directory (a `tap-YYYYmmdd-HHMMSS.jsonl`
    /// file is created in it) or a path ending in `.jsonl`.
    pub save_dir: PathBuf,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            capacity: DEFAULT_CAPACITY,
            count: None,
            user: None,
            kind: None,
            text: None,
            save_dir: PathBuf::from("."),
        }
    }
}

/// True when the TUI should be used: stdout is a terminal and `--no-tui` was
/// not given.
pub fn use_tui(no_tui: bool) -> bool {
    use std::io::IsTerminal;
    !no_tui && std::io::stdout().is_terminal()
}

/// True when `NO_COLOR` is set to a non-empty value.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Runs the interactive inspector until `q`/Ctrl-C, `--count` is reached, or
/// an error. The terminal is restored in every case, panics included.
pub async fn run_tui(rx: Receiver<Input>, opts: TapOptions) -> anyhow::Result<()> {
    term::run(rx, opts, !no_color()).await
}

/// Prints one JSON object per notification (a reassembled fragment group is
/// one notification) until the channel closes or `count` objects have been
/// written. Status changes go to stderr. A closed stdout (broken pipe) ends
/// the run quietly.
pub async fn run_jsonl<W: Write>(
    mut rx: Receiver<Input>,
    mut out: W,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let result = async {
        let mut decoder = app::Decoder::default();
        let mut written = 0u64;
        let mut last_status: Option<SourceStatus> = None;
        if count == Some(0) {
            return Ok(());
        }
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let events = tokio::select! {
                input = rx.recv() => match input {
                    None => break,
                    Some(Input::Notification { channel, payload, received_at }) => {
                        decoder.push(channel, payload, received_at, Instant::now())
                    }
                    Some(Input::Status(status)) => {
                        if let Some(line) = app::status_line(last_status.as_ref(), &status) {
                            eprintln!("ragctl tap: {line}");
                        }
                        last_status = Some(status);
                        continue;
                    }
                },
                _ = expiry.tick() => decoder.expire(Instant::now()),
            };
            for event in &events {
                serde_json::to_writer(&mut out, &event.record())?;
                out.write_all(b"\n")?;
                written += 1;
                if count.is_some_and(|n| written >= n) {
                    out.flush()?;
                    return Ok(());
                }
            }
            if !events.is_empty() {
                out.flush()?;
            }
        }
        out.flush()?;
        Ok::<(), std::io::Error>(())
    }
    .await;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `ragctl tap`: watch the event channel live.
#[derive(clap::Args, Debug)]
pub struct TapArgs {
    /// Print JSON Lines instead of the TUI (also when stdout is not a TTY).
    #[arg(long)]
    pub no_tui: bool,
    /// Exit after this many notifications.
    #[arg(long)]
    pub count: Option<u64>,
    /// Rows kept in the ring buffer; older ones are dropped and counted.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    pub capacity: usize,
    /// Start with a user filter.
    #[arg(long)]
    pub user: Option<uuid::Uuid>,
    /// Start with a type filter (substring of the type, or `invalid`).
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Start with a free-text filter over the raw payload.
    #[arg(long)]
    pub grep: Option<String>,
    /// Where `w` saves the buffer (a folder, or a path ending in .jsonl).
    #[arg(long, default_value = ".")]
    pub save: PathBuf,
}

pub async fn run(
    connect: crate::config::ConnectOpts,
    args: TapArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let url = connect.database_url()?;
    let channel = connect.channel()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let rx = source::spawn(&url, &channel, shutdown.clone());
    let result = if use_tui(args.no_tui) {
        run_tui(
            rx,
            TapOptions {
                capacity: args.capacity.max(1),
                count: args.count,
                user: args.user,
                kind: args.kind,
                text: args.grep,
                save_dir: args.save,
            },
        )
        .await
    } else {
        run_jsonl(rx, std::io::stdout().lock(), args.count).await
    };
    shutdown.cancel();
    result.map(|()| std::process::ExitCode::SUCCESS)
}
