//! A frontend on another origin (`serve --cors-origin`): preflights and
//! answers, errors included, carry the CORS headers for allowed origins
//! only, nothing changes without the flag, a bad origin stops `serve`, and
//! in a real browser `realtime.js` loaded from another origin tells a
//! refused token from a network error. Each test runs `ragctl serve
//! --no-workers` on a fresh database.

mod common;

use common::chrome::browser_or_skip;
use common::realtime_page::{STATE, harness_from, refuse_until_unauthorized};
use common::*;
use reqwest::Method;
use reqwest::header::HeaderMap;
use uuid::Uuid;

const APP: &str = "http://app.test:5173";

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

async fn preflight(api: &Api, origin: &str) -> reqwest::Response {
    http()
        .request(Method::OPTIONS, format!("{}/documents", api.url))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn get_from(api: &Api, origin: &str, token: &str) -> reqwest::Response {
    http()
        .get(format!("{}/documents", api.url))
        .header("Origin", origin)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn allowed_origins_get_cors_headers_on_preflights_answers_and_errors() {
    let db = TestDb::new();
    let api = Api::start(
        &db,
        &["--cors-origin", &format!("{APP},http://other.test")],
        &[],
    )
    .await;

    let pre = preflight(&api, APP).await;
    assert!(pre.status().is_success(), "{}", pre.status());
    let h = pre.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(APP));
    let methods = header(h, "access-control-allow-methods")
        .unwrap()
        .to_ascii_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = header(h, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_eq!(header(h, "access-control-max-age"), Some("600"));

    let ok = get_from(&api, APP, &token(Uuid::new_v4())).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        header(ok.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    let exposed = header(ok.headers(), "access-control-expose-headers").unwrap();
    assert!(
        exposed.to_ascii_lowercase().contains("retry-after"),
        "{exposed}"
    );

    // An error answer too: the page can read the 401 and its body.
    let refused = get_from(&api, APP, "not-a-token").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header(refused.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].is_object(), "{body}");

    // The second origin of the list; a third is not allowed.
    let other = get_from(&api, "http://other.test", &token(Uuid::new_v4())).await;
    assert_eq!(
        header(other.headers(), "access-control-allow-origin"),
        Some("http://other.test")
    );
    for r in [
        preflight(&api, "http://evil.test").await,
        get_from(&api, "http://evil.test", "x").await,
    ] {
        assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    }
}

#[tokio::test]
async fn without_the_flag_no_answer_carries_cors_headers() {
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let ok = get_from(&api, APP, &token(Uuid::new_v4())).await;
    assert_eq!(ok.status(), 200);
    let pre = preflight(&api, APP).await;
    for h in [ok.headers(), pre.headers()] {
        assert_eq!(header(h, "access-control-allow-origin"), None);
    }
}

#[test]
fn a_bad_origin_stops_serve_naming_the_flag_and_the_variable() {
    for (args, env) in [
        (vec!["--cors-origin", "localhost:5173"], None),
        (vec![], Some("http://a.test,http://b.test/app")),
        (vec!["--cors-origin", "*", "--cors-origin", APP], None),
    ] {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--no-workers"]).args(&args);
        cmd.env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .env("RAG_JWT_SECRET", SECRET)
        .env_remove("RAG_CORS_ORIGINS");
        if let Some(v) = env {
            cmd.env("RAG_CORS_ORIGINS", v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(
            err.contains("--cors-origin") && err.contains("RAG_CORS_ORIGINS"),
            "{err}"
        );
    }
}

/// The page is served from `http://localhost:<port>` and the API is
/// `http://127.0.0.1:<port>`: another origin, on the same server.
fn other_origin(api: &Api) -> String {
    api.url.replace("127.0.0.1", "localhost")
}

#[tokio::test]
async fn realtime_js_from_another_origin_stops_on_a_refused_token() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &["--cors-origin", "*"], &[]).await;
    assert!(api.url.contains("127.0.0.1"), "{}", api.url);
    let mut page = browser
        .page(&format!("{}/healthz", other_origin(&api)))
        .await;
    assert!(
        harness_from(&mut page, 100, &api.url).await,
        "realtime.js loads cross-origin"
    );
    refuse_until_unauthorized(&mut page).await;
    let state = page.eval(STATE).await;
    assert_eq!(
        state["statuses"].as_array().unwrap().last().unwrap()["httpStatus"],
        401,
        "{state}"
    );

    // Without the flag the browser keeps the module from the page at all.
    let plain_db = TestDb::new();
    let plain = Api::start(&plain_db, &[], &[]).await;
    let mut page = browser
        .page(&format!("{}/healthz", other_origin(&plain)))
        .await;
    assert!(
        !harness_from(&mut page, 100, &plain.url).await,
        "blocked without CORS"
    );
}
