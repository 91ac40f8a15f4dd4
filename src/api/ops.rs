//! `/healthz` (liveness: the process is up), `/readyz` (readiness: a pool
//! connection can be had and answers and, with realtime on, the listener is
//! connected) and `/metrics` (Prometheus): on a listener of its own
//! (`--metrics-addr`), and on the API port only to the bearer of
//! `--metrics-token` (not served there otherwise).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::conn::{self, METRICS_MAX_CONNECTIONS};
use super::error::ApiError;
use super::request::bearer;
use super::state::AppState;
use crate::config::BusKind;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn database_ok(state: &AppState) -> Result<(), String> {
    let pool = state.pool.status();
    // Requests already queue for a connection: this one would too.
    if pool.available == 0 && pool.size >= pool.max_size && pool.waiting > 0 {
        return Err(format!(
            "the connection pool is exhausted: {} of {} connections busy, {} requests waiting",
            pool.size, pool.max_size, pool.waiting
        ));
    }
    let check = async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        Ok::<_, String>(())
    };
    tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .unwrap_or_else(|_| {
            Err("no database connection answered within 3 s (pool busy or database slow)".into())
        })
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let db = database_ok(&state).await;
    let listener = state
        .bridge
        .as_ref()
        .map(|b| (b.bus, b.listener.status.borrow().clone()));
    // A LISTEN connection down means the database is in trouble; NATS down
    // leaves business unaffected (realtime heals when it is back), so it is
    // reported, not a reason to be taken out of rotation.
    let listener_ok = listener
        .as_ref()
        .is_none_or(|(bus, s)| s.connected || *bus == BusKind::Nats);
    let ready = db.is_ok() && listener_ok;
    let pool = state.pool.status();
    let mut body = json!({
        "ready": ready,
        "database": match &db { Ok(()) => json!({"ok": true}), Err(e) => json!({"ok": false, "error": e}) },
        "pool": {
            "max_size": pool.max_size,
            "size": pool.size,
            "available": pool.available,
            "waiting": pool.waiting,
        },
        "bus": state.bus.as_str(),
        "realtime": match &listener {
            None => json!({"enabled": false}),
            Some((bus, s)) => json!({
                "enabled": true,
                "bus": bus.as_str(),
                "bus_connected": s.connected,
                "listener_connected": s.connected && *bus == BusKind::Postgres,
                "reconnects": s.reconnects,
                "last_error": s.last_error,
                "notification_queue_usage": s.queue_usage,
            }),
        },
    });
    if state.bus == crate::config::BusKind::Nats {
        let role = state
            .relay
            .as_ref()
            .map_or("off", |r| r.role.borrow().as_str());
        body["relay"] = json!({ "role": role });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response();
    };
    // Gauges read from live state at scrape time, off the hot path.
    if let Some(hub) = &state.hub {
        let s = hub.stats();
        metrics::gauge!("ragctl_ws_sockets").set(s.sockets as f64);
        metrics::gauge!("ragctl_ws_users").set(s.users as f64);
    }
    if let Some(bridge) = &state.bridge {
        let status = bridge.listener.status.borrow().clone();
        let connected = if status.connected { 1.0 } else { 0.0 };
        match bridge.bus {
            BusKind::Postgres => metrics::gauge!("ragctl_listener_connected").set(connected),
            BusKind::Nats => metrics::gauge!("ragctl_bus_connected").set(connected),
        }
        let last = bridge
            .listener
            .counters
            .last_notification_ms
            .load(Ordering::Relaxed);
        if last > 0 {
            let age = chrono::Utc::now().timestamp_millis() as f64 / 1000.0 - last as f64 / 1000.0;
            metrics::gauge!("ragctl_listener_last_notification_age_seconds").set(age.max(0.0));
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// `/metrics` on the API port: for the bearer of `--metrics-token` only.
pub async fn metrics_on_api(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let refuse = |reason: &'static str| {
        metrics::counter!("ragctl_metrics_refused_total", "reason" => reason).increment(1);
    };
    let Some(want) = &state.http.metrics_token else {
        refuse("disabled");
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "/metrics is not served on the API port: set --metrics-token / RAG_METRICS_TOKEN \
             to read it here with `Authorization: Bearer <token>`, or --metrics-addr / \
             RAG_METRICS_ADDR for a listener of its own",
        )
        .into_response();
    };
    let given = bearer(&headers).unwrap_or("");
    if !same_secret(given.as_bytes(), want.as_bytes()) {
        refuse("bad_token");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics wants `Authorization: Bearer` with the --metrics-token (RAG_METRICS_TOKEN)",
        )
        .into_response();
    }
    metrics(State(state)).await
}

/// Compares in time that depends on the lengths only, not on where the
/// first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `/metrics` alone on its own listener until `state.shutdown`.
pub async fn serve_metrics(listener: TcpListener, state: AppState) {
    let shutdown = state.shutdown.clone();
    let http = state.http.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state);
    let limiter = conn::Limiter::new("metrics", METRICS_MAX_CONNECTIONS, None, http.stall);
    conn::serve(listener, app, limiter, &http, shutdown).await;
}
