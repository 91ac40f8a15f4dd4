//! Configuration: one shared clap group for connecting ([`ConnectOpts`]),
//! the runtime knobs ([`RuntimeOpts`]) and the state file that `ragctl serve`
//! writes in embedded mode.
//!
//! Every value is found the same way: the flag, then the environment
//! variable, then the state file, then the default. Errors name both the
//! flag and the variable.

pub mod bus;
mod error;
pub mod retrieval;
mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use bus::{BusKind, BusOpts};
pub use error::ConfigError;
pub use retrieval::RetrievalOpts;
pub use state::{State, StateError};

use crate::events::DEFAULT_CHANNEL;

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

/// How to reach the database, the event channel and the API. Flattened into
/// every subcommand so that they all resolve it the same way.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectOpts {
    /// PostgreSQL URL (sslmode=require / verify-full honoured).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// NOTIFY channel that carries events [default: rag_events].
    #[arg(long, env = "RAG_EVENTS_CHANNEL", global = true)]
    pub channel: Option<String>,
    /// Base URL of the API [default: from the state file, else http://127.0.0.1:8080].
    #[arg(long, env = "RAG_API_URL", global = true)]
    pub url: Option<String>,
    /// HS256 secret for Supabase-style JWTs (also read from SUPABASE_JWT_SECRET).
    #[arg(long, env = "RAG_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Folder of the embedded database and the state file.
    #[arg(long, env = "RAG_STATE_DIR", global = true, default_value = ".ragctl")]
    pub state_dir: PathBuf,
}

impl ConnectOpts {
    fn state(&self) -> Result<Option<State>, ConfigError> {
        Ok(State::load(&self.state_dir)?)
    }

    pub fn database_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = non_empty(&self.database_url) {
            return Ok(url);
        }
        match self.state()? {
            Some(s) => Ok(s.database_url),
            None => Err(ConfigError::NoDatabase {
                state: State::path(&self.state_dir).display().to_string(),
            }),
        }
    }

    /// Like [`Self::database_url`] but `None` when nothing is configured
    /// (serve then starts the embedded cluster).
    pub fn configured_database_url(&self) -> Option<String> {
        non_empty(&self.database_url)
    }

    pub fn jwt_secret(&self) -> Result<String, ConfigError> {
        if let Some(s) = non_empty(&self.jwt_secret) {
            return Ok(s);
        }
        if let Some(s) = non_empty(&std::env::var("SUPABASE_JWT_SECRET").ok()) {
            return Ok(s);
        }
        match self.state()? {
            Some(s) => Ok(s.jwt_secret),
            None => Err(ConfigError::NoJwtSecret),
        }
    }

    pub fn configured_jwt_secret(&self) -> Option<String> {
        non_empty(&self.jwt_secret)
            .or_else(|| non_empty(&std::env::var("SUPABASE_JWT_SECRET").ok()))
    }

    pub fn channel(&self) -> Result<String, ConfigError> {
        let channel = non_empty(&self.channel).unwrap_or_else(|| DEFAULT_CHANNEL.to_string());
        validate_channel(&channel)?;
        Ok(channel)
    }

    pub fn api_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = non_empty(&self.url) {
            return Ok(url.trim_end_matches('/').to_string());
        }
        Ok(self
            .state()?
            .and_then(|s| s.api_url)
            .unwrap_or_else(|| DEFAULT_API_URL.to_string()))
    }
}

