//! The arguments of `ragctl bench`: what every phase reads, so a leaf.

use std::time::Duration;

use crate::config::parse_duration;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without --server-url it creates a database (bench_...) on the configured \
PostgreSQL server (DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres), \
starts `ragctl serve --no-workers --port 0` on it, and removes both at the end. \
With --server-url it uses that server, publishes on its database \
(--database-url) and mints tokens with its --jwt-secret; --server-pid lets it \
read the server's RSS.

Exit codes: 0 the benchmark ran and met its targets; 1 a target was missed \
(named on stderr); 2 usage, connection or start-up error.

Examples:
  ragctl bench
  ragctl bench --rate 5000 --duration 30s --clients 2000 --users 200 --json
  ragctl bench --server-url http://127.0.0.1:8080 --server-pid $(pgrep -n ragctl) --idle-sockets 0
  ragctl bench --sockets 100000 --rate 1000
  ragctl bench --sockets 100000 --instances 6 --bus nats --rate 1000")]
pub struct BenchArgs {
    /// Event rate of the latency runs, events/s.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Length of each latency run (raw, then bridge).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// WebSocket clients receiving events.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Users the clients are spread over evenly; each event goes to one user.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Idle sockets opened to measure the server's memory per socket (0 skips).
    #[arg(long, default_value_t = 10_000)]
    pub idle_sockets: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Benchmark the running server at this base URL (http://host:port)
    /// instead of starting one.
    #[arg(long)]
    pub server_url: Option<String>,
    /// PID of the server at --server-url, to read its RSS from /proc.
    #[arg(long, requires = "server_url")]
    pub server_pid: Option<u32>,
    /// Publisher connections; the rate is split evenly across them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub publishers: u64,
    /// Length of each step of the ceiling search.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,
    /// Skip the ceiling search.
    #[arg(long)]
    pub no_ceiling: bool,
    /// --ws-queue of the server this command starts (frames per socket).
    #[arg(long, default_value_t = 256)]
    pub ws_queue: usize,
    /// Copy the started server's log to stderr.
    #[arg(long)]
    pub server_log: bool,
    /// Also measure the catch-up of a socket resuming with `/ws?since=` on
    /// 10,000 changed documents of one user (inserted into the benchmark's
    /// database; a --server-url server needs --max-catchup ≥ 10000).
    #[arg(long)]
    pub resume: bool,
    /// Instead of the phases above: hold this many WebSockets on the server
    /// at once (spread over source addresses 127.0.0.2, 127.0.0.3, …), with
    /// the server's RSS at 10,000 and at all of them, then measure `--rate`
    /// events/s to a sample of them for `--duration` and one event at a
    /// time to a user with 1,000 sockets, while all are held.
    #[arg(long, default_value_t = 0)]
    pub sockets: usize,
    /// Sockets (one user each) of the --sockets run that receive events.
    #[arg(long, default_value_t = 1000, requires = "sockets")]
    pub sample: usize,
    /// API instances (`serve --no-workers` on one database) the --sockets
    /// run spreads its sockets over (each user's sockets on one instance);
    /// above 1 the clients run in --client-procs processes of the bench.
    #[arg(long, default_value_t = 1, requires = "sockets",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub instances: u16,
    /// Client processes of the --instances run (0: one per 16,000 sockets).
    #[arg(long, default_value_t = 0, requires = "sockets")]
    pub client_procs: usize,
    /// Internal: run as a client process of --instances.
    #[arg(long, hide = true)]
    pub mass_child: bool,
    /// Also measure the capacity across API instances: the raw NOTIFY
    /// ceiling, the CPU per event of an instance with no socket for it, and
    /// the ceiling with 1, 2 and 4 instances (`serve --no-workers` on the
    /// same database) sharing --capacity-sockets sockets.
    #[arg(long, conflicts_with = "server_url")]
    pub capacity: bool,
    /// Sockets of the --capacity phase, spread over the instances.
    #[arg(long, default_value_t = 10_000, value_parser = parse_positive)]
    pub capacity_sockets: usize,
    /// Users of the --capacity phase (each event goes to one user's sockets).
    #[arg(long, default_value_t = 1_000, value_parser = parse_positive)]
    pub capacity_users: usize,
    /// The bus. With --capacity, `nats` measures both buses in the same run
    /// (postgres first, then NATS fed by a `ragctl relay`) with 1, 2, 4 and
    /// 8 instances, then a relay failover (see capacity_bus.rs). With
    /// --sockets N --instances M, the instances' bus (with nats, a
    /// nats-server the bench starts; the instances are relay candidates).
    #[arg(long, value_enum, default_value_t = crate::config::BusKind::Postgres)]
    pub bus: crate::config::BusKind,
    /// The NATS server of `--capacity --bus nats` (default: a nats-server
    /// the benchmark starts, whose CPU it then reads too).
    #[arg(long, requires = "capacity")]
    pub nats_url: Option<String>,
    // Abuse benchmark (#17).
    /// Instead of the phases above: each attack of issue #17 against 50
    /// honest users, on a fresh server per phase (see docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["server_url", "sockets", "capacity", "resume"])]
    pub abuse: bool,
    /// Length of the honest users' measurement in each --abuse phase.
    #[arg(long, default_value = "15s", value_parser = parse_duration, requires = "abuse")]
    pub abuse_duration: Duration,
    /// Run only these attacks (1-7, comma-separated); the baseline always runs.
    #[arg(long, value_delimiter = ',', requires = "abuse",
          value_parser = clap::value_parser!(u8).range(1..=7))]
    pub abuse_only: Vec<u8>,
    /// An argument for the `ragctl serve` of each --abuse phase (repeat it),
    /// e.g. --abuse-serve-arg=--metrics-addr=127.0.0.1:0.
    #[arg(
        long = "abuse-serve-arg",
        allow_hyphen_values = true,
        requires = "abuse"
    )]
    pub abuse_serve_args: Vec<String>,
    /// Stop an attack once the server's RSS passes this (MiB), to protect
    /// the machine; the phase is then reported as aborted (a missed target).
    #[arg(long, default_value_t = 3072, requires = "abuse")]
    pub abuse_rss_abort_mib: u64,
    /// Internal: run as an attacker process of --abuse (attack N).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub abuse_child: Option<u8>,
    /// Instead of the phases above: the fan-out attack. The victim fleet
    /// (--clients over --users) gets --rate events/s for --duration alone,
    /// then while one attacker user holds this many sockets and gets
    /// --attack-rate events/s (compare a server with RAG_USER_FRAME_RATE=0).
    #[arg(long, default_value_t = 0, conflicts_with = "sockets")]
    pub fanout_attack: usize,
    /// Events per second to the attacker of --fanout-attack.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub attack_rate: u32,
    // Queue benchmark (#18).
    /// Instead of the phases above: the job queue under 50 honest users and
    /// one who keeps 10 CPU-bomb PDFs queued, for each number of worker
    /// processes × slots, then the parse scaling from 1 to 2 slots (see
    /// docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["server_url", "sockets", "capacity", "resume", "abuse", "fanout_attack"])]
    pub queue: bool,
    /// Honest documents of each --queue configuration.
    #[arg(long, default_value_t = 1000, value_parser = parse_positive, requires = "queue")]
    pub queue_docs: usize,
    /// Honest uploads per second of --queue (0: as fast as the API allows,
    /// 64 in flight).
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate, requires = "queue")]
    pub queue_rate: f64,
    /// Worker processes of each kind in the --queue configurations.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2], requires = "queue",
          value_parser = clap::value_parser!(u16).range(1..=8))]
    pub queue_processes: Vec<u16>,
    /// Slots per worker process (RAG_WORKER_CONCURRENCY) in the --queue
    /// configurations.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2], requires = "queue",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queue_slots: Vec<u16>,
    /// PDFs of the parse-bound sub-phase of --queue (0 skips it).
    #[arg(long, default_value_t = 200, requires = "queue")]
    pub queue_parse_docs: usize,
    /// Pages of each PDF of the parse-bound sub-phase (40 lines each, about
    /// 4.4 KB a page): enough that parsing, not the queue's round trips,
    /// is most of a job.
    #[arg(long, default_value_t = 128, requires = "queue",
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub queue_parse_pages: u16,
    // Retrieval benchmark (#19).
    /// Instead of the phases above: upload the QA set's corpus (its sibling
    /// `corpus/` directory), ask every question and report recall@1/@5,
    /// MRR, no-answer accuracy and latency for each retrieval mode (see
    /// fixtures/qa/README.md and docs/benchmarks.md).
    #[arg(long, value_name = "SET.jsonl",
          conflicts_with_all = ["server_url", "sockets", "capacity", "resume", "abuse", "fanout_attack", "queue"])]
    pub retrieval: Option<std::path::PathBuf>,
    /// Model directory for the dense and hybrid modes of --retrieval
    /// (handed to each server as RAG_EMBED_MODEL); without it only bm25 runs.
    // No `requires`: a RAG_EMBED_MODEL in the environment must not break
    // the other bench modes.
    #[arg(long, env = "RAG_EMBED_MODEL", value_name = "DIR")]
    pub embed_model: Option<std::path::PathBuf>,
    /// Also measure --retrieval's questions for a user with about this many
    /// chunks (0 skips).
    #[arg(long, default_value_t = 0, requires = "retrieval")]
    pub scale: u64,
    /// The modes --retrieval runs, comma-separated (default: bm25, and
    /// dense and hybrid with --embed-model).
    #[arg(long, value_delimiter = ',', value_parser = ["bm25", "dense", "hybrid"],
          requires = "retrieval")]
    pub modes: Vec<String>,
    // Soak (#20).
    /// Instead of the phases above: everything at once for this long (e.g.
    /// 30m) on a PostgreSQL cluster of its own, with faults, then checks
    /// (see soak.rs and docs/benchmarks.md).
    #[arg(long, value_name = "DURATION", value_parser = parse_soak_length,
          conflicts_with_all = ["server_url", "sockets", "capacity", "resume", "abuse", "fanout_attack", "queue", "retrieval"])]
    pub soak: Option<Duration>,
    /// Users uploading during --soak.
    #[arg(long, default_value_t = 50, value_parser = parse_positive, requires = "soak")]
    pub soak_users: usize,
    /// WebSockets churning during --soak.
    #[arg(long, default_value_t = 1000, value_parser = parse_positive, requires = "soak")]
    pub soak_sockets: usize,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected documents per second (0 or more), got {s:?}"
        )),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got {s:?}")),
    }
}

/// A soak shorter than this is refused (no warm-up to compare with).
const MIN_LENGTH: Duration = Duration::from_secs(10);

/// `--soak`'s value: a duration (`30m`, `90s`, `1h`) of at least 10 s.
fn parse_soak_length(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d < MIN_LENGTH {
        return Err(format!("--soak {s:?} is too short: at least 10s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_length_parses_like_other_durations_and_has_a_floor() {
        assert_eq!(parse_soak_length("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_soak_length("20s"), Ok(Duration::from_secs(20)));
        assert!(parse_soak_length("5s").unwrap_err().contains("too short"));
        assert!(
            parse_soak_length("thirty")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_soak_length("3x")
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
