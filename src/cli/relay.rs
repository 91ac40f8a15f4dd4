//! `ragctl relay`: one NATS relay on its own (issue #21): it waits for
//! leadership of (database, channel), then republishes the event channel
//! to NATS. No HTTP; `--metrics-addr` serves `/metrics` if given.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::bus::{self, RelayConfig};
use crate::config::{BusOpts, ConnectOpts};

#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// --nats-url (required), --nats-creds, --nats-prefix; --bus is ignored.
    #[command(flatten)]
    pub bus: BusOpts,
    /// Bound of the queue between the LISTEN socket and the publisher; an
    /// overflow is counted and published as a gap.
    #[arg(long, env = "RAG_RELAY_QUEUE", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub queue: u64,
    /// A direct (or session-pooled) URL for the LISTEN and lock sessions,
    /// when DATABASE_URL goes through a transaction pooler.
    #[arg(long, env = "RAG_LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<String>,
    /// Serve Prometheus `/metrics` on this address, e.g. 127.0.0.1:9102.
    /// Its own variable: serve's RAG_METRICS_ADDR is not for this process.
    #[arg(long, env = "RAG_RELAY_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

pub async fn run(connect: ConnectOpts, args: RelayArgs) -> anyhow::Result<ExitCode> {
    let nats = args.bus.nats_required("required by `ragctl relay`")?;
    let url = match args.listen_database_url.as_deref().map(str::trim) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => connect.database_url()?,
    };
    let channel = connect.channel()?;
    let shutdown = CancellationToken::new();
    let metrics_task = super::metrics::serve_own(
        args.metrics_addr.as_deref(),
        "--metrics-addr / RAG_RELAY_METRICS_ADDR",
        &shutdown,
    )
    .await?;
    super::signal::cancel_on_signal(shutdown.clone());
    let cfg = RelayConfig {
        listen_url: url,
        channel,
        nats,
        queue: args.queue as usize,
    };
    let (_handle, task) = bus::relay::spawn(cfg, shutdown.clone());
    let _ = task.await;
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(ExitCode::SUCCESS)
}
