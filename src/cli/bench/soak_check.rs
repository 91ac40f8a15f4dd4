//! The soak's end checks: the queue drained (waited on, within a limit),
//! what the database says of the documents and jobs, every socket's view
//! against REST, and the children's logs searched for panics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use super::soak_procs::say;
use super::soak_rest::{Truth, fetch, statuses};
use super::soak_view::diff;
use super::soak_ws::Sockets;

/// How long the queue may take to drain once the load stops.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// How long the sockets may take to be all caught up, then to agree with REST.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);
/// Differences kept for the report.
const KEEP: usize = 10;

/// The queue after the load, from the database.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Drain {
    pub drained: bool,
    pub seconds: f64,
    pub jobs_total: i64,
    pub jobs_not_terminal: i64,
    pub docs_total: i64,
    pub docs_ingested: i64,
    pub docs_error: i64,
    pub hostile_total: i64,
    pub hostile_error: i64,
}

/// Every socket's view against REST.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Agreement {
    pub sockets: usize,
    pub live: usize,
    pub matching: usize,
    pub resynced: usize,
    pub differences: Vec<String>,
}

const COUNTS: &str = "SELECT
    (SELECT count(*) FROM jobs),
    (SELECT count(*) FROM jobs WHERE status NOT IN ('success', 'failed')),
    (SELECT count(*) FROM documents),
    (SELECT count(*) FROM documents WHERE status = 'ingested'),
    (SELECT count(*) FROM documents WHERE status = 'error'),
    (SELECT count(*) FROM documents WHERE filename LIKE 'hostile-%'),
    (SELECT count(*) FROM documents WHERE filename LIKE 'hostile-%' AND status = 'error')";

async fn counts(db_url: &str) -> anyhow::Result<Drain> {
    let (db, conn) = crate::db::connect(db_url, "ragctl-soak-check").await?;
    let conn = tokio::spawn(conn);
    let row = db.query_one(COUNTS, &[]).await;
    drop(db);
    let _ = conn.await;
    let row = row.context("counting documents and jobs")?;
    let docs_total: i64 = row.get(2);
    let (docs_ingested, docs_error): (i64, i64) = (row.get(3), row.get(4));
    Ok(Drain {
        drained: row.get::<_, i64>(1) == 0 && docs_ingested + docs_error == docs_total,
        seconds: 0.0,
        jobs_total: row.get(0),
        jobs_not_terminal: row.get(1),
        docs_total,
        docs_ingested,
        docs_error,
        hostile_total: row.get(5),
        hostile_error: row.get(6),
    })
}

/// Waits until every job is terminal and every document `ingested` or
/// `error`, or `DRAIN_LIMIT`.
pub(super) async fn drain(db_url: &str) -> anyhow::Result<Drain> {
    let start = Instant::now();
    loop {
        let mut d = counts(db_url).await;
        if let Ok(d) = &mut d {
            d.seconds = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        }
        match d {
            Ok(d) if d.drained || start.elapsed() > DRAIN_LIMIT => return Ok(d),
            Err(e) if start.elapsed() > DRAIN_LIMIT => return Err(e),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Every user's truth, eight users at a time.
async fn truths(api: &str, secret: &str, users: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Truth>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let fetched: Vec<(Uuid, anyhow::Result<Truth>)> =
        futures_util::stream::iter(users.iter().copied())
            .map(|u| {
                let http = http.clone();
                async move { (u, fetch(&http, api, secret, u).await) }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let mut out = HashMap::new();
    for (u, t) in fetched {
        out.insert(
            u,
            t.with_context(|| format!("reading user {u}'s documents"))?,
        );
    }
    Ok(out)
}

/// Settles the sockets, waits for all of them to be caught up, then until
/// every view equals REST (frames may still be in flight), within
/// `SETTLE_LIMIT`.
pub(super) async fn agree(
    sockets: &Sockets,
    api: &str,
    secret: &str,
    users: &[Uuid],
) -> anyhow::Result<Agreement> {
    sockets.settle();
    let deadline = Instant::now() + SETTLE_LIMIT;
    while sockets.live() < sockets.views.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open = sockets
        .counters
        .open
        .load(std::sync::atomic::Ordering::Relaxed);
    say(&format!(
        "{} of {} sockets caught up ({open} open); reading REST",
        sockets.live(),
        sockets.views.len()
    ));
    let truth = Arc::new(truths(api, secret, users).await?);
    loop {
        let a = compare(sockets, &truth);
        if a.matching == a.sockets || Instant::now() >= deadline {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn compare(sockets: &Sockets, truth: &HashMap<Uuid, Truth>) -> Agreement {
    let mut a = Agreement {
        sockets: sockets.views.len(),
        live: sockets.live(),
        ..Agreement::default()
    };
    for (user, view) in &sockets.views {
        let v = view.lock().expect("view");
        let t = &truth[user];
        let mut d = diff("document", &v.docs, &statuses(&t.docs), KEEP);
        d.extend(diff("job", &v.jobs, &statuses(&t.jobs), KEEP));
        a.resynced += usize::from(v.resynced);
        if d.is_empty() {
            a.matching += 1;
        } else if a.differences.len() < KEEP {
            a.differences.push(format!("user {user}: {}", d.join("; ")));
        }
    }
    a
}

/// Lines with "panicked" in any child's log (`file: line`), at most `KEEP`,
/// and how many in all.
pub(super) fn panics(files: &[PathBuf]) -> (usize, Vec<String>) {
    let mut all = 0;
    let mut kept = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked")) {
            all += 1;
            if kept.len() < KEEP {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                kept.push(format!("{name}: {line}"));
            }
        }
    }
    (all, kept)
}
