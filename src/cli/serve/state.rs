//! The API's shared state, built from `serve`'s flags. In-process tests
//! build it the same way (`tests/inprocess.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::args::ServeArgs;
use crate::api::{self, AppState, HttpConfig, Shared, WsConfig};
use crate::auth::Verifier;
use crate::bridge::{self, Bridge, BridgeConfig, Hub, Source};
use crate::bus::SubscriberConfig;
use crate::events::{LocalDelivery, Publisher};
use crate::rag::LlmClient;

/// What the state is made of besides the flags.
pub struct Parts<'a> {
    /// The API's pool, migrated.
    pub pool: Pool,
    pub url: &'a str,
    pub secret: &'a str,
    pub channel: &'a str,
    pub metrics: Option<PrometheusHandle>,
    pub budget: api::FdBudget,
    /// `/metrics` has a listener of its own.
    pub metrics_separate: bool,
    /// Ends `api::run`, the bridge and the sockets.
    pub shutdown: CancellationToken,
    /// Loaded once at start (`--embed-model`/`--embed-url`), or none.
    pub embedder: Option<crate::embed::Embedder>,
    /// The in-process relay candidate, if any.
    pub relay: Option<crate::bus::RelayHandle>,
}

/// The state, and the bridge's task (`None` with `--no-realtime`), which
/// ends once `shutdown` is cancelled.
pub fn build(
    args: &ServeArgs,
    parts: Parts<'_>,
) -> anyhow::Result<(AppState, Option<JoinHandle<()>>)> {
    let rt = &args.runtime;
    let events = Publisher::new(
        parts.pool.clone(),
        parts.channel,
        "api",
        rt.publish_timeout(),
    );
    let (hub, bridge, bridge_task) = realtime(args, &parts, &events)?;
    let retrieval = args.retrieval.resolve(parts.embedder.is_some())?;
    tracing::info!(
        mode = retrieval.mode.as_str(),
        min_relevance = retrieval.min_relevance,
        min_cosine = retrieval.min_cosine,
        passages = retrieval.k,
        "chat retrieval"
    );
    let state = AppState(Arc::new(Shared {
        events,
        verifier: Verifier::new(parts.secret)?,
        max_upload_bytes: rt.max_upload_bytes,
        max_retries: rt.max_retries,
        llm: rt
            .llm_url
            .as_deref()
            .map(|u| LlmClient::new(u, &rt.llm_model, rt.llm_api_key.clone())),
        hub,
        bridge,
        bus: args.bus.bus,
        relay: parts.relay,
        metrics: parts.metrics,
        ws: ws_config(args),
        ws_slots: api::WsCount::new(parts.budget.websockets),
        sockets: TaskTracker::new(),
        limits: api::limits::Limits {
            uploads: api::limits::UploadBudget::new(
                args.limits.upload_budget_bytes,
                args.limits.user_upload_budget(rt.max_upload_bytes),
                args.limits.upload_floor_bytes,
            ),
            canceller: crate::db::Canceller::new(parts.url)?,
            searches: api::shares::SearchGate::new(
                args.limits.max_searches_per_user as usize,
                args.limits.search_pool_size(rt.pool_size),
                api::shares::SEARCH_WAIT,
            ),
            ws_per_user: api::shares::PerUser::new(args.limits.ws_max_per_user as usize),
        },
        http: HttpConfig {
            max_connections: parts.budget.connections,
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            metrics_separate: parts.metrics_separate,
            body: api::conn::BodyRate {
                grace: Duration::from_secs(args.body_timeout_secs),
                min_bytes_per_sec: args.min_body_bytes_per_sec,
            },
            write_timeout: Duration::from_secs(args.write_timeout_secs),
            stall: Duration::from_secs(args.stall_secs),
            max_requests_per_user: args.max_requests_per_user as usize,
            metrics_token: args.metrics_token.clone().filter(|t| !t.trim().is_empty()),
        },
        shutdown: parts.shutdown,
        pool: parts.pool,
        console: args.console,
        cors: api::cors::Cors::parse(&args.cors_origins)?,
        requests: api::per_user::UserRequests::new(args.max_requests_per_user as usize),
        retrieval,
        embedder: parts.embedder,
        vectors: crate::embed::VectorCache::new(args.retrieval.vector_cache_bytes()),
    }));
    Ok((state, bridge_task))
}

fn ws_config(args: &ServeArgs) -> WsConfig {
    let ping = args.ws_ping_secs.max(1);
    WsConfig {
        ping_interval: Duration::from_secs(ping),
        idle_timeout: Duration::from_secs(args.ws_idle_secs.unwrap_or(ping * 3).max(1)),
        max_catchup: args.max_catchup,
        catchups: api::ws::Catchups::new(
            args.max_catchups as usize,
            args.max_catchups_per_user as usize,
        ),
        ..WsConfig::default()
    }
}

type Realtime = (Option<Hub>, Option<Bridge>, Option<JoinHandle<()>>);

/// The hub and the bridge's thread, unless `--no-realtime`.
fn realtime(args: &ServeArgs, parts: &Parts<'_>, events: &Publisher) -> anyhow::Result<Realtime> {
    if args.no_realtime {
        tracing::info!("realtime disabled: no bridge, /ws answers 503");
        return Ok((None, None, None));
    }
    let hub = Hub::new(args.ws_queue);
    // Only what could not be put on PostgreSQL goes straight to the
    // sockets: it reaches no relay either, so with either bus each socket
    // gets an event once.
    events.set_local_delivery(Arc::new(hub.clone()) as Arc<dyn LocalDelivery>);
    let source = source(args, parts)?;
    let (bridge, task) = bridge::start(
        BridgeConfig {
            channel: parts.channel.to_string(),
            queue: args.bridge_queue,
            io_uring: !args.no_io_uring,
            heal: Some(bridge::HealConfig {
                pool: parts.pool.clone(),
                max_rows: args.max_heal,
                channel: parts.channel.to_string(),
                instance: bridge::instance_name(),
                delay: Duration::from_millis(args.heal_delay_ms),
            }),
            throttle: bridge::ThrottleConfig {
                rate: f64::from(args.user_frame_rate),
                burst: f64::from(args.user_frame_burst),
            },
        },
        source,
        hub.clone(),
        parts.shutdown.clone(),
    )
    .context("cannot start the realtime bridge's thread")?;
    Ok((Some(hub), Some(bridge), Some(task)))
}

/// The bridge's source: a LISTEN connection, or NATS (`--bus nats`).
fn source(args: &ServeArgs, parts: &Parts<'_>) -> anyhow::Result<Source> {
    let Some(nats) = args.bus.nats()? else {
        let listen_url = args.runtime.listen_url(parts.url);
        return Ok(Source::Postgres { listen_url });
    };
    Ok(Source::Nats(SubscriberConfig {
        opts: nats,
        channel: parts.channel.to_string(),
        grace: Duration::from_millis(args.nats_unsubscribe_grace_ms),
        max_users: parts.budget.websockets,
        capacity: args.nats_subscription_capacity.map(|c| c as usize),
        name: format!("ragctl-api {}", bridge::instance_name()),
    }))
}
