//! The console page and `realtime.js` in a real browser: headless Chromium
//! driven over CDP (tests/common/chrome.rs) against a real `ragctl serve`
//! with its workers as separate processes. Skipped, saying why, when no
//! Chromium is installed (see `chrome::chromium`).
//!
//! The page is read through its DOM: each document row carries its status
//! and the statuses it went through (`data-status`, `data-history`). A
//! value set on `window` at the start and still there at the end proves
//! the page was never reloaded.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::chrome::{Browser, Page, browser_or_skip};
use common::realtime_page::{STATE, harness, refuse_until_unauthorized, statuses};
use common::*;
use uuid::Uuid;

const MARKER: &str = "window.__notReloaded";

/// Opens the console with the user's token in the fragment and waits until
/// it is live.
async fn open_console(browser: &Browser, api: &Api, user: Uuid) -> Page {
    let mut page = browser
        .page(&format!("{}/#token={}", api.url, token(user)))
        .await;
    page.wait_for(
        "the console to be live",
        "document.querySelector('#status')?.dataset.status === 'live'",
    )
    .await;
    page.eval(&format!("{MARKER} = true")).await;
    page
}

/// Uploads a file through the page's form; the new document's id.
async fn upload_through_page(page: &mut Page, filename: &str, text: &str) -> String {
    let js = format!(
        "(() => {{
          const dt = new DataTransfer();
          dt.items.add(new File([{text}], {filename}));
          document.querySelector('#upload input[type=file]').files = dt.files;
          document.querySelector('#upload-result').textContent = '';
          document.querySelector('#upload').requestSubmit();
          return true;
        }})()",
        text = serde_json::to_string(text).unwrap(),
        filename = serde_json::to_string(filename).unwrap(),
    );
    page.eval(&js).await;
    let note = page
        .wait_for(
            "the upload's answer",
            "document.querySelector('#upload-result').textContent.replace('uploading…', '')",
        )
        .await;
    assert_eq!(note, format!("uploaded {filename}"));
    page.eval("document.querySelector('#docs tr[data-id]').dataset.id")
        .await
        .as_str()
        .expect("a row for the upload")
        .to_string()
}

/// `{id: status}` as the page shows it.
async fn page_docs(page: &mut Page) -> BTreeMap<String, String> {
    let v = page
        .eval(
            "Object.fromEntries([...document.querySelectorAll('#docs tr[data-id]')]
               .map(r => [r.dataset.id, r.dataset.status]))",
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// `{id: status}` as REST tells it.
async fn rest_docs(api: &Api, user: Uuid) -> BTreeMap<String, String> {
    let (code, body) = get_json(api, user, "/documents").await;
    assert_eq!(code, 200, "{body}");
    body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let field = |k: &str| d[k].as_str().unwrap().to_string();
            (field("id"), field("status"))
        })
        .collect()
}

/// Waits until the page shows what REST says.
async fn wait_equal_to_rest(page: &mut Page, api: &Api, user: Uuid) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (shown, truth) = (page_docs(page).await, rest_docs(api, user).await);
        if shown == truth {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows {shown:?}, REST says {truth:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_not_reloaded(page: &mut Page) {
    assert_eq!(page.eval(MARKER).await, true, "the page was reloaded");
}

fn handbook() -> String {
    std::fs::read_to_string(fixture("handbook.md")).unwrap()
}

#[tokio::test]
async fn an_upload_through_the_console_shows_every_status_live_and_a_cited_answer() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &["--console"], &[]).await;
    let _workers = workers(&db);
    let user = Uuid::new_v4();
    let mut page = open_console(&browser, &api, user).await;
    assert_eq!(
        page.eval("location.hash").await,
        "",
        "the token left the address bar"
    );

    let id = upload_through_page(&mut page, "handbook.md", &handbook()).await;
    let row = format!("document.querySelector('#docs tr[data-id=\"{id}\"]')");
    page.wait_for("ingested", &format!("{row}.dataset.status === 'ingested'"))
        .await;
    assert_eq!(
        page.eval(&format!("{row}.dataset.history")).await,
        "uploaded parsing parsed ingesting ingested"
    );
    assert_eq!(page_docs(&mut page).await, rest_docs(&api, user).await);

    page.eval(
        // A question the handbook answers ("reimbursement" is not in it:
        // that one is now answered "I could not find that").
        "document.querySelector('#question').value = 'How many vacation days do I get?';
         document.querySelector('#chat').requestSubmit(); true",
    )
    .await;
    let sources = page
        .wait_for(
            "a cited answer",
            "[...document.querySelectorAll('#messages li.assistant[data-status=completed] .sources li')]
               .map(l => l.textContent).join('|')",
        )
        .await;
    assert!(
        sources.as_str().unwrap().contains("handbook.md, chunk"),
        "{sources}"
    );
    assert_not_reloaded(&mut page).await;
}

