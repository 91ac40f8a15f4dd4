//! What every handler is given: [`Shared`] behind [`AppState`], and the
//! [`AuthUser`] extractor that reads it. Above the settings it holds, below
//! the handlers.

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{self, HttpConfig};
use super::error::ApiError;
use super::per_user::UserRequests;
use super::request::bearer;
use super::ws_config::WsConfig;
use super::{cors, limits};
use crate::auth::{AuthError, AuthUser, Verifier};
use crate::bridge::{Bridge, Hub};
use crate::events::Publisher;
use crate::rag::LlmClient;

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
    /// The event bus (`--bus`), for `/readyz`.
    pub bus: crate::config::BusKind,
    /// The in-process relay candidate (`--bus nats`, unless `--relay off`).
    pub relay: Option<crate::bus::RelayHandle>,
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
    pub requests: Arc<UserRequests>,
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

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Verified once already by `gate::gate`, when valid.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        let token = bearer(&parts.headers).ok_or(AuthError::Missing)?;
        Ok(state.verifier.verify(token)?)
    }
}