fn validate_channel(channel: &str) -> Result<(), ConfigError> {
    // LISTEN takes an identifier, so keep to what needs no quoting.
    let ok = !channel.is_empty()
        && channel.len() <= 63
        && channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !channel.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            flag: "--channel",
            var: "RAG_EVENTS_CHANNEL",
            problem: format!(
                "{channel:?} must be 1-63 characters of a-z, 0-9 and _, not starting with a digit"
            ),
        })
    }
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Knobs of the business runtime, shared by `serve` and `worker`.
///
/// `Serialize` gives [`RuntimeOpts::to_args`] every field by its clap id, so
/// a new knob reaches `serve`'s worker children without a second list.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct RuntimeOpts {
    /// Largest accepted upload in bytes.
    #[arg(long, env = "RAG_MAX_UPLOAD_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Retries after the first failed attempt before a job is `failed`.
    #[arg(long, env = "RAG_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: i32,
    /// Backoff before the first retry, doubled each time (milliseconds).
    #[arg(long, env = "RAG_RETRY_BACKOFF_MS", default_value_t = 500)]
    pub retry_backoff_ms: u64,
    /// Job lease; a worker renews it while it works (seconds).
    #[arg(long, env = "RAG_JOB_LEASE_SECS", default_value_t = 30)]
    pub job_lease_secs: u64,
    /// Fallback poll interval when no NOTIFY wakes the worker (milliseconds).
    #[arg(long, env = "RAG_WORKER_POLL_MS", default_value_t = 2000)]
    pub worker_poll_ms: u64,
    /// Chunk size for ingest, in characters.
    // 1000 / 150 measured best on fixtures/qa end to end (hybrid with the
    // relevance floor: recall@1, recall@5, MRR and answers that state the
    // fact). 1500 / 200 ranks slightly better with the floor off, but its
    // cosines are lower and the floor refuses more (docs/benchmarks.md
    // "Retrieval (#19)").
    #[arg(long, env = "RAG_CHUNK_SIZE", default_value_t = 1000)]
    pub chunk_size: usize,
    /// Overlap between consecutive chunks, in characters.
    #[arg(long, env = "RAG_CHUNK_OVERLAP", default_value_t = 150)]
    pub chunk_overlap: usize,
    /// OpenAI-compatible chat-completions endpoint; unset = extractive answers.
    // The llm_* knobs are the API's: workers never answer, and the key must
    // not show in a process list, so `to_args` skips them.
    #[arg(long, env = "RAG_LLM_URL")]
    #[serde(skip)]
    pub llm_url: Option<String>,
    /// Model name sent to the LLM endpoint.
    #[arg(long, env = "RAG_LLM_MODEL", default_value = "gpt-4o-mini")]
    #[serde(skip)]
    pub llm_model: String,
    /// Bearer key for the LLM endpoint.
    #[arg(long, env = "RAG_LLM_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub llm_api_key: Option<String>,
    /// Upper bound on how long a publish may delay a business operation (ms).
    #[arg(long, env = "RAG_PUBLISH_TIMEOUT_MS", default_value_t = 2000)]
    pub publish_timeout_ms: u64,
    /// Connections in the pool.
    #[arg(long, env = "RAG_DB_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Direct or session-mode URL for LISTEN, when DATABASE_URL goes through a
    /// transaction-mode pooler (Supabase port 6543), where LISTEN does not work.
    /// Not in `to_args`: it may hold a password, and a command line is
    /// visible to every local user (`ps`); `serve` hands it to its workers
    /// in their environment.
    #[arg(long, env = "RAG_LISTEN_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub listen_database_url: Option<String>,
    /// Memory limit of the parser child process (MiB of address space).
    #[arg(long, env = "RAG_PARSE_MEMORY_MIB", default_value_t = 512)]
    pub parse_memory_mib: u64,
    /// CPU-time limit of the parser child process for the largest files
    /// (seconds); smaller files get less (see --parse-cpu-floor-secs).
    #[arg(long, env = "RAG_PARSE_CPU_SECS", default_value_t = 60)]
    pub parse_cpu_secs: u64,
    /// Wall-clock limit of one parse of the largest files; the child is
    /// killed then (seconds). Smaller files get 10 x their CPU budget.
    #[arg(long, env = "RAG_PARSE_WALL_SECS", default_value_t = 120)]
    pub parse_wall_secs: u64,
    /// Most a PDF's drawing streams may inflate to, summed over every use (MiB).
    #[arg(long, env = "RAG_PARSE_MAX_INFLATED_MIB", default_value_t = 256)]
    pub parse_max_inflated_mib: u64,
    /// Largest extracted text accepted from one document (MiB).
    #[arg(long, env = "RAG_PARSE_MAX_TEXT_MIB", default_value_t = 32)]
    pub parse_max_text_mib: u64,
    // Parse budgets that scale with the input (issue #18).
    /// CPU time of a parse of the smallest file (seconds); it grows with the
    /// file's size up to --parse-cpu-secs.
    #[arg(long, env = "RAG_PARSE_CPU_FLOOR_SECS", default_value_t = crate::rag::budget::DEFAULT_CPU_FLOOR_SECS)]
    pub parse_cpu_floor_secs: u64,
    /// KiB of input that earn a parse one more CPU second above the floor.
    #[arg(long, env = "RAG_PARSE_CPU_KIB_PER_SEC", default_value_t = crate::rag::budget::KIB_PER_CPU_SEC)]
    pub parse_cpu_kib_per_sec: u64,
    // Retry policy (issue #18 item 6).
    /// Which failed attempts are retried: `transient` (timeouts, database
    /// errors) or `all` (every failure, up to --max-retries).
    #[arg(long, env = "RAG_RETRY_POLICY", value_parser = RetryPolicy::parse, default_value = "transient")]
    pub retry_policy: RetryPolicy,
    // Slots of a worker process (issue #18 items 1 and 4).
    /// Jobs one worker process runs at once, each in its own slot with its
    /// own lease [default: the machine's CPUs; 1 to 64].
    #[arg(long, env = "RAG_WORKER_CONCURRENCY", default_value_t = default_concurrency())]
    pub concurrency: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub embed: crate::embed::EmbedOpts,
}