/// The ingest events come while the listener reconnects: the page resyncs
/// (or the bridge heals) and ends on REST's statuses.
#[tokio::test]
async fn the_console_ends_equal_to_rest_when_the_listener_is_killed_mid_upload() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &["--console"], &[]).await;
    let _parse = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let mut page = open_console(&browser, &api, user).await;
    let id = upload_through_page(&mut page, "handbook.md", &handbook()).await;
    // Parsed, and its ingest job waits for a worker.
    wait_status(&api, user, &id, "parsed").await;

    let killed = db
        .query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'ragctl-listener' AND datname = '{}'",
            db.name
        ))
        .await;
    assert_eq!(killed.len(), 1, "exactly one listener backend");
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    wait_status(&api, user, &id, "ingested").await;
    wait_equal_to_rest(&mut page, &api, user).await;
    assert_not_reloaded(&mut page).await;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The API goes away mid-upload (1001) and comes back on the same port;
/// the page reconnects by itself and resumes from its cursor.
#[tokio::test]
async fn the_console_resumes_after_the_api_restarts_mid_upload() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let port = free_port();
    let api = Api::start_port(&db, port, &["--console"], &[]).await;
    let _parse = worker(&db, "parse", &FAST_RETRIES);
    let user = Uuid::new_v4();
    let mut page = open_console(&browser, &api, user).await;
    let id = upload_through_page(&mut page, "handbook.md", &handbook()).await;
    wait_status(&api, user, &id, "parsed").await;

    drop(api); // SIGTERM: sockets get 1001, the process exits.
    let _ingest = worker(&db, "ingest", &FAST_RETRIES);
    // Ingested while no API listens: those events reach nobody.
    let deadline = Instant::now() + PATIENCE;
    let sql = format!("SELECT 1 FROM documents WHERE id = '{id}' AND status = 'ingested'");
    while db.query(&sql).await.is_empty() {
        assert!(Instant::now() < deadline, "never ingested");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = Api::start_port(&db, port, &["--console"], &[]).await;
    wait_equal_to_rest(&mut page, &api, user).await;
    assert!(
        api.metric("ragctl_ws_catchups_total").await >= 1.0,
        "the page did not resume"
    );
    page.wait_for(
        "live again",
        "document.querySelector('#status').dataset.status === 'live'",
    )
    .await;
    assert_not_reloaded(&mut page).await;
}

