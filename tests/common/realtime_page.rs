//! A page that runs `realtime.js` with tokens the test hands it: the
//! statuses it reports, the frames it got, the tokens it asked for.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::PATIENCE;
use super::chrome::Page;

const HARNESS: &str = "(async (BACKOFF_MS, API) => {
  const { connect } = await import(API + '/realtime.js');
  const t = window.__t = { wanted: 0, waiters: [], statuses: [], frames: 0, lastFrameAt: 0 };
  t.give = (token) => { t.waiters.shift()(token); return true; };
  t.client = connect({
    url: API.replace(/^http/, 'ws') + '/ws',
    getToken: () => new Promise((r) => { t.wanted += 1; t.waiters.push(r); }),
    onEvent: () => { t.frames += 1; t.lastFrameAt = Date.now() / 1000; },
    onStatus: (s) => t.statuses.push(s),
    backoffBaseMs: BACKOFF_MS,
    backoffMaxMs: Math.max(30000, BACKOFF_MS),
  });
  return true;
})";

/// Starts `HARNESS` with a backoff base of `backoff_ms`, against the
/// page's own origin.
pub async fn harness(page: &mut Page, backoff_ms: u64) {
    page.eval(&format!("{HARNESS}({backoff_ms}, location.origin)"))
        .await;
}

/// The same against the API at `api` (another origin than the page's).
/// `false` if the page could not even import `realtime.js` from it.
pub async fn harness_from(page: &mut Page, backoff_ms: u64, api: &str) -> bool {
    let api = serde_json::to_string(api).unwrap();
    let started = format!("{HARNESS}({backoff_ms}, {api}).catch(() => false)");
    page.eval(&started).await == serde_json::Value::Bool(true)
}

pub const STATE: &str =
    "({wanted: __t.wanted, statuses: __t.statuses, frames: __t.frames, last: __t.lastFrameAt})";

pub fn statuses(state: &Value) -> Vec<&str> {
    state["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

/// Hands the page tokens signed with another secret until `realtime.js`
/// reports `unauthorized`; returns the expression that hands one more.
pub async fn refuse_until_unauthorized(page: &mut Page) -> String {
    let refused = ragctl::auth::mint(
        "another-secret",
        uuid::Uuid::new_v4(),
        Duration::from_secs(600),
    )
    .unwrap();
    let give = format!(
        "__t.waiters.length > 0 && __t.give({})",
        serde_json::to_string(&refused).unwrap()
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        page.eval(&give).await;
        let state = page.eval(STATE).await;
        if statuses(&state).contains(&"unauthorized") {
            return give;
        }
        assert!(Instant::now() < deadline, "never stopped: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
