//! The arguments of `ragctl ws-client`. A leaf.

use std::time::Duration;

use uuid::Uuid;

use crate::config::parse_duration;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit codes: 0 all expectations met (or --count frames received, or the \
connection ended with nothing pending); 1 an expectation or --count was not \
met before --timeout or the end of the connection; 2 usage, connection or \
authentication error.

Examples:
  ragctl ws-client --user $U
  ragctl ws-client --user $U --expect 'job.status_updated kind=parse status=success' \\
      --expect 'document.status_updated status=ingested' --timeout 60s
  ragctl ws-client --user $U --resync --reconnect --format raw
  ragctl ws-client --user $U --since 2026-11-28T10:00:00Z --reconnect")]
pub struct WsClientArgs {
    /// Mint a token for this user with the configured JWT secret.
    #[arg(long, required_unless_present_any = ["token", "headers"])]
    pub user: Option<Uuid>,
    /// Use this JWT instead of minting one (sent as Authorization: Bearer).
    #[arg(long, hide_env_values = true)]
    pub token: Option<String>,
    /// Extra request header, 'Name: value'. An Authorization or a
    /// `Sec-WebSocket-Protocol: bearer, <jwt>` header replaces the minted token.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Ask for `realtime.resync` frames when the server may have missed events.
    #[arg(long)]
    pub resync: bool,
    /// `pretty` (default on a terminal), `json` (JSON Lines, default
    /// otherwise) or `raw` (each frame's text exactly as received).
    #[arg(long, value_enum)]
    pub format: Option<WsFormat>,
    /// 'TYPE key=value ...': wait for a frame of TYPE whose payload has these
    /// values (JSON-typed: retry_count=3 is a number, status=parsed a string;
    /// quote to keep spaces: error_message="no text"). Repeatable; each
    /// expectation needs its own frame.
    #[arg(long = "expect", value_name = "TYPE KEY=VALUE...")]
    pub expect: Vec<String>,
    /// Give up after this long [default: 30s with --expect, else never].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Stop after N frames (or once every expectation is met, if sooner).
    /// Without --expect, fewer than N frames before the end is exit 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Send a ping this often (the client always answers the server's pings).
    #[arg(long, value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Reconnect with exponential backoff when the connection closes or fails.
    #[arg(long)]
    pub reconnect: bool,
    /// Lifetime of the minted token.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Resume: first the state of everything changed since this cursor
    /// (a `realtime.caught_up` cursor or an RFC 3339 time), then live.
    /// With --reconnect, each reconnect resumes from the last cursor seen.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFormat {
    Pretty,
    Json,
    Raw,
}
