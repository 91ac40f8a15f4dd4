//! `ragctl tap`: a live inspector for the NOTIFY traffic on the event
//! channel, and for the heal runs the bridges report on the ops channel.
//!
//! The TUI follows The Elm Architecture: [`app`] holds the state and the one
//! `update` function that changes it, [`view`] draws a frame from that state
//! and nothing else, and [`term`] owns the terminal and the event loop.
//! [`keymap`] turns keys into [`msg`]s, [`filter`] decides which rows show,
//! and [`layout`] is the geometry both `app` (paging) and `view` need. The
//! LISTEN connection lives in [`source`]; it feeds [`Input`]s in through a
//! bounded channel. [`decode`] turns notifications into events, and
//! [`report`] ops reports into heal runs, for both the TUI and, without a
//! TTY (or with `--no-tui`), [`run_jsonl`], which prints one JSON object
//! per notification instead.
//!
//! Dependencies point one way (no module imports one that imports it):
//! `decode` and `report` need no sibling, `source` needs `report`;
//! `layout` needs `source`, `filter` `decode` and `report`, `msg` `filter`
//! and `source`, `keymap` `msg`; `app` needs those and `relay` (a leaf);
//! `style`, `detail`, `report_view` (and `detail`) and `view` need `app`;
//! `term` needs `view`; `jsonl` needs `source`, `decode`, `report` and
//! `relay`; `nats_source` (`--bus nats`) needs `source`.

mod app;
mod decode;
mod detail;
mod filter;
mod jsonl;
mod keymap;
mod layout;
mod msg;
mod nats_source;
mod relay;
mod report;
mod report_view;
mod source;
mod style;
mod term;
mod view;

#[cfg(test)]
mod heal_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use tokio::sync::mpsc::Receiver;

pub use app::{DEFAULT_CAPACITY, TapOptions};
pub use jsonl::run_jsonl;
pub use source::Input;

/// True when the TUI should be used: stdout is a terminal and `--no-tui` was
/// not given.
pub fn use_tui(no_tui: bool) -> bool {
    use std::io::IsTerminal;
    !no_tui && std::io::stdout().is_terminal()
}

/// Runs the interactive inspector until `q`/Ctrl-C, `--count` is reached, or
/// an error. The terminal is restored in every case, panics included.
pub async fn run_tui(rx: Receiver<Input>, opts: TapOptions) -> anyhow::Result<()> {
    term::run(rx, opts, !super::term_style::no_color()).await
}

/// `ragctl tap`: watch the event channel live.
#[derive(clap::Args, Debug)]
pub struct TapArgs {
    /// Print JSON Lines instead of the TUI (also when stdout is not a TTY).
    #[arg(long)]
    pub no_tui: bool,
    /// Exit after this many notifications (heal reports included).
    #[arg(long)]
    pub count: Option<u64>,
    /// Rows kept in the ring buffer; older ones are dropped and counted.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    pub capacity: usize,
    /// Start with a user filter.
    #[arg(long)]
    pub user: Option<uuid::Uuid>,
    /// Start with a type filter (substring of the type, `invalid`, `heal`;
    /// a leading `!` inverts it).
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Start with a free-text filter over the raw payload.
    #[arg(long)]
    pub grep: Option<String>,
    /// Where `w` saves the buffer (a folder, or a path ending in .jsonl).
    #[arg(long, default_value = ".")]
    pub save: PathBuf,
    /// `--bus nats` taps NATS (`<prefix>.>`: envelopes per user subject,
    /// the relay's heartbeats and gaps) instead of the NOTIFY channel.
    #[command(flatten)]
    pub bus: crate::config::BusOpts,
}

pub async fn run(
    connect: crate::config::ConnectOpts,
    args: TapArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let rx = match args.bus.nats()? {
        Some(nats) => {
            let link = crate::bus::connect_link(&nats, "ragctl-tap").await?;
            nats_source::spawn(link, &nats.prefix, shutdown.clone()).await?
        }
        None => {
            let url = connect.database_url()?;
            let channel = connect.channel()?;
            source::spawn(&url, &channel, shutdown.clone())
        }
    };
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
