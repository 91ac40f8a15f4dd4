//! The middleware in front of every route: the token is verified once here
//! and the [`AuthUser`] left in the request's extensions for the handler's
//! extractor, and the request is counted against its user
//! (`per_user::UserRequests`). Requests without a valid token are not
//! counted (they end at once with 401), nor are health checks.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::request::bearer;
use super::state::AppState;
use crate::auth::AuthUser;

/// Paths never counted: a health checker must always get through.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The middleware: verifies the bearer token once, counts the request
/// against its user until the response body has been written (a `/ws`
/// upgrade until its 101 is; the socket then is not a request).
pub async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(user) = bearer(req.headers()).and_then(|t| state.verifier.verify(t).ok()) else {
        return next.run(req).await;
    };
    let permit = match state.requests.try_acquire(user.user_id) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert::<AuthUser>(user);
    super::guard_body::hold(next.run(req).await, permit)
}