/// Most slots one worker process may run (`--concurrency`).
pub const MAX_CONCURRENCY: usize = 64;

/// One slot per CPU: a parse is CPU-bound in its child process.
fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_CONCURRENCY)
}

/// Which failed job attempts are retried (`--retry-policy`).
#[derive(clap::ValueEnum, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetryPolicy {
    /// Only failures a retry can change; a corrupt file fails at once.
    #[default]
    Transient,
    /// Every failure, the seed's behaviour: a corrupt file is tried
    /// 1 + --max-retries times before it is `failed`.
    All,
}

impl RetryPolicy {
    /// clap's own message names only the flag; this one names the variable
    /// too, since a bad value often comes from the environment.
    fn parse(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| "expected `transient` or `all` (--retry-policy / RAG_RETRY_POLICY)".into())
    }

    /// Whether a failed attempt is retried (while retries remain).
    pub fn retries(self, transient: bool) -> bool {
        transient || self == RetryPolicy::All
    }
}

impl RuntimeOpts {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |flag, var, problem: &str| ConfigError::Invalid {
            flag,
            var,
            problem: problem.to_string(),
        };
        if self.max_retries < 0 {
            return Err(invalid("--max-retries", "RAG_MAX_RETRIES", "must be >= 0"));
        }
        if self.chunk_size < 50 {
            return Err(invalid("--chunk-size", "RAG_CHUNK_SIZE", "must be >= 50"));
        }
        if self.chunk_overlap >= self.chunk_size {
            return Err(invalid(
                "--chunk-overlap",
                "RAG_CHUNK_OVERLAP",
                "must be smaller than --chunk-size",
            ));
        }
        if self.job_lease_secs < 2 {
            return Err(invalid(
                "--job-lease-secs",
                "RAG_JOB_LEASE_SECS",
                "must be >= 2",
            ));
        }
        if self.pool_size < 2 {
            return Err(invalid("--pool-size", "RAG_DB_POOL_SIZE", "must be >= 2"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(invalid(
                "--concurrency",
                "RAG_WORKER_CONCURRENCY",
                "must be between 1 and 64",
            ));
        }
        self.check_parse_limits()
    }

    fn check_parse_limits(&self) -> Result<(), ConfigError> {
        let at_least = |flag, var, value: u64, min: u64| {
            if value >= min {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    flag,
                    var,
                    problem: format!("must be >= {min}"),
                })
            }
        };
        // Below 64 MiB the child cannot even map the binary and its stack.
        at_least(
            "--parse-memory-mib",
            "RAG_PARSE_MEMORY_MIB",
            self.parse_memory_mib,
            64,
        )?;
        at_least(
            "--parse-cpu-secs",
            "RAG_PARSE_CPU_SECS",
            self.parse_cpu_secs,
            1,
        )?;
        at_least(
            "--parse-wall-secs",
            "RAG_PARSE_WALL_SECS",
            self.parse_wall_secs,
            1,
        )?;
        at_least(
            "--parse-max-inflated-mib",
            "RAG_PARSE_MAX_INFLATED_MIB",
            self.parse_max_inflated_mib,
            1,
        )?;
        at_least(
            "--parse-max-text-mib",
            "RAG_PARSE_MAX_TEXT_MIB",
            self.parse_max_text_mib,
            1,
        )?;
        // RLIMIT_CPU counts whole seconds; 0 would mean no limit at all.
        at_least(
            "--parse-cpu-floor-secs",
            "RAG_PARSE_CPU_FLOOR_SECS",
            self.parse_cpu_floor_secs,
            1,
        )?;
        at_least(
            "--parse-cpu-kib-per-sec",
            "RAG_PARSE_CPU_KIB_PER_SEC",
            self.parse_cpu_kib_per_sec,
            1,
        )
    }

    /// The same settings as flags, for child processes: each serialised
    /// field as `--long=value`, in declaration order; unset options and the
    /// `#[serde(skip)]` fields are left out.
    pub fn to_args(&self) -> Vec<String> {
        let values = serde_json::to_value(self).expect("RuntimeOpts serialises");
        let cmd = <Self as clap::Args>::augment_args(clap::Command::new("runtime"));
        cmd.get_arguments()
            .filter_map(|arg| {
                let value = match values.get(arg.get_id().as_str())? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some(format!("--{}={value}", arg.get_long()?))
            })
            .collect()
    }

    /// The bounds of the parser child process.
    pub fn parse_limits(&self) -> crate::rag::sandbox::Limits {
        crate::rag::sandbox::Limits {
            memory_bytes: self.parse_memory_mib << 20,
            cpu_secs: self.parse_cpu_secs,
            wall: Duration::from_secs(self.parse_wall_secs),
            cpu_floor_secs: self.parse_cpu_floor_secs,
            cpu_kib_per_sec: self.parse_cpu_kib_per_sec,
            max_inflated_bytes: self.parse_max_inflated_mib << 20,
            max_text_bytes: self.parse_max_text_mib << 20,
        }
    }

    /// The URL LISTEN connections use.
    pub fn listen_url(&self, database_url: &str) -> String {
        non_empty(&self.listen_database_url).unwrap_or_else(|| database_url.to_string())
    }
}

