//! The heal half of the resume phase (`--resume`): `USERS` sockets, one per
//! user, are connected; `ROWS_PER_USER` documents of each user are inserted
//! with SQL (no event announces them); then the API's listener backend is
//! killed. The bridge reconnects and heals: the time measured runs from
//! the heal's start (when the listener was back; the server's clock, read
//! off its report on `ragctl_ops`) to the last of the inserted documents
//! arriving at a client (this machine's clock, the same one).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fleet::{Endpoint, ws_connect_query};
use super::progress::progress;
use super::report::TargetCheck;
use crate::db::listener::{self, API_LISTENER_NAME, ListenItem, ListenerConfig};
use crate::events::ops::{HealReport, OPS_CHANNEL};

pub(super) const USERS: usize = 1_000;
pub(super) const ROWS_PER_USER: usize = 10;
const REPEATS: usize = 3;
/// The target for one heal of `USERS` × `ROWS_PER_USER` rows.
const TARGET_MS: f64 = 1000.0;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Between repetitions: two listener probes (5 s apart) move the heal
/// window past the previous repetition's rows, so each heal reads only
/// its own.
const SETTLE: Duration = Duration::from_secs(11);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealAttempt {
    /// From the heal's start to the last inserted document at a client.
    pub ms: f64,
    /// The heal's own duration, from its report (query and hand-off).
    pub server_ms: f64,
    /// What the report says it read and pushed.
    pub rows_read: usize,
    pub frames_pushed: usize,
    /// Inserted documents no client received.
    pub missing: usize,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealBench {
    pub users: usize,
    pub rows: usize,
    pub attempts: Vec<HealAttempt>,
    pub median_ms: f64,
    pub complete: bool,
}

/// One frame a client received: its user's index, the document, when.
type Got = (usize, Uuid, DateTime<Utc>);

/// The sockets, each feeding what it reads into one channel.
struct Fleet {
    got: mpsc::Receiver<Got>,
    stop: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn connect(ep: &Endpoint, secret: &str, users: &[Uuid]) -> anyhow::Result<Fleet> {
    let (tx, got) = mpsc::channel(USERS * ROWS_PER_USER * 2);
    let stop = CancellationToken::new();
    for (i, user) in users.iter().enumerate() {
        let token = crate::auth::mint(secret, *user, Duration::from_secs(3600))?;
        let mut ws = ws_connect_query(ep, &format!("token={token}")).await?;
        let (tx, stop) = (tx.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = ws.next() => m,
                };
                let Some(Ok(Message::Text(t))) = msg else {
                    if matches!(msg, None | Some(Err(_))) {
                        return;
                    }
                    continue;
                };
                let at = Utc::now();
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if let Some(id) = v["payload"]["document_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                {
                    // Bounded; a full channel means the bench is broken.
                    let _ = tx.try_send((i, id, at));
                }
            }
        });
    }
    Ok(Fleet { got, stop })
}