/// A page at the API's origin running `realtime.js` with `getToken`
/// answered by the test (`__t.give`), and what it saw in `__t`; backoff
/// from `BACKOFF_MS`.
#[tokio::test]
async fn a_ten_second_token_is_refreshed_in_band_twice_and_a_foreign_one_closes_4004() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut page = browser.page(&format!("{}/healthz", api.url)).await;
    harness(&mut page, 100).await;
    let publisher = publisher(&db).await;
    let ten = Duration::from_secs(10);
    let first_exp = now_secs() + 10;
    let (mut given, deadline) = (0, Instant::now() + PATIENCE);
    let state = loop {
        let state = page.eval(STATE).await;
        if statuses(&state).contains(&"unauthorized") {
            break state;
        }
        // Token 1 opens the socket, 2 and 3 refresh it, 4 is another user's.
        while given < state["wanted"].as_u64().unwrap() {
            let owner = if given < 3 { user } else { Uuid::new_v4() };
            let t = ragctl::auth::mint(SECRET, owner, ten).unwrap();
            page.eval(&format!("__t.give({})", serde_json::to_string(&t).unwrap()))
                .await;
            given += 1;
        }
        let env = doc_status(user, Uuid::new_v4(), "parsed");
        publisher.publish(env).await.unwrap();
        assert!(Instant::now() < deadline, "no 4004; page saw {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seen = statuses(&state);
    assert_eq!(
        seen.iter().filter(|s| **s == "connecting").count(),
        1,
        "one socket throughout: {state}"
    );
    assert!(!seen.contains(&"offline"), "the socket closed: {state}");
    let last = state["statuses"].as_array().unwrap().last().unwrap();
    assert_eq!(last["code"], 4004, "{state}");
    assert!(
        state["last"].as_f64().unwrap() > first_exp as f64,
        "no event after the first token's expiry: {state}"
    );
    assert_eq!(
        api.metric("ragctl_ws_refreshes_total{result=\"ok\"}").await,
        2.0
    );
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_token_signed_with_another_secret_stops_realtime_js_without_a_loop() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let mut page = browser.page(&format!("{}/healthz", api.url)).await;
    harness(&mut page, 100).await;
    let give = refuse_until_unauthorized(&mut page).await;
    // Many backoff periods (100 ms base) later, still nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    page.eval(&give).await;
    let state = page.eval(STATE).await;
    assert_eq!(
        statuses(&state),
        ["connecting", "connecting", "unauthorized"],
        "one retry with a fresh token, then stop: {state}"
    );
    assert_eq!(state["statuses"][2]["httpStatus"], 401, "{state}");
    assert_eq!(state["wanted"], 2, "{state}");
}

/// Gives the page's pending `getToken` calls a token of `user`.
async fn give_tokens(page: &mut Page, user: Uuid) {
    let t = serde_json::to_string(&token(user)).unwrap();
    page.eval(&format!("while (__t.waiters.length) __t.give({t}); true"))
        .await;
}

/// Waits until the page's last status is `status`, giving tokens.
async fn wait_status_is(page: &mut Page, user: Uuid, status: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        give_tokens(page, user).await;
        let state = page.eval(STATE).await;
        if statuses(&state).last() == Some(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "never {status}: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user at their cap of sockets (here 1, held by another tab): the
/// handshake fails, the probe answers 429 `too_many_sockets`, and
/// `realtime.js` waits out `Retry-After` and goes on retrying instead of
/// stopping; once the other socket closes, it connects.
#[tokio::test]
async fn realtime_js_waits_out_a_429_and_connects_once_a_socket_is_free() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[("RAG_WS_MAX_PER_USER", "1")]).await;
    let user = Uuid::new_v4();
    let other_tab = Client::connect(&api, user, "").await;
    let mut page = browser.page(&format!("{}/healthz", api.url)).await;
    harness(&mut page, 100).await;
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        give_tokens(&mut page, user).await;
        let state = page.eval(STATE).await;
        let offline = state["statuses"].as_array().unwrap().iter().find(|s| {
            s["status"] == "offline" && s["reason"].as_str().unwrap_or("").contains("HTTP 429")
        });
        if let Some(s) = offline {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no 429 seen: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused["retryInMs"].as_f64().unwrap() >= 2000.0,
        "{refused}"
    );
    drop(other_tab);
    wait_status_is(&mut page, user, "live").await;
    let state = page.eval(STATE).await;
    assert!(!statuses(&state).contains(&"unauthorized"), "{state}");
}

/// The backoff is days long, so only the `online` event, then a hidden tab
/// made visible, can bring the socket back.
#[tokio::test]
async fn online_and_a_visible_tab_reconnect_at_once() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let port = free_port();
    let mut api = Api::start_port(&db, port, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut page = browser.page(&format!("{}/healthz", api.url)).await;
    harness(&mut page, 1_000_000_000).await;
    wait_status_is(&mut page, user, "live").await;
    let wakes = [
        "window.dispatchEvent(new Event('online')); true",
        "Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
         document.dispatchEvent(new Event('visibilitychange')); true",
    ];
    for wake in wakes {
        drop(api); // 1001: the page backs off for days.
        wait_status_is(&mut page, user, "offline").await;
        api = Api::start_port(&db, port, &[], &[]).await;
        page.eval(wake).await;
        wait_status_is(&mut page, user, "live").await;
    }
    let state = page.eval(STATE).await;
    let offline = statuses(&state).iter().filter(|s| **s == "offline").count();
    assert_eq!(offline, 2, "one retry per outage: {state}");
}

/// `getToken` keeps returning the same 3-second token (the session is not
/// renewed in time): the server closes with 4001 and `realtime.js`
/// reconnects at once, no backoff, with the token it fetches then.
#[tokio::test]
async fn an_expired_token_reconnects_at_once_with_a_fresh_one() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let mut page = browser.page(&format!("{}/healthz", api.url)).await;
    // A backoff days long: only the 4001 policy reconnects in time.
    harness(&mut page, 1_000_000_000).await;
    // Long enough to outlive the first handshake on a busy machine; the
    // client's refreshes get the same token back, so it is never renewed.
    let short = ragctl::auth::mint(SECRET, user, Duration::from_secs(5)).unwrap();
    let short = serde_json::to_string(&short).unwrap();
    let fresh = serde_json::to_string(&token(user)).unwrap();
    // The page decides which token a waiter gets from its own statuses,
    // in the same turn of its event loop: a reconnection reported between
    // two of our evals can never be handed the short token.
    let answer = format!(
        "(() => {{ const again = __t.statuses.filter((s) => s.status === 'connecting').length >= 2;
           while (__t.waiters.length) __t.give(again ? {fresh} : {short}); return true; }})()"
    );
    let deadline = Instant::now() + PATIENCE;
    let state = loop {
        page.eval(&answer).await;
        let state = page.eval(STATE).await;
        if statuses(&state).iter().filter(|s| **s == "live").count() == 2 {
            break state;
        }
        assert!(Instant::now() < deadline, "no reconnection: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        statuses(&state),
        ["connecting", "live", "connecting", "live"],
        "{state}"
    );
    // Counted once the close handshake is over, which may be after the
    // new socket is live.
    let metric = "ragctl_ws_closed_total{reason=\"token_expired\"}";
    let deadline = Instant::now() + PATIENCE;
    while api.metric(metric).await < 1.0 {
        assert!(Instant::now() < deadline, "{metric} never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.metric(metric).await, 1.0);
}

/// Without `--console` (and a configured database) the page is off;
/// `realtime.js` is always served.
#[tokio::test]
async fn the_console_is_off_without_the_flag_and_realtime_js_is_always_served() {
    let db = TestDb::new();
    let get = |url: String| async move { http().get(url).send().await.unwrap() };
    let off = Api::start(&db, &[], &[]).await;
    assert_eq!(get(format!("{}/", off.url)).await.status(), 404);
    assert_eq!(get(format!("{}/console.js", off.url)).await.status(), 404);
    let js = get(format!("{}/realtime.js", off.url)).await;
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let served = js.text().await.unwrap();
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/browser/realtime.js"),
    )
    .unwrap();
    assert_eq!(served, file, "/realtime.js is examples/browser/realtime.js");
    drop(off);

    let on = Api::start(&db, &["--console"], &[]).await;
    let page = get(format!("{}/", on.url)).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/console.js"));
    assert_eq!(get(format!("{}/console.js", on.url)).await.status(), 200);
}
