//! The queue benchmark's uploads through the REST API: the honest users'
//! documents on an open-loop schedule (a slow answer does not thin the
//! load; at most 64 uploads in flight, a later start is counted), and the
//! hostile user keeping its CPU bombs queued, re-uploading as they fail.

use std::collections::BTreeMap;
use std::sync::Arc;
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

    /// `POST /documents` of `bytes` as `name`; 201 is success.
    pub(super) async fn upload(
        &self,
        token: &str,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
        let form = reqwest::multipart::Form::new().part("file", part);
        let sent = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .multipart(form)
            .send();
        match sent.await {
            Ok(r) if r.status().as_u16() == 201 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) => Err(format!("transport: {e}")),
        }
    }
}

/// One scheduled upload: document `k` of user `k % users`.
pub(super) type Make = fn(usize) -> (String, Vec<u8>);

/// Uploads `docs` documents, document `k` by `tokens[k % len]` at
/// `k / rate` seconds (`rate` 0: each as soon as one of the 64 is free).
pub(super) async fn honest(
    up: &Arc<Uploader>,
    tokens: &[Arc<str>],
    docs: usize,
    rate: f64,
    make: Make,
) -> Tally {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
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
        set.spawn(async move {
            let r = up.upload(&token, name, bytes).await;
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
            tally.count(up.upload(&token, format!("bomb-{n}.pdf"), bytes).await);
        }
        tokio::select! {
            _ = tokio::time::sleep(BOMB_CHECK) => {}
            _ = stop.cancelled() => {}
        }
    }
    tally
}
