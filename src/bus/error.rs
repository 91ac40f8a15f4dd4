//! Why the bus could not be set up. A leaf but for the config error.

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL is shown without its credentials.
    #[error("cannot connect to NATS at {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error(
        "cannot read the NATS credentials file {path} (--nats-creds / RAG_NATS_CREDS): {detail}"
    )]
    Creds { path: String, detail: String },
}
