//! The `ragctl` command line: argument parsing, logging, and the one error
//! handler at the edge with explicit exit codes.
//!
//! Exit codes: 0 success, 1 a check failed (an expectation, a timeout),
//! 2 usage, configuration, connection or authentication error. A broken
//! pipe on stdout is a quiet success.

mod bench;
mod emit;
mod failure;
mod metrics;
pub mod queue;
mod relay;
mod rest;
pub mod serve;
mod signal;
mod tap;
mod term_style;
mod text;
mod worker;
mod ws_client;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::{ConnectOpts, parse_duration};
pub use failure::Failure;

#[derive(Parser, Debug)]
#[command(
    name = "ragctl",
    version,
    about = "RAG backend with a cross-process realtime bridge, and the tools to inspect it"
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectOpts,
    /// Log filter (tracing EnvFilter syntax), also RAG_LOG.
    #[arg(long, env = "RAG_LOG", global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the API (REST + /ws), the realtime bridge and, by default, the workers.
    Serve(Box<serve::ServeArgs>),
    /// Run one worker process.
    Worker(worker::WorkerArgs),
    /// Run a NATS relay (--bus nats): LISTEN on the event channel while
    /// leading, republish each envelope to its user's NATS subject.
    Relay(relay::RelayArgs),
    /// Database maintenance.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Print a JWT for a user, signed with the configured secret.
    Token {
        #[arg(long)]
        user: Uuid,
        /// Lifetime, e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
    },
    /// Watch the live NOTIFY traffic on the event channel (TUI, or JSON Lines).
    Tap(tap::TapArgs),
    /// Publish events on the NOTIFY channel as a worker would (or raw
    /// payloads, scenario files, paced load).
    Emit(emit::EmitArgs),
    /// Connect to /ws, print frames, and check expectations.
    WsClient(ws_client::WsClientArgs),
    /// Upload a document through the REST API (optionally wait for a status).
    Upload(rest::UploadArgs),
    /// List a user's documents, show one, or list its jobs.
    Docs(rest::DocsArgs),
    /// Show the job queue: counts, the oldest waiting job, slots in use per
    /// worker, the users with the most jobs.
    Queue(queue::QueueArgs),
    /// Measure the realtime bridge: NOTIFY baseline, bridge latency, ceiling, memory per socket.
    Bench(bench::BenchArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Internal: the parse worker's sandboxed extraction child.
    #[command(name = "__extract", hide = true)]
    Extract(crate::rag::child::ExtractArgs),
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Apply pending migrations.
    Migrate,
    /// Print the configured database URL with the database name replaced
    /// (same server, credentials and options), e.g. for a scratch database.
    Url {
        /// The database name to put in the URL.
        #[arg(long)]
        name: String,
    },
}

fn init_logging(filter: &str) {
    let color = term_style::color_for(&std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The entry point: parse, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The extraction child runs bare: no runtime, no logging, one thread.
    if let Command::Extract(args) = &cli.command {
        return crate::rag::child::child_main(args);
    }
    // Log lines would scribble over a full-screen TUI; it shows its own state.
    let tui = matches!(&cli.command, Command::Tap(a) if tap::use_tui(a.no_tui));
    if !tui {
        init_logging(&cli.log);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ragctl: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Failure>() {
            Some(f) => {
                eprintln!("ragctl: error: {f}");
                ExitCode::from(f.code)
            }
            None => {
                eprintln!("ragctl: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let connect = cli.connect;
    match cli.command {
        Command::Serve(args) => serve::run(connect, *args).await,
        Command::Worker(args) => worker::run(connect, args).await,
        Command::Relay(args) => relay::run(connect, args).await,
        Command::Db {
            command: DbCommand::Migrate,
        } => {
            let url = connect.database_url()?;
            let pool = crate::db::pool(&url, 2, "ragctl-migrate").await?;
            let applied = crate::db::migrate(&pool).await?;
            eprintln!("migrations applied: {applied}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::Url { name },
        } => {
            let url = connect.database_url()?;
            println!("{}", crate::harness::with_db(&url, &name));
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { user, ttl } => {
            let secret = connect.jwt_secret()?;
            println!("{}", crate::auth::mint(&secret, user, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tap(args) => tap::run(connect, args).await,
        Command::Emit(args) => emit::run(connect, args).await,
        Command::WsClient(args) => ws_client::run(connect, args).await,
        Command::Upload(args) => rest::upload(connect, args).await,
        Command::Docs(args) => rest::docs(connect, args).await,
        Command::Queue(args) => queue::run(connect, args).await,
        Command::Bench(args) => bench::run(connect, args).await,
        Command::Extract(args) => Ok(crate::rag::child::child_main(&args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "ragctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of every subcommand (two flags of one name, a
    /// `requires` naming no argument…) run here rather than when a user
    /// first types the command.
    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
