//! Publishing: paced, pipelined `pg_notify` on a runtime of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::record::{Clock, event_payload};

/// Executes a publisher connection keeps in flight (pipelined).
pub(super) const MAX_IN_FLIGHT: usize = 16;

pub(super) struct Publisher {
    pub(super) client: Client,
    pub(super) stmt: Statement,
}

pub(super) struct Published {
    pub(super) first_ns: u64,
    pub(super) last_commit_ns: u64,
    pub(super) errors: u64,
}

/// A thread of its own for the publishers, so that their pacing and commit
/// instants do not queue behind the thousands of client tasks of the main
/// runtime. Dropping it stops the thread.
pub(super) struct PublishRuntime {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) _stop: tokio::sync::oneshot::Sender<()>,
}

impl PublishRuntime {
    pub(super) fn start() -> anyhow::Result<PublishRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the publishers' runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-publish".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .context("cannot start the publishers' thread")?;
        Ok(PublishRuntime {
            handle,
            _stop: stop,
        })
    }
}

pub(super) async fn connect_publisher(url: &str) -> anyhow::Result<Arc<Publisher>> {
    let (client, conn) = crate::db::connect(url, "ragctl-bench-publisher").await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let stmt = client.prepare("SELECT pg_notify($1, $2)").await?;
    Ok(Arc::new(Publisher { client, stmt }))
}

/// What a phase publishes: events `0..n` of `phase`, spread over `users`.
pub(super) struct Batch {
    pub(super) phase: u32,
    pub(super) n: usize,
    pub(super) users: Arc<Vec<Uuid>>,
}

/// What every publisher of a phase shares: the batch, the pace, where the
/// commit instants go.
struct Plan {
    channel: String,
    batch: Arc<Batch>,
    /// Commit instant of each event, stored by the publisher that sent it.
    commits: Arc<Vec<AtomicU64>>,
    /// Events per second, over all publishers.
    rate: f64,
    /// When event 0 is due.
    t0: tokio::time::Instant,
    clock: Clock,
    /// Publishers sharing the batch: publisher `k` sends `k, k + P, ...`.
    publishers: usize,
}

/// Publishes events `k, k + P, ...` of the batch from publisher `k`, event
/// `i` due at `t0 + i / rate`, at most [`MAX_IN_FLIGHT`] pipelined; stores
/// each commit instant in `commits`. Returns how many failed.
async fn publish_share(publisher: Arc<Publisher>, k: usize, plan: Arc<Plan>) -> u64 {
    let (client, stmt) = (&publisher.client, &publisher.stmt);
    let channel: &str = &plan.channel;
    let mut errors = 0;
    let mut next = k;
    let mut inflight = FuturesUnordered::new();
    loop {
        let can_send = next < plan.batch.n && inflight.len() < MAX_IN_FLIGHT;
        if !can_send && inflight.is_empty() {
            break;
        }
        let due = plan.t0 + Duration::from_secs_f64(next as f64 / plan.rate);
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                let (seq, ok): (usize, bool) = done;
                if ok {
                    plan.commits[seq].store(plan.clock.ns().max(1), Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            _ = tokio::time::sleep_until(due), if can_send => {
                let seq = next;
                let payload = event_payload(plan.batch.phase, seq, &plan.batch.users);
                inflight.push(async move {
                    let params: [&(dyn ToSql + Sync); 2] = [&channel, &payload];
                    (seq, client.execute(stmt, &params).await.is_ok())
                });
                next += plan.publishers;
            }
        }
    }
    errors
}

/// Publishes the batch at `rate` from every publisher (on `runtime`) and
/// waits for the last commit.
pub(super) async fn publish(
    runtime: &tokio::runtime::Handle,
    publishers: &[Arc<Publisher>],
    channel: &str,
    batch: Arc<Batch>,
    commits: Arc<Vec<AtomicU64>>,
    rate: u32,
    clock: Clock,
) -> anyhow::Result<Published> {
    let plan = Arc::new(Plan {
        channel: channel.to_string(),
        batch,
        commits,
        rate: rate as f64,
        t0: tokio::time::Instant::now() + Duration::from_millis(20),
        clock,
        publishers: publishers.len(),
    });
    let first_ns = clock.ns() + 20_000_000;
    let mut tasks = JoinSet::new();
    for (k, p) in publishers.iter().enumerate() {
        tasks.spawn_on(publish_share(p.clone(), k, plan.clone()), runtime);
    }
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.context("publisher task")?;
    }
    let last_commit_ns = plan
        .commits
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Ok(Published {
        first_ns,
        last_commit_ns,
        errors,
    })
}
