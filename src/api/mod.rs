//! The HTTP API: REST, `/ws`, health, readiness, metrics and the console.
//!
//! [`run`] takes its world as arguments (a bound listener and the state,
//! whose `shutdown` token ends it), so tests bind `127.0.0.1:0` and drive
//! the whole server.

mod chat;
pub mod conn;
mod console;
pub mod cors;
mod documents;
pub mod error;
mod guard_body;
pub mod limits;
mod ops;
mod pages;
pub mod per_user;
mod retrieval;
pub mod shares;
pub mod ws;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Request, header};
use axum::middleware;
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::auth::{AuthError, AuthUser, Verifier};
use crate::bridge::{Bridge, Hub};
use crate::events::Publisher;
use crate::rag::LlmClient;
pub use conn::{FdBudget, HttpConfig, WsCount};
pub use documents::read_file;
use error::ApiError;
pub use ops::serve_metrics;
pub use ws::WsConfig;

/// Everything a request handler can reach.
pub struct Shared {
    pub pool: Pool,
    pub events: Publisher,
    pub verifier: Verifier,
    pub max_upload_bytes: usize,
    pub max_retries: i32,
    pub llm: Option<LlmClient>,
    /// `None` with `--no-realtime`.
    pub hub: Option<Hub>,
    pub bridge: Option<Bridge>,
    pub metrics: Option<PrometheusHandle>,
    pub ws: WsConfig,
    /// The WebSocket slots (`--ws-max-connections`, within the fd budget).
    pub ws_slots: conn::WsCount,
    pub sockets: TaskTracker,
    pub shutdown: CancellationToken,
    pub limits: limits::Limits,
    pub http: HttpConfig,
    /// Serve the console page at `/` (`--console`, or the embedded database).
    pub console: bool,
    /// Origins a browser may call the API from (`--cors-origin`).
    pub cors: Option<cors::Cors>,
    /// Requests in flight per user (`--max-requests-per-user`).
    pub requests: Arc<per_user::UserRequests>,
    /// Chat retrieval (`--retrieval`, resolved at start; `--min-relevance`,
    /// `--min-cosine`, `--passages`).
    pub retrieval: crate::rag::retrieve::Retrieval,
    /// Embeds questions for dense retrieval (`--embed-model`/`--embed-url`).
    pub embedder: Option<crate::embed::Embedder>,
    /// Users' vectors for dense scoring (`--vector-cache-mib`).
    pub vectors: crate::embed::VectorCache,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// `Authorization: Bearer <token>`, if present.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Verified once already by `per_user::gate`, when valid.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        let token = bearer(&parts.headers).ok_or(AuthError::Missing)?;
        Ok(state.verifier.verify(token)?)
    }
}

/// Path ids that are not UUIDs answer 404 like unknown ones.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

pub fn router(state: AppState) -> Router {
    let upload_limit = state.max_upload_bytes + 64 * 1024;
    let cors = state.cors.clone();
    let app = console::routes(state.console)
        .route(
            "/documents",
            post(documents::upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(documents::list),
        )
        .route("/documents/{id}", get(documents::show).delete(documents::delete))
        .route("/documents/{id}/jobs", get(documents::jobs))
        .route("/conversations", post(chat::create).get(chat::list))
        .route(
            "/conversations/{id}/messages",
            get(chat::messages).post(chat::post_message),
        )
        .route("/ws", get(ws::handler))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            per_user::gate,
        ))
        // Only the path is logged: `/ws?token=` must never reach a log line.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state.clone());
    // Outermost, so that every answer (errors too) carries the headers and
    // a preflight is answered before routing.
    let app = match cors {
        Some(c) => app.layer(c.layer()),
        None => app,
    };
    // Added after CORS, so never under it: no page may read the metrics.
    let metrics = Router::new()
        .route("/metrics", get(ops::metrics_on_api))
        .with_state(state);
    app.merge(metrics)
}

/// Serves until `state.shutdown` is cancelled, then closes every socket
/// with 1001 and waits for them, at most `drain` long.
pub async fn run(listener: TcpListener, state: AppState, drain: Duration) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let sockets = state.sockets.clone();
    let ws = state.ws_slots.clone();
    let http = state.http.clone();
    let limiter = conn::Limiter::new("api", http.max_connections, Some(ws), http.stall);
    let app = router(state);
    conn::serve(listener, app, limiter, &http, shutdown).await;
    sockets.close();
    if tokio::time::timeout(drain, sockets.wait()).await.is_err() {
        tracing::warn!(
            left = sockets.len(),
            "sockets still open after the drain deadline"
        );
    }
    Ok(())
}
