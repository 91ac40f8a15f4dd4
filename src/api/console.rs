//! The console: a page at `/` that shows the caller's documents and their
//! statuses live, with an upload form and a chat box. It is the reference
//! frontend: it uses `realtime.js` and the REST API only, and is compiled
//! into the binary.
//!
//! `/realtime.js` is always served (it is `examples/browser/realtime.js`,
//! the one file a frontend copies); the page itself only when the console
//! is on (`--console`, or the embedded database).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::state::AppState;

const INDEX: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");
const REALTIME_JS: &str = include_str!("../../examples/browser/realtime.js");

/// The page holds a token: nothing but this origin may run or load in it.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served from the binary: a new build must not meet a cached old page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn realtime_js() -> Response {
    asset("text/javascript; charset=utf-8", REALTIME_JS)
}

/// The routes: `/realtime.js`, and with `console` the page and its assets.
pub fn routes(console: bool) -> Router<AppState> {
    let app = Router::new().route("/realtime.js", get(realtime_js));
    if !console {
        return app;
    }
    app.route("/", get(index))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}
