//! The arguments of `ragctl serve`, which `state` builds the API from. A
//! leaf.

use crate::config::{ApiLimitOpts, BusOpts, RelayMode, RetrievalOpts, RuntimeOpts};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to bind.
    #[arg(long, env = "RAG_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Run the API alone; workers run elsewhere (`ragctl worker ...`).
    #[arg(long)]
    pub no_workers: bool,
    /// Disable the bridge and /ws. Business flows and REST are unaffected.
    #[arg(long, env = "RAG_NO_REALTIME")]
    pub no_realtime: bool,
    /// Bound of each WebSocket's outbound queue (frames).
    #[arg(long, env = "RAG_WS_QUEUE", default_value_t = 256)]
    pub ws_queue: usize,
    /// Server ping interval (seconds); peers silent for 3 intervals are dropped.
    #[arg(long, env = "RAG_WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// Close a WebSocket that sent nothing (no pong, no frame) this long
    /// (seconds, 4002); default 3 ping intervals.
    #[arg(long, env = "RAG_WS_IDLE_SECS")]
    pub ws_idle_secs: Option<u64>,
    /// Most WebSocket connections this process holds.
    #[arg(long, env = "RAG_WS_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub ws_max_connections: usize,
    /// Bound of the queue between the LISTEN socket and the router.
    #[arg(long, env = "RAG_BRIDGE_QUEUE", default_value_t = 16_384)]
    pub bridge_queue: usize,
    /// Most open client connections (HTTP and WebSocket); can only lower
    /// what the open-file limit allows, which is the default.
    #[arg(long, env = "RAG_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, from connecting or
    /// from the previous response (so also the keep-alive idle timeout).
    #[arg(long, env = "RAG_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Serve `/metrics` on this address (e.g. 127.0.0.1:9090) instead of
    /// the API port.
    #[arg(long, env = "RAG_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Once the API socket listens, write one JSON line
    /// `{"url","port","pid"}` here (temporary file, then rename); removed
    /// on exit. For harnesses: no log parsing.
    #[arg(long, env = "RAG_READY_FILE")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Most state frames a resuming WebSocket (`/ws?since=`) is sent
    /// before `realtime.resync` replaces the rest.
    #[arg(long, env = "RAG_MAX_CATCHUP", default_value_t = 10_000)]
    pub max_catchup: usize,
    /// Most state frames the bridge pushes to heal one listener gap (rows
    /// changed while it was not listening, for every user with a socket
    /// here); past this, or if the heal's query fails, `realtime.resync`.
    /// 0 turns healing off: every gap is a `realtime.resync`.
    #[arg(long, env = "RAG_MAX_HEAL", default_value_t = 50_000)]
    pub max_heal: usize,
    /// Fault injection for tests of a write committing during a heal: the
    /// bridge waits this long before each heal reads its snapshot (ms).
    #[arg(
        long,
        env = "RAG_BRIDGE_HEAL_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub heal_delay_ms: u64,
    /// Send each event's frames to its user's sockets one system call per
    /// frame, not in one io_uring submission (for hosts whose sandbox
    /// forbids io_uring, and for comparisons; without io_uring the bridge
    /// falls back to this by itself).
    #[arg(long, env = "RAG_NO_IO_URING")]
    pub no_io_uring: bool,
    /// An origin (scheme://host[:port]) whose pages may call the API from a
    /// browser, e.g. a frontend on http://localhost:5173; repeat the flag or
    /// separate origins with commas; `*` allows any. Off by default.
    #[arg(long = "cors-origin", env = "RAG_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Serve the console page at `/` (always on with the embedded database;
    /// off by default with DATABASE_URL).
    #[arg(long, env = "RAG_CONSOLE")]
    pub console: bool,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
    /// The event bus: --bus, --nats-url, --nats-creds, --nats-prefix (#21).
    #[command(flatten)]
    pub bus: BusOpts,
    /// With --bus nats: `auto` makes this serve a relay candidate (one
    /// leads per database and channel), `off` leaves relaying to others.
    #[arg(long, env = "RAG_RELAY", value_enum, default_value_t = RelayMode::Auto)]
    pub relay: RelayMode,
    #[command(flatten)]
    pub limits: ApiLimitOpts,
    /// Chat retrieval: --retrieval, --min-relevance, --min-cosine, --passages.
    #[command(flatten)]
    pub retrieval: RetrievalOpts,
    // Concurrent catch-ups (`/ws?since=`), issue #17.
    /// Most catch-ups (`/ws?since=`) this process runs at once; past it a
    /// resuming upgrade gets 503 `too_many_catchups` with Retry-After.
    #[arg(long, env = "RAG_MAX_CATCHUPS", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_catchups: u64,
    /// Most catch-ups one user runs at once; past it a resuming upgrade
    /// gets 429 `too_many_catchups` with Retry-After.
    #[arg(long, env = "RAG_MAX_CATCHUPS_PER_USER", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_catchups_per_user: u64,
    // Slow clients, requests in flight per user, access to /metrics (#17).
    /// Seconds a request body has before the minimum rate applies: a body
    /// must have arrived by this allowance plus its size over
    /// --min-body-bytes-per-sec, counted from its first read (408 otherwise).
    #[arg(long, env = "RAG_BODY_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// The rate (bytes per second) a request body must keep up with.
    #[arg(long, env = "RAG_MIN_BODY_BYTES_PER_SEC", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub min_body_bytes_per_sec: u64,
    /// Seconds a response write may make no progress (the client reads
    /// nothing) before the connection is closed.
    #[arg(long, env = "RAG_WRITE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_secs: u64,
    /// Seconds a request may wait on its client (for body bytes, or for
    /// room to write its response) before its connection may be shed when
    /// the connection budget is full.
    #[arg(long, env = "RAG_STALL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_secs: u64,
    /// Requests one user may have in flight at once (429 beyond).
    #[arg(long, env = "RAG_MAX_REQUESTS_PER_USER", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_per_user: u64,
    /// Serve `/metrics` on the API port to `Authorization: Bearer <token>`;
    /// without it (use --metrics-addr) the API port does not serve it.
    #[arg(long, env = "RAG_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    // One user's frame rate on the router (issue #17, attack 7).
    /// Frames (events × that user's sockets here) per second the bridge
    /// sends one user; past it, the user's events are coalesced into a heal
    /// from the rows once the budget refills. 0 turns the bound off.
    #[arg(long, env = "RAG_USER_FRAME_RATE", default_value_t = 500)]
    pub user_frame_rate: u32,
    /// Frames one user may be sent at once, over the rate (the bucket's size).
    #[arg(long, env = "RAG_USER_FRAME_BURST", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub user_frame_burst: u32,
    /// With --bus nats: how long a user's subscription outlives their last
    /// socket here (ms), so a reconnecting client does not churn it.
    #[arg(
        long,
        env = "RAG_NATS_UNSUBSCRIBE_GRACE_MS",
        default_value_t = 5_000,
        hide = true
    )]
    pub nats_unsubscribe_grace_ms: u64,
    /// With --bus nats: messages the NATS client buffers per subscription
    /// before it drops them as a slow consumer (healed); the client's own
    /// default if unset (for tests of that heal).
    #[arg(long, env = "RAG_NATS_SUBSCRIPTION_CAPACITY", hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub nats_subscription_capacity: Option<u64>,
}
