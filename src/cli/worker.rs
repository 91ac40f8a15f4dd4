//! `ragctl worker parse|ingest`: one worker as its own OS process, with
//! `--concurrency` slots.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ConnectOpts, RuntimeOpts};
use crate::db::jobs::JobKind;
use crate::events::Publisher;
use crate::workers::{self, WorkerConfig};

/// The `kind` argument; the queue's own [`JobKind`] knows nothing of clap.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    Parse,
    Ingest,
}

impl From<WorkerKind> for JobKind {
    fn from(k: WorkerKind) -> JobKind {
        match k {
            WorkerKind::Parse => JobKind::Parse,
            WorkerKind::Ingest => JobKind::Ingest,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Which jobs to run.
    pub kind: WorkerKind,
    #[command(flatten)]
    pub runtime: RuntimeOpts,
    /// How long a job in progress may run on after SIGTERM (seconds).
    #[arg(long, env = "RAG_WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Fault injection for crash tests: sleep this long inside every job (ms).
    #[arg(
        long,
        env = "RAG_WORKER_JOB_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub job_delay_ms: u64,
    /// Serve Prometheus `/metrics` (slots, queue wait, failures) on this
    /// address, e.g. 127.0.0.1:9101. Its own variable: `serve`'s
    /// RAG_METRICS_ADDR is inherited by its children, which must not bind it.
    #[arg(long, env = "RAG_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

pub async fn run(connect: ConnectOpts, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    args.runtime.check()?;
    if connect.configured_jwt_secret().is_some() {
        // `serve` starts its workers without it; an operator may not.
        tracing::warn!(
            "this worker was given a JWT secret (--jwt-secret / RAG_JWT_SECRET, or SUPABASE_JWT_SECRET); workers never verify tokens, so start them without it"
        );
    }
    let kind = JobKind::from(args.kind);
    // Only the ingest worker embeds; a bad flag stops it before it starts.
    let embedder = match kind {
        JobKind::Ingest => args.runtime.embed.load()?,
        _ => None,
    };
    let shutdown = CancellationToken::new();
    super::signal::cancel_on_signal(shutdown.clone());
    // Bound first: a bad address stops the worker before it takes a job.
    let metrics_task = super::metrics::serve_own(
        args.metrics_addr.as_deref(),
        "--metrics-addr / RAG_WORKER_METRICS_ADDR",
        &shutdown,
    )
    .await?;
    let url = connect.database_url()?;
    let channel = connect.channel()?;
    let rt = &args.runtime;
    // Pools open connections as they are needed: `--pool-size` is a cap (a
    // slot uses about two: its job and the lease renewal; plus a publish).
    let wanted = workers::pool_size(rt.concurrency);
    if rt.pool_size < wanted {
        tracing::warn!(
            pool_size = rt.pool_size,
            wanted,
            slots = rt.concurrency,
            "--pool-size is small for --concurrency; slots will wait for connections"
        );
    }
    // PostgreSQL may be restarting, or not up yet: wait for it (a signal
    // still stops the worker); a bad URL or credentials fail at once.
    let spec = crate::db::open::Spec {
        url: &url,
        size: rt.pool_size,
        application_name: &format!("ragctl-worker-{}", kind),
        statement_timeout: Duration::ZERO,
    };
    let Some((pool, _)) = crate::db::open::when_up(&spec, &shutdown).await? else {
        tracing::info!("stopped before PostgreSQL could be reached");
        wind_down(&shutdown, metrics_task).await;
        return Ok(ExitCode::SUCCESS);
    };
    let events = Publisher::new(
        pool.clone(),
        &channel,
        &format!("worker:{}", kind),
        rt.publish_timeout(),
    );
    let cfg = WorkerConfig {
        kind,
        owner: workers::owner_id(kind),
        concurrency: rt.concurrency,
        lease: Duration::from_secs(rt.job_lease_secs),
        poll: Duration::from_millis(rt.worker_poll_ms),
        retry_backoff: Duration::from_millis(rt.retry_backoff_ms),
        chunk_size: rt.chunk_size,
        chunk_overlap: rt.chunk_overlap,
        listen_url: rt.listen_url(&url),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        job_delay: Duration::from_millis(args.job_delay_ms),
        embargo: events.embargo(),
        parse_limits: rt.parse_limits(),
        retry_policy: rt.retry_policy,
        embedder,
        max_retries: rt.max_retries,
    };
    workers::run(pool, events, cfg, shutdown.clone()).await;
    wind_down(&shutdown, metrics_task).await;
    Ok(ExitCode::SUCCESS)
}

/// Stops the metrics listener, if any.
async fn wind_down(
    shutdown: &CancellationToken,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
) {
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    /// Every job kind has its worker, but `embed`: the ingest worker runs
    /// those (it holds the model).
    fn worker_kinds_are_the_job_kinds() {
        let names: Vec<String> = WorkerKind::value_variants()
            .iter()
            .map(|k| {
                let name = k.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(name, JobKind::from(*k).as_str());
                name
            })
            .collect();
        assert_eq!(names, JobKind::NAMES[..2]);
        assert_eq!(JobKind::NAMES[2], "embed");
    }
}
