//! The event bus options (issue #21): PostgreSQL LISTEN/NOTIFY, or a NATS
//! fan-out fed by one relay. A leaf.

use std::path::PathBuf;

use super::error::ConfigError;

/// Which bus carries events from PostgreSQL to the API instances.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusKind {
    /// Every API instance LISTENs on the event channel (the default).
    #[default]
    Postgres,
    /// One relay LISTENs and republishes to NATS; instances subscribe per user.
    Nats,
}

impl BusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BusKind::Postgres => "postgres",
            BusKind::Nats => "nats",
        }
    }
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BusOpts {
    /// The event bus: `postgres` (LISTEN/NOTIFY) or `nats` (one relay
    /// republishes to NATS; needs --nats-url).
    #[arg(long = "bus", env = "RAG_BUS", value_enum, default_value_t = BusKind::Postgres)]
    pub bus: BusKind,
    /// NATS server URL (nats://host:4222, tls://host, nats://token@host,
    /// nats://user:pass@host); required with --bus nats.
    #[arg(long, env = "RAG_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// A NATS credentials file (.creds).
    #[arg(long, env = "RAG_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Prefix of every subject, so deployments can share a NATS cluster.
    #[arg(long, env = "RAG_NATS_PREFIX", default_value = "ragctl")]
    pub nats_prefix: String,
}

impl BusOpts {
    /// Checks the options the chosen bus needs, before anything starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.bus == BusKind::Postgres {
            return Ok(());
        }
        for (i, addr) in self.nats_url()?.split(',').enumerate() {
            // The address is not repeated: it may carry a password or token.
            if let Err(e) = addr.trim().parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::Invalid {
                    flag: "--nats-url",
                    var: "RAG_NATS_URL",
                    problem: format!("address {} of the list: {e}", i + 1),
                });
            }
        }
        Ok(())
    }

    /// The NATS URL, which `--bus nats` requires.
    pub fn nats_url(&self) -> Result<&str, ConfigError> {
        match self.nats_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Ok(url),
            _ => Err(ConfigError::Invalid {
                flag: "--nats-url",
                var: "RAG_NATS_URL",
                problem: "required with --bus nats / RAG_BUS=nats".into(),
            }),
        }
    }
}
