//! The honest users' REST: each user starts one operation a second, in
//! turn list documents, read its conversation, upload a small file, ask a
//! question, open a WebSocket. The schedule does not wait for answers (a
//! slow answer does not thin the load), and every operation counts: any
//! non-2xx answer, transport error or timeout is a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::abuse_seed::HONEST_TEXT;
use super::fleet::{Endpoint, ws_connect};

/// Operations each honest user starts per second.
pub(super) const OPS_PER_S: f64 = 1.0;
/// An operation not done in this long is a failure ("timed out").
const OP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Op {
    ListDocuments,
    ListMessages,
    Upload,
    Ask,
    OpenSocket,
}

const OPS: [Op; 5] = [
    Op::ListDocuments,
    Op::ListMessages,
    Op::Upload,
    Op::Ask,
    Op::OpenSocket,
];

impl Op {
    /// REST operations make the REST latency; a socket's upgrade counts
    /// only for success.
    pub(super) fn is_rest(self) -> bool {
        self != Op::OpenSocket
    }
}

/// One honest user.
pub(super) struct User {
    pub(super) token: Arc<str>,
    pub(super) conversation: Uuid,
}

/// One operation's outcome: its latency, and why it failed if it did.
pub(super) struct Done {
    pub(super) op: Op,
    pub(super) us: u32,
    pub(super) failure: Option<String>,
}

/// What every operation needs.
struct Ctx {
    http: reqwest::Client,
    api: String,
    ep: Endpoint,
}

/// Runs the honest load for `length` and returns every operation's
/// outcome (the last ones finish at most `OP_TIMEOUT` later).
pub(super) async fn run(
    api: &str,
    ep: &Endpoint,
    users: &[User],
    length: Duration,
) -> anyhow::Result<Vec<Done>> {
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder().timeout(OP_TIMEOUT).build()?,
        api: api.to_string(),
        ep: ep.clone(),
    });
    let ticks = (length.as_secs_f64() * OPS_PER_S).ceil().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / OPS_PER_S);
    let t0 = tokio::time::Instant::now();
    let mut ops = JoinSet::new();
    // User u's tick k is due at t0 + (k + u / users) periods: spread evenly.
    let mut plan: Vec<(Duration, usize, usize)> = (0..ticks)
        .flat_map(|k| (0..users.len()).map(move |u| (k, u)))
        .map(|(k, u)| {
            (
                period.mul_f64(k as f64 + u as f64 / users.len() as f64),
                u,
                k,
            )
        })
        .collect();
    plan.sort_by_key(|p| p.0);
    for (at, u, k) in plan {
        tokio::time::sleep_until(t0 + at).await;
        let op = OPS[(u + k) % OPS.len()];
        let (ctx, token, conv) = (ctx.clone(), users[u].token.clone(), users[u].conversation);
        ops.spawn(async move { timed(op, &ctx, &token, conv).await });
    }
    let mut done = Vec::new();
    while let Some(d) = ops.join_next().await {
        done.push(d?);
    }
    Ok(done)
}

/// Runs one operation under `OP_TIMEOUT`, timed.
async fn timed(op: Op, ctx: &Ctx, token: &str, conv: Uuid) -> Done {
    let started = Instant::now();
    let failure = match tokio::time::timeout(OP_TIMEOUT, once(op, ctx, token, conv)).await {
        Ok(r) => r.err(),
        Err(_) => Some("timed out".to_string()),
    };
    Done {
        op,
        us: started.elapsed().as_micros().min(u32::MAX as u128) as u32,
        failure,
    }
}

/// One operation; `Err` says why it failed.
async fn once(op: Op, ctx: &Ctx, token: &str, conv: Uuid) -> Result<(), String> {
    let api = &ctx.api;
    let request = match op {
        Op::ListDocuments => ctx.http.get(format!("{api}/documents")),
        Op::ListMessages => ctx.http.get(format!("{api}/conversations/{conv}/messages")),
        Op::Upload => {
            let file = reqwest::multipart::Part::bytes(HONEST_TEXT.repeat(10).into_bytes())
                .file_name("notes.txt")
                .mime_str("text/plain")
                .map_err(|e| e.to_string())?;
            ctx.http
                .post(format!("{api}/documents"))
                .multipart(reqwest::multipart::Form::new().part("file", file))
        }
        Op::Ask => ctx
            .http
            .post(format!("{api}/conversations/{conv}/messages"))
            .json(&serde_json::json!({ "content": "How are travel expenses reimbursed?" })),
        Op::OpenSocket => return open_socket(&ctx.ep, token).await,
    };
    let answer = request.bearer_auth(token).send().await.map_err(|e| {
        if e.is_timeout() {
            "timed out"
        } else {
            "transport error"
        }
        .to_string()
    })?;
    let status = answer.status();
    // Read the whole body: the answer is only done when it has arrived.
    let body = answer.bytes().await.map_err(|_| "body cut".to_string())?;
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("{} {}", status.as_u16(), error_code(&body))),
    }
}

/// The `error.code` of an API error body, or "".
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A WebSocket upgrade, then a close.
async fn open_socket(ep: &Endpoint, token: &str) -> Result<(), String> {
    match ws_connect(ep, token).await {
        Ok(mut ws) => {
            let _ = ws.close(None).await;
            Ok(())
        }
        Err(e) => Err(format!(
            "ws: {}",
            e.to_string().chars().take(40).collect::<String>()
        )),
    }
}

/// Failures counted by operation and reason (`ask: 503 database_unavailable`).
pub(super) fn failures(done: &[Done]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for d in done {
        if let Some(why) = &d.failure {
            let op = serde_json::to_value(d.op).ok();
            let op = op.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
            *out.entry(format!("{op}: {why}")).or_default() += 1;
        }
    }
    out
}
