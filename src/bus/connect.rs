//! A NATS connection from the bus options. The client reconnects forever
//! by itself (and resubscribes); a server down at start is retried too, so
//! an API starts whatever the state of NATS.

use async_nats::{Client, ConnectOptions};

use crate::config::BusOpts;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read --nats-creds / RAG_NATS_CREDS {path}: {source}")]
    Creds {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at --nats-url / RAG_NATS_URL: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects with `base` (name, event callback...) plus the options' URL
/// and credentials.
pub async fn connect(opts: &BusOpts, base: ConnectOptions) -> Result<Client, BusError> {
    let url = opts.nats_url()?;
    let mut options = base.retry_on_initial_connect().max_reconnects(None);
    if let Some(path) = &opts.nats_creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| BusError::Creds {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(options.connect(url).await?)
}
