//! Which bus carries events between the workers and the API (issue #21):
//! PostgreSQL NOTIFY alone (the default, nothing new to run), or NATS fed
//! by one relay. Flattened into `serve` and `relay`. A leaf but for the
//! error type.

use std::path::PathBuf;

use super::error::ConfigError;

/// Default subject prefix: `ragctl.u.<user>`, `ragctl.relay`.
pub const DEFAULT_NATS_PREFIX: &str = "ragctl";

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusKind {
    /// Every API instance LISTENs on the event channel (the seed's design).
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

/// Whether `serve --bus nats` is also a relay candidate (`--relay`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// Every serve is a candidate; one leads, the others stand by.
    #[default]
    Auto,
    /// This serve never relays (`ragctl relay` runs elsewhere).
    Off,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BusOpts {
    /// The event bus: `postgres` (every instance LISTENs) or `nats` (one
    /// relay LISTENs and republishes to NATS; needs --nats-url).
    #[arg(long, env = "RAG_BUS", value_enum, default_value_t = BusKind::Postgres)]
    pub bus: BusKind,
    /// NATS server URL, e.g. nats://127.0.0.1:4222, tls://host:4222,
    /// nats://TOKEN@host, nats://USER:PASSWORD@host.
    #[arg(long, env = "RAG_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// A NATS credentials (.creds) file.
    #[arg(long, env = "RAG_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Prefix of the NATS subjects (`<prefix>.u.<user>`, `<prefix>.relay`),
    /// so that deployments can share a NATS cluster.
    #[arg(long, env = "RAG_NATS_PREFIX", default_value = DEFAULT_NATS_PREFIX)]
    pub nats_prefix: String,
}

/// The NATS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOpts {
    pub url: String,
    pub creds: Option<PathBuf>,
    pub prefix: String,
}

impl BusOpts {
    /// The NATS settings with `--bus nats`, `None` with `--bus postgres`
    /// (whose behaviour the NATS flags do not touch).
    pub fn nats(&self) -> Result<Option<NatsOpts>, ConfigError> {
        match self.bus {
            BusKind::Postgres => Ok(None),
            BusKind::Nats => self
                .nats_required("required with --bus nats (RAG_BUS=nats)")
                .map(Some),
        }
    }

    /// The NATS settings whatever `--bus` says (`ragctl relay` needs them).
    pub fn nats_required(&self, why: &str) -> Result<NatsOpts, ConfigError> {
        let url = self
            .nats_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                flag: "--nats-url",
                var: "RAG_NATS_URL",
                problem: why.to_string(),
            })?;
        check_url(url)?;
        check_prefix(&self.nats_prefix)?;
        if let Some(path) = &self.nats_creds
            && !path.is_file()
        {
            return Err(ConfigError::Invalid {
                flag: "--nats-creds",
                var: "RAG_NATS_CREDS",
                problem: format!("{} is not a readable file", path.display()),
            });
        }
        Ok(NatsOpts {
            url: url.to_string(),
            creds: self.nats_creds.clone(),
            prefix: self.nats_prefix.clone(),
        })
    }
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|s| url.starts_with(s))
        || !url.contains("://");
    let parsed = url.parse::<async_nats::ServerAddr>();
    if scheme_ok && parsed.is_ok() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        flag: "--nats-url",
        var: "RAG_NATS_URL",
        // The URL may carry a password: say what is wrong, not what it is.
        problem: "expected nats://[TOKEN@|USER:PASSWORD@]HOST[:PORT] or tls://...".to_string(),
    })
}

/// A prefix is one or more subject tokens that need no escaping: no
/// wildcards, no spaces, no empty token.
fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        flag: "--nats-prefix",
        var: "RAG_NATS_PREFIX",
        problem: format!(
            "{prefix:?} must be dot-separated tokens of A-Z, a-z, 0-9, _ and - (no wildcards)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bus: BusKind, url: Option<&str>, prefix: &str) -> BusOpts {
        BusOpts {
            bus,
            nats_url: url.map(str::to_string),
            nats_creds: None,
            nats_prefix: prefix.to_string(),
        }
    }

    #[test]
    fn postgres_ignores_the_nats_flags() {
        assert_eq!(opts(BusKind::Postgres, None, "").nats().unwrap(), None);
    }

    #[test]
    fn nats_wants_a_url_and_names_flag_and_variable() {
        let e = opts(BusKind::Nats, None, "ragctl").nats().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--nats-url") && text.contains("RAG_NATS_URL"));
        assert!(text.contains("--bus nats"));
    }

    #[test]
    fn urls_with_credentials_pass_and_do_not_leak() {
        for url in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com:4222",
            "nats://s3cret@host:4222",
            "nats://user:pass@host",
            "127.0.0.1:4222",
        ] {
            let got = opts(BusKind::Nats, Some(url), "ragctl").nats().unwrap();
            assert_eq!(got.unwrap().url, url);
        }
        let e = opts(BusKind::Nats, Some("http://u:s3cret@h"), "ragctl")
            .nats()
            .unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn prefixes_are_plain_tokens() {
        for good in ["ragctl", "prod.ragctl", "a-b_c"] {
            check_prefix(good).unwrap();
        }
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            let e = check_prefix(bad).unwrap_err().to_string();
            assert!(
                e.contains("--nats-prefix") && e.contains("RAG_NATS_PREFIX"),
                "{e}"
            );
        }
    }
}