/// Inserts `ROWS_PER_USER` documents for each user; their ids.
async fn seed(db: &tokio_postgres::Client, users: &[Uuid]) -> anyhow::Result<HashSet<Uuid>> {
    let rows = db
        .query(
            "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status, created_at, updated_at)
             SELECT gen_random_uuid(), u, 'heal-' || i || '.txt', 'text/plain', 1024, 'ingested', t, t
               FROM unnest($1::uuid[]) AS u,
                    LATERAL (SELECT i, clock_timestamp() AS t
                               FROM generate_series(1, $2::int) AS i) AS s
             RETURNING id",
            &[&users, &(ROWS_PER_USER as i32)],
        )
        .await
        .context("inserting the heal phase's documents")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Heal reports of `channel`, as they come.
fn reports(db_url: &str, channel: &str, stop: &CancellationToken) -> mpsc::Receiver<HealReport> {
    let (items_tx, mut items) = mpsc::channel(64);
    let cfg = ListenerConfig::new(db_url, "ragctl-bench-ops", &[OPS_CHANNEL]);
    let _ = listener::spawn(cfg, items_tx, stop.clone());
    let (tx, rx) = mpsc::channel(64);
    let channel = channel.to_string();
    tokio::spawn(async move {
        while let Some(item) = items.recv().await {
            if let ListenItem::Notification(n) = item
                && let Some(r) = HealReport::parse(&n.payload)
                && r.channel == channel
                && tx.send(r).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

/// One repetition: seed, kill the listener, wait for the heal's report and
/// for every inserted document at the clients.
async fn attempt(
    db: &tokio_postgres::Client,
    users: &[Uuid],
    fleet: &mut Fleet,
    reports: &mut mpsc::Receiver<HealReport>,
) -> anyhow::Result<HealAttempt> {
    let mut ids = seed(db, users).await?;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&API_LISTENER_NAME],
        )
        .await?;
    if killed.len() != 1 {
        bail!("expected one API listener backend, found {}", killed.len());
    }
    let report = tokio::time::timeout(TIMEOUT, reports.recv())
        .await
        .context("no heal report")?
        .context("the report listener stopped")?;
    let started = report.at - chrono::Duration::microseconds((report.duration_ms * 1e3) as i64);
    let (total, mut last) = (ids.len(), started);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !ids.is_empty() {
        match tokio::time::timeout_at(deadline, fleet.got.recv()).await {
            Ok(Some((_, id, at))) if ids.remove(&id) => last = last.max(at),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let ms = (last - started).num_microseconds().unwrap_or(0) as f64 / 1e3;
    progress(&format!(
        "heal: {} rows for {} users in {ms:.1} ms after the listener was back (server {:.1} ms, {}); {} of {total} missing",
        report.rows,
        report.users,
        report.duration_ms,
        report.outcome.as_str(),
        ids.len()
    ));
    Ok(HealAttempt {
        ms: (ms * 100.0).round() / 100.0,
        server_ms: (report.duration_ms * 100.0).round() / 100.0,
        rows_read: report.rows,
        frames_pushed: report.frames,
        missing: ids.len(),
        outcome: report.outcome.as_str().into(),
    })
}

/// Connects the sockets, then measures `REPEATS` heals.
pub(super) async fn measure(
    ep: &Endpoint,
    db_url: &str,
    secret: &str,
    channel: &str,
) -> anyhow::Result<HealBench> {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut reports = reports(db_url, channel, &stop);
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    progress(&format!("heal: connecting {USERS} sockets, one per user"));
    let mut fleet = connect(ep, secret, &users).await?;
    let (db, conn) = crate::db::connect(db_url, "ragctl-bench-heal").await?;
    let conn = tokio::spawn(conn);
    let mut attempts = vec![];
    for i in 0..REPEATS {
        if i > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        attempts.push(attempt(&db, &users, &mut fleet, &mut reports).await?);
    }
    drop(db);
    let _ = conn.await;
    Ok(summarise(attempts))
}

fn summarise(attempts: Vec<HealAttempt>) -> HealBench {
    let mut ms: Vec<f64> = attempts.iter().map(|a| a.ms).collect();
    ms.sort_by(f64::total_cmp);
    HealBench {
        users: USERS,
        rows: USERS * ROWS_PER_USER,
        median_ms: ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
        complete: !attempts.is_empty()
            && attempts
                .iter()
                .all(|a| a.missing == 0 && a.outcome == "healed"),
        attempts,
    }
}

/// The target: every heal complete, the median under 1 s.
pub(super) fn target(r: &HealBench) -> TargetCheck {
    TargetCheck {
        key: "resume_heal",
        name: format!(
            "heal of {} rows across {} users after a listener gap, median of {}",
            r.rows,
            r.users,
            r.attempts.len()
        ),
        target: format!("< {TARGET_MS:.0} ms after the listener is back, every row"),
        measured: format!(
            "{:.1} ms{}",
            r.median_ms,
            if r.complete { "" } else { ", INCOMPLETE" }
        ),
        met: Some(r.complete && r.median_ms < TARGET_MS),
    }
}

pub(super) fn render(s: &mut String, r: &HealBench) {
    let _ = writeln!(
        s,
        "heal: listener backend killed with {} users connected, {} changed rows each, {} times",
        r.users,
        r.rows / r.users.max(1),
        r.attempts.len()
    );
    for a in &r.attempts {
        let _ = writeln!(
            s,
            "  {:.1} ms after the listener was back (heal itself {:.1} ms; read {} rows, pushed {} frames, {}); {} missing",
            a.ms, a.server_ms, a.rows_read, a.frames_pushed, a.outcome, a.missing
        );
    }
    let _ = writeln!(s, "  median {:.1} ms", r.median_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ms: f64, missing: usize, outcome: &str) -> HealAttempt {
        HealAttempt {
            ms,
            server_ms: ms / 2.0,
            rows_read: 10,
            frames_pushed: 10,
            missing,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn the_target_needs_every_row_healed_and_the_median_under_a_second() {
        let r = summarise(vec![
            a(900.0, 0, "healed"),
            a(200.0, 0, "healed"),
            a(1500.0, 0, "healed"),
        ]);
        assert_eq!(r.median_ms, 900.0);
        assert_eq!(target(&r).met, Some(true));
        let r = summarise(vec![a(100.0, 1, "healed")]);
        assert_eq!(target(&r).met, Some(false));
        assert!(target(&r).measured.contains("INCOMPLETE"));
        let r = summarise(vec![a(100.0, 0, "overflow")]);
        assert_eq!(target(&r).met, Some(false));
        let r = summarise(vec![a(1200.0, 0, "healed")]);
        assert_eq!(target(&r).met, Some(false));
    }
}
