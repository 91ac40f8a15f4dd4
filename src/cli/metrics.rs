//! Prometheus exposition shared by `serve` and `worker`: the recorder (with
//! the histograms' buckets) and, for a process without an API port, a
//! listener of its own that serves `/metrics` and nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Buckets of the bridge's delivery latency (seconds): sub-millisecond up.
const DELIVERY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of a job's wait in the queue (seconds): a claim at once up to
/// a backlog of minutes.
const QUEUE_WAIT_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Installs the process's recorder; `None` if one is installed already.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ragctl_bridge_delivery_seconds".into()),
            &DELIVERY_BUCKETS,
        )
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full("ragctl_queue_wait_seconds".into()),
            &QUEUE_WAIT_BUCKETS,
        )
        .ok()?
        .install_recorder()
        .ok()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

/// Binds a metrics address given by `flag` (e.g. "--metrics-addr /
/// RAG_METRICS_ADDR"), named in the error.
pub async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid {flag}: {addr}"))?;
    let listener = TcpListener::bind(parsed)
        .await
        .with_context(|| format!("cannot bind the metrics address {parsed} ({flag})"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "metrics served on their own listener");
    eprintln!("ragctl: metrics on http://{bound}/metrics");
    Ok(listener)
}

/// Most scrapes served at once; a scraper needs one.
const MAX_SCRAPES: usize = 8;

/// Serves `GET /metrics` from `handle` until `shutdown`.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_SCRAPES));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the metrics listener failed");
    }
}

/// `--metrics-addr` of a process with no API (a worker, a relay): binds
/// it if given (a bad address stops the process before it starts work),
/// installs the recorder and serves `/metrics` until `shutdown`.
pub async fn serve_own(
    addr: Option<&str>,
    flag: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = bind(addr, flag).await?;
    Ok(install().map(|handle| tokio::spawn(serve(listener, handle, shutdown.clone()))))
}
