//! The queue benchmark's uploads through the REST API: the honest users'
//! documents on an open-loop schedule (a slow answer does not thin the
//! load; at most 64 uploads in flight, a later start is counted), and the
//! hostile user keeping its CPU bombs queued, re-uploading as they fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queue_measure::in_flight;

/// Uploads in flight at most; the bound of the schedule's queue.
pub(super) const IN_FLIGHT: usize = 64;
/// An upload not answered in this long is a failure.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Tries of an upload refused with 429 or 503, after the first.
const RETRIES: usize = 5;
/// How often the hostile user counts its bombs still in the queue.
const BOMB_CHECK: Duration = Duration::from_millis(200);

/// Where to upload, as whom.
pub(super) struct Uploader {
    http: reqwest::Client,
    url: String,
}

/// How the uploads went.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) ok: u64,
    pub(super) failures: BTreeMap<String, u64>,
    /// Uploads that started later than scheduled (all slots in flight).
    pub(super) late: u64,
    /// Tries again after a 429 or 503.
    pub(super) retried: u64,
}

impl Tally {
    fn count(&mut self, r: Result<(), String>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => *self.failures.entry(e).or_default() += 1,
        }
    }
}

impl Uploader {
    pub(super) fn new(api: &str) -> anyhow::Result<Uploader> {
        Ok(Uploader {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            url: format!("{api}/documents"),
        })
    }

    /// `POST /documents` of `bytes` as `name`; 201 is success. A 429 or
    /// 503 is tried again after its Retry-After (1 s if absent), at most
    /// `RETRIES` times, as a client would; `retried` counts those.
    pub(super) async fn upload(
        &self,
        token: &str,
        name: String,
        bytes: Vec<u8>,
        retried: &AtomicU64,
    ) -> Result<(), String> {
        for attempt in 0..=RETRIES {
            let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone());
            let form = reqwest::multipart::Form::new().part("file", part);
            let sent = self.http.post(&self.url).bearer_auth(token).multipart(form);
            let r = match sent.send().await {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err("timed out".into()),
                Err(e) => return Err(format!("transport: {e}")),
            };
            let status = r.status().as_u16();
            if status == 201 {
                return Ok(());
            }
            let wait = retry_after(&r);
            let code = r.json::<serde_json::Value>().await.ok();
            let code = code.as_ref().and_then(|v| v["error"]["code"].as_str());
            if !matches!(status, 429 | 503) || attempt == RETRIES {
                return Err(format!("status {status} {}", code.unwrap_or(""))
                    .trim()
                    .to_string());
            }
            retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        unreachable!("the last attempt returns")
    }
}

/// The answer's Retry-After (whole seconds), else 1 s.
fn retry_after(r: &reqwest::Response) -> Duration {
    let secs = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Duration::from_secs(secs.unwrap_or(1).clamp(1, 30))
}

/// One scheduled upload: document `k` of user `k % users`.
pub(super) type Make<'a> = &'a dyn Fn(usize) -> (String, Vec<u8>);

/// Uploads `docs` documents, document `k` by `tokens[k % len]` at
/// `k / rate` seconds (`rate` 0: each as soon as one of the 64 is free).
pub(super) async fn honest(
    up: &Arc<Uploader>,
    tokens: &[Arc<str>],
    docs: usize,
    rate: f64,
    make: Make<'_>,
) -> Tally {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let retried = Arc::new(AtomicU64::new(0));
    let mut tally = Tally::default();
    let mut set = JoinSet::new();
    let start = Instant::now();
    for k in 0..docs {
        if rate > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate)).into())
                .await;
        }
        let permit = match gate.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tally.late += u64::from(rate > 0.0);
                gate.clone().acquire_owned().await.expect("never closed")
            }
        };
        let (up, token) = (up.clone(), tokens[k % tokens.len()].clone());
        let (name, bytes) = make(k);
        let retried = retried.clone();
        set.spawn(async move {
            let r = up.upload(&token, name, bytes, &retried).await;
            drop(permit);
            r
        });
        while let Some(Ok(r)) = set.try_join_next() {
            tally.count(r);
        }
    }
    while let Some(r) = set.join_next().await {
        tally.count(r.unwrap_or_else(|e| Err(format!("upload task: {e}"))));
    }
    tally.retried = retried.load(Ordering::Relaxed);
    tally
}

/// The hostile user: keeps `bombs` of its documents in the queue (not yet
/// `ingested` nor `error`), uploading one more as each fails, until `stop`.
pub(super) async fn keep_bombs(
    up: Arc<Uploader>,
    token: Arc<str>,
    db: Client,
    user: Uuid,
    bombs: usize,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let retried = AtomicU64::new(0);
    let mut n = 0usize;
    while !stop.is_cancelled() {
        let queued = match in_flight(&db, user, false).await {
            Ok(q) => q as usize,
            Err(e) => {
                tally.count(Err(format!("counting its bombs: {e:#}")));
                bombs
            }
        };
        for _ in queued..bombs {
            n += 1;
            let bytes = super::queue_docs::BOMB.to_vec();
            let name = format!("bomb-{n}.pdf");
            tally.count(up.upload(&token, name, bytes, &retried).await);
        }
        tokio::select! {
            _ = tokio::time::sleep(BOMB_CHECK) => {}
            _ = stop.cancelled() => {}
        }
    }
    tally.retried = retried.load(Ordering::Relaxed);
    tally
}