/// Parses durations like `90s`, `15m`, `1h`, `2d`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 30s, 15m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Limits of the API process under hostile load (`serve` only; workers
/// keep their own settings).
#[derive(clap::Args, Debug, Clone)]
pub struct ApiLimitOpts {
    /// Upload bytes held in memory at once, all users together; an upload
    /// that finds no room is refused with 503 and Retry-After.
    #[arg(long, env = "RAG_UPLOAD_BUDGET_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub upload_budget_bytes: usize,
    /// The share of that budget one user may hold (429 beyond it)
    /// [default: half the budget, at least --max-upload-bytes].
    #[arg(long, env = "RAG_UPLOAD_USER_BUDGET_BYTES")]
    pub upload_user_budget_bytes: Option<usize>,
    /// statement_timeout of the API's database connections (ms; 0 = none).
    #[arg(long, env = "RAG_STATEMENT_TIMEOUT_MS", default_value_t = 15_000)]
    pub statement_timeout_ms: u64,
    // Per-user shares: WebSockets, chat searches, the upload floor.
    /// Most WebSockets one user holds on this process (429 beyond it):
    /// tabs × devices, with room to spare.
    #[arg(long, env = "RAG_WS_MAX_PER_USER", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_max_per_user: u64,
    /// Most chat questions one user may have being answered at once (429
    /// beyond it).
    #[arg(long, env = "RAG_MAX_SEARCHES_PER_USER", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_searches_per_user: u64,
    /// Connections of the API's pool chat searches may hold at once, all
    /// users together; REST keeps the rest [default: a third of
    /// --pool-size, at least 1].
    #[arg(long, env = "RAG_SEARCH_POOL_SIZE")]
    pub search_pool_size: Option<usize>,
    /// Upload bytes each user can always reserve while few users upload: a
    /// quarter of the upload budget is kept for every user's first this
    /// many bytes (0: no floor, no reserve).
    #[arg(long, env = "RAG_UPLOAD_FLOOR_BYTES", default_value_t = 1024 * 1024)]
    pub upload_floor_bytes: usize,
}

