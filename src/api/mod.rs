//! The HTTP API: REST, `/ws`, health, readiness, metrics and the console.
//!
//! [`run`] takes its world as arguments (a bound listener and the state,
//! whose `shutdown` token ends it), so tests bind `127.0.0.1:0` and drive
//! the whole server.

mod catchups;
mod chat;
pub mod conn;
mod console;
pub mod cors;
mod documents;
pub mod error;
mod gate;
mod guard_body;
pub mod limits;
mod ops;
mod pages;
pub mod per_user;
mod request;
mod retrieval;
pub mod shares;
mod state;
pub mod ws;
mod ws_config;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::middleware;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use conn::{FdBudget, HttpConfig, WsCount};
pub use documents::read_file;
use error::ApiError;
pub use ops::serve_metrics;
pub use state::{AppState, Shared};
pub use ws_config::WsConfig;

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
            gate::gate,
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
