//! The soak's uploaders: each user uploads one document at a time through
//! the REST API of its instance, then pauses, until told to stop. Every
//! `HOSTILE_EVERY`-th upload is a hostile file (fixtures/hostile and the
//! corrupt PDF), named `hostile-…` so the end checks can find it. An upload
//! refused or cut off (an instance or PostgreSQL restarting) is tried again
//! after a second, and counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::soak_procs::{Instances, url_of};

macro_rules! fixture {
    ($path:literal) => {
        (
            $path,
            include_bytes!(concat!("../../../fixtures/", $path)) as &[u8],
        )
    };
}

/// What honest users upload.
const HONEST: &[(&str, &[u8])] = &[
    fixture!("documents/handbook.md"),
    fixture!("documents/handbook.txt"),
    fixture!("documents/handbook.html"),
    fixture!("documents/handbook.pdf"),
    fixture!("qa/corpus/jsonwebtoken-README.md"),
    fixture!("qa/corpus/refinery-README.md"),
    fixture!("qa/corpus/regex-README.md"),
    fixture!("qa/corpus/serde_json-README.md"),
    fixture!("qa/corpus/tokio-README.md"),
    fixture!("qa/corpus/zlib-FAQ.txt"),
    fixture!("qa/corpus/zlib-algorithm.txt"),
];

/// Files that must end `error` without bringing a worker down.
const HOSTILE: &[(&str, &[u8])] = &[
    fixture!("documents/corrupt.pdf"),
    fixture!("hostile/self-xobject.pdf"),
    fixture!("hostile/shared-stream.pdf"),
    fixture!("hostile/inflate-bomb.pdf"),
    fixture!("hostile/xobject-fanout.pdf"),
    fixture!("hostile/xobject-names.pdf"),
    fixture!("hostile/div-selfclose.html"),
    fixture!("hostile/stray-end-tags.html"),
];

/// One upload in this many is hostile.
const HOSTILE_EVERY: u64 = 20;
/// A user's pause between two uploads (s, uniform).
const PAUSE: std::ops::Range<f64> = 10.0..20.0;

/// How the uploads went.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoadCounts {
    pub honest: u64,
    pub hostile: u64,
    /// Tries that failed and were made again, by cause.
    pub retried: BTreeMap<String, u64>,
}

/// The uploaders, running.
pub(super) struct Load {
    counts: Arc<Mutex<LoadCounts>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Load {
    /// One uploader per user; user `k` uploads to instance `k`.
    pub(super) fn start(urls: &Instances, secret: &str, users: &[Uuid]) -> anyhow::Result<Load> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let counts = Arc::new(Mutex::new(LoadCounts::default()));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for (k, &user) in users.iter().enumerate() {
            let token = crate::auth::mint(secret, user, Duration::from_secs(24 * 3600))?;
            let me = Uploader {
                http: http.clone(),
                urls: urls.clone(),
                api: k,
                token,
                counts: counts.clone(),
            };
            tasks.spawn(me.run(k as u64, stop.clone()));
        }
        Ok(Load {
            counts,
            stop,
            tasks,
        })
    }

    /// Stops every uploader (an upload in flight is finished first).
    pub(super) async fn stop(mut self) -> LoadCounts {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.counts.lock().expect("counts").clone()
    }
}

struct Uploader {
    http: reqwest::Client,
    urls: Instances,
    api: usize,
    token: String,
    counts: Arc<Mutex<LoadCounts>>,
}

/// Upload `n` of user `k`: its name and bytes, and whether it is hostile.
pub(super) fn pick(k: u64, n: u64) -> (String, &'static [u8], bool) {
    let hostile = (n + k) % HOSTILE_EVERY == HOSTILE_EVERY - 1;
    let (list, prefix) = match hostile {
        true => (HOSTILE, "hostile"),
        false => (HONEST, "doc"),
    };
    let (path, bytes) = list[((n + k) as usize) % list.len()];
    let base = path.rsplit('/').next().unwrap_or(path);
    (format!("{prefix}-u{k}-{n}-{base}"), bytes, hostile)
}

impl Uploader {
    async fn run(self, k: u64, stop: CancellationToken) {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            let (name, bytes, hostile) = pick(k, n);
            if self.upload_until_done(&name, bytes, &stop).await {
                let mut c = self.counts.lock().expect("counts");
                *(if hostile {
                    &mut c.hostile
                } else {
                    &mut c.honest
                }) += 1;
            }
            n += 1;
            let pause = Duration::from_secs_f64(rand::random_range(PAUSE));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// Tries until 201 or the soak stops; each failed try is counted.
    async fn upload_until_done(&self, name: &str, bytes: &[u8], stop: &CancellationToken) -> bool {
        loop {
            let why = match self.try_once(name, bytes).await {
                Ok(()) => return true,
                Err(why) => why,
            };
            *self
                .counts
                .lock()
                .expect("counts")
                .retried
                .entry(why)
                .or_default() += 1;
            if stop.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn try_once(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        let url = format!("{}/documents", url_of(&self.urls, self.api));
        let sent = self.http.post(url).bearer_auth(&self.token).multipart(form);
        match sent.send().await {
            Ok(r) if r.status().as_u16() == 201 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(_) => Err("transport".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_upload_in_twenty_is_hostile_and_names_say_so() {
        let picks: Vec<_> = (0..200).map(|n| pick(3, n)).collect();
        let hostile = picks.iter().filter(|p| p.2).count();
        assert_eq!(hostile, 10);
        assert!(picks.iter().all(|p| p.0.starts_with("hostile-") == p.2));
        assert!(picks.iter().all(|p| p.0.contains("-u3-")));
    }
}