impl ApiLimitOpts {
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }

    pub fn user_upload_budget(&self, max_upload_bytes: usize) -> usize {
        self.upload_user_budget_bytes
            .unwrap_or((self.upload_budget_bytes / 2).max(max_upload_bytes))
            .min(self.upload_budget_bytes)
    }

    /// The search pool: the flag, or a third of the pool, at least 1.
    pub fn search_pool_size(&self, pool_size: usize) -> usize {
        self.search_pool_size.unwrap_or((pool_size / 3).max(1))
    }

    /// The search pool must leave REST at least one connection.
    pub fn check_search_pool(&self, pool_size: usize) -> Result<(), ConfigError> {
        let size = self.search_pool_size(pool_size);
        if size == 0 || size >= pool_size {
            return Err(ConfigError::Invalid {
                flag: "--search-pool-size",
                var: "RAG_SEARCH_POOL_SIZE",
                problem: format!(
                    "must be at least 1 and less than --pool-size ({pool_size}), \
                     so that REST keeps connections searches cannot take"
                ),
            });
        }
        Ok(())
    }

    /// `max_upload_bytes` is the runtime's: an upload of the largest
    /// accepted size must fit in both budgets.
    pub fn check(&self, max_upload_bytes: usize) -> Result<(), ConfigError> {
        let invalid = |flag, var, problem: String| ConfigError::Invalid { flag, var, problem };
        if self.upload_budget_bytes < max_upload_bytes {
            return Err(invalid(
                "--upload-budget-bytes",
                "RAG_UPLOAD_BUDGET_BYTES",
                format!("must be at least --max-upload-bytes ({max_upload_bytes})"),
            ));
        }
        if self.user_upload_budget(max_upload_bytes) < max_upload_bytes {
            return Err(invalid(
                "--upload-user-budget-bytes",
                "RAG_UPLOAD_USER_BUDGET_BYTES",
                format!("must be at least --max-upload-bytes ({max_upload_bytes})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Limits {
        #[command(flatten)]
        limits: ApiLimitOpts,
    }

    #[test]
    fn the_search_pool_leaves_rest_connections() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = std::iter::once("ragctl").chain(args.iter().copied());
            Limits::try_parse_from(argv).unwrap().limits
        };
        let default = parse(&[]);
        assert_eq!(default.search_pool_size(16), 5);
        assert_eq!(default.search_pool_size(2), 1);
        assert!(default.check_search_pool(2).is_ok());
        let e = parse(&["--search-pool-size", "4"]).check_search_pool(4);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("--search-pool-size / RAG_SEARCH_POOL_SIZE"),
            "{e}"
        );
        assert!(
            parse(&["--search-pool-size", "0"])
                .check_search_pool(4)
                .is_err()
        );
        let zero = ["ragctl", "--ws-max-per-user", "0"];
        assert!(
            Limits::try_parse_from(zero).is_err(),
            "a cap of 0 is refused"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn channel_names() {
        assert!(validate_channel("rag_events").is_ok());
        for bad in ["", "Rag", "1abc", "a-b", &"a".repeat(64)] {
            let e = validate_channel(bad).unwrap_err().to_string();
            assert!(e.contains("--channel / RAG_EVENTS_CHANNEL"), "{e}");
        }
    }

    #[derive(clap::Parser)]
    struct Runtime {
        #[command(flatten)]
        rt: RuntimeOpts,
    }

    fn parse_runtime(args: &[String]) -> RuntimeOpts {
        use clap::Parser;
        let argv = std::iter::once("ragctl".to_string()).chain(args.iter().cloned());
        Runtime::try_parse_from(argv).expect("to_args parses").rt
    }

    #[test]
    fn to_args_round_trips_every_worker_knob() {
        let mut rt = parse_runtime(&[
            "--max-upload-bytes=7".into(),
            "--retry-backoff-ms=9".into(),
            "--pool-size=3".into(),
            "--listen-database-url=postgres://l/db".into(),
            "--parse-max-text-mib=5".into(),
            "--retry-policy=all".into(),
            "--parse-cpu-floor-secs=4".into(),
            "--concurrency=5".into(),
            "--llm-url=http://llm".into(),
            "--llm-api-key=sk".into(),
            "--embed-url=http://e:1/v1/embeddings".into(),
            "--embed-api-key=ek".into(),
            "--embed-name=n2".into(),
        ]);
        let args = rt.to_args();
        assert!(args.contains(&"--pool-size=3".to_string()), "{args:?}");
        assert!(args.contains(&"--retry-policy=all".to_string()), "{args:?}");
        assert!(args.contains(&"--parse-cpu-floor-secs=4".to_string()));
        assert!(args.contains(&"--concurrency=5".to_string()), "{args:?}");
        assert!(args.contains(&"--embed-url=http://e:1/v1/embeddings".to_string()));
        assert!(args.contains(&"--embed-name=n2".to_string()), "{args:?}");
        assert!(
            !args.iter().any(|a| a.contains("ek") && a.contains("key")),
            "the embeddings key goes through the environment: {args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--llm")),
            "the LLM knobs stay with the API: {args:?}"
        );
        assert!(
            !args.iter().any(|a| a.contains("postgres://")),
            "no URL (password) on a command line: {args:?}"
        );
        let back = parse_runtime(&args);
        (rt.llm_url, rt.llm_api_key, rt.listen_database_url) = (None, None, None);
        rt.embed.embed_api_key = None;
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&rt).unwrap()
        );
    }

    #[test]
    fn concurrency_is_1_to_64_and_a_bad_one_names_flag_and_variable() {
        let with = |n: usize| {
            let rt = parse_runtime(&[format!("--concurrency={n}")]);
            assert_eq!(rt.concurrency, n);
            rt.check()
        };
        for ok in [1, 2, 64] {
            assert!(with(ok).is_ok(), "{ok} slots");
        }
        for bad in [0, 65, 1000] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("--concurrency / RAG_WORKER_CONCURRENCY"), "{e}");
        }
        let default = parse_runtime(&[]).concurrency;
        assert!((1..=MAX_CONCURRENCY).contains(&default), "{default}");
        assert!(parse_runtime(&[]).check().is_ok());
    }

    #[test]
    fn missing_database_names_flag_and_variable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ConnectOpts {
            state_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let e = opts.database_url().unwrap_err().to_string();
        assert!(
            e.contains("--database-url") && e.contains("DATABASE_URL"),
            "{e}"
        );
    }
}
