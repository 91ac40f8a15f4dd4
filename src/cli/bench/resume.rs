//! The resume phase (`--resume`): how long a socket resuming with
//! `/ws?since=<T0>` takes to catch up on `ROWS` documents of its user
//! changed after T0, on the wire.
//!
//! The rows are inserted with SQL straight into the bench's database, each
//! created (and last updated) at or after T0, so the catch-up sends exactly
//! one `document.created` frame per row and `caught_up.count` is `ROWS`.
//! A repetition runs from the TCP connect (the upgrade request follows it
//! at once) to the `realtime.caught_up` frame; frames are kept as text and
//! checked after the clock stops, so the client's parsing is not timed.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::fleet::{Endpoint, ws_connect_query};
use super::progress::progress;
use super::report::TargetCheck;

/// Rows changed after the cursor; the server is started with at least this
/// `--max-catchup`.
pub(super) const ROWS: usize = 10_000;
/// Catch-ups measured.
const REPEATS: usize = 5;
/// The target for one catch-up of `ROWS` rows.
const TARGET_MS: f64 = 300.0;
/// One catch-up that takes longer than this is an error.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What one catch-up delivered, checked against the rows inserted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub ms: f64,
    pub frames: usize,
    /// `count` of `realtime.caught_up`; `None` if the catch-up did not end
    /// with it (a resync).
    pub caught_up_count: Option<u64>,
    /// Inserted documents that no frame carried.
    pub missing: usize,
    /// Frames that are not a `document.created` of an inserted document.
    pub unexpected: usize,
}

impl Attempt {
    fn complete(&self, rows: usize) -> bool {
        self.caught_up_count == Some(rows as u64)
            && self.frames == rows
            && self.missing == 0
            && self.unexpected == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    pub rows: usize,
    pub attempts: Vec<Attempt>,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// Frames per second at the median time.
    pub frames_per_s: f64,
    /// Every attempt delivered every row once and `caught_up` counted them.
    pub complete: bool,
    /// The heal after a listener gap (`bench::heal`).
    pub heal: Option<super::heal::HealBench>,
}

/// Checks the frames of one catch-up (the last one `caught_up` or a resync)
/// against the inserted ids.
pub(super) fn analyse(texts: &[String], ids: &HashSet<Uuid>, ms: f64) -> Attempt {
    let mut seen = HashSet::new();
    let (mut frames, mut unexpected, mut caught_up_count) = (0, 0, None);
    for text in texts {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("realtime.caught_up") => caught_up_count = v["payload"]["count"].as_u64(),
            Some("realtime.resync") => {}
            kind => {
                frames += 1;
                let id = v["payload"]["document_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok());
                match id {
                    Some(id) if kind == Some("document.created") && ids.contains(&id) => {
                        if !seen.insert(id) {
                            unexpected += 1;
                        }
                    }
                    _ => unexpected += 1,
                }
            }
        }
    }
    Attempt {
        ms,
        frames,
        caught_up_count,
        missing: ids.len() - seen.len(),
        unexpected,
    }
}

/// Min, median and max of the attempts, and whether all were complete.
pub(super) fn summarise(rows: usize, attempts: Vec<Attempt>) -> ResumeReport {
    let mut ms: Vec<f64> = attempts.iter().map(|a| a.ms).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |i: usize| ms.get(i).copied().unwrap_or(f64::NAN);
    let median = match ms.len() {
        n if n % 2 == 1 => pick(n / 2),
        n => (pick(n / 2 - 1) + pick(n / 2)) / 2.0,
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    ResumeReport {
        rows,
        complete: !attempts.is_empty() && attempts.iter().all(|a| a.complete(rows)),
        min_ms: round(pick(0)),
        median_ms: round(median),
        max_ms: round(ms.last().copied().unwrap_or(f64::NAN)),
        frames_per_s: (rows as f64 / (median / 1000.0)).round(),
        attempts,
        heal: None,
    }
}

/// The catch-up's target, and the heal's.
pub(super) fn targets(r: &ResumeReport) -> Vec<TargetCheck> {
    let heal = r.heal.as_ref().map(super::heal::target);
    std::iter::once(target(r)).chain(heal).collect()
}

/// The target: every catch-up complete, the median under 300 ms.
fn target(r: &ResumeReport) -> TargetCheck {
    TargetCheck {
        key: "resume_catchup",
        name: format!(
            "resume catch-up of {} rows, median of {}",
            r.rows,
            r.attempts.len()
        ),
        target: format!("< {TARGET_MS:.0} ms, every row once"),
        measured: format!(
            "{:.1} ms (min {:.1}, max {:.1}){}",
            r.median_ms,
            r.min_ms,
            r.max_ms,
            if r.complete { "" } else { ", INCOMPLETE" }
        ),
        met: Some(r.complete && r.median_ms < TARGET_MS),
    }
}

pub(super) fn render(s: &mut String, r: &ResumeReport) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "resume: /ws?since= catch-up of {} rows for one user, {} times",
        r.rows,
        r.attempts.len()
    );
    let _ = writeln!(
        s,
        "  min {:.1} ms, median {:.1} ms, max {:.1} ms; {:.0} frames/s at the median; {}",
        r.min_ms,
        r.median_ms,
        r.max_ms,
        r.frames_per_s,
        if r.complete {
            "every row arrived once, caught_up.count matched"
        } else {
            "INCOMPLETE (see --json)"
        }
    );
    if let Some(h) = &r.heal {
        super::heal::render(s, h);
    }
}

/// Inserts `rows` documents for `user`, all created after the returned
/// cursor T0, and returns T0 and their ids.
async fn seed(db_url: &str, user: Uuid, rows: usize) -> anyhow::Result<(DateTime<Utc>, Vec<Uuid>)> {
    let (client, conn) = crate::db::connect(db_url, "ragctl-bench-resume").await?;
    let conn = tokio::spawn(conn);
    let t0: DateTime<Utc> = client.query_one("SELECT now()", &[]).await?.get(0);
    // created_at = updated_at: one document.created frame per row.
    let inserted = client
        .query(
            "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status, created_at, updated_at)
             SELECT gen_random_uuid(), $1, 'bench-' || i || '.txt', 'text/plain', 1024, 'ingested', t, t
               FROM (SELECT i, clock_timestamp() AS t FROM generate_series(1, $2::int) AS i) AS s
             RETURNING id",
            &[&user, &(rows as i32)],
        )
        .await
        .context("inserting the resume phase's documents")?;
    drop(client);
    let _ = conn.await;
    Ok((t0, inserted.iter().map(|r| r.get(0)).collect()))
}

/// One catch-up: connect with `since`, read until `caught_up` or a resync.
async fn attempt(ep: &Endpoint, query: &str) -> anyhow::Result<(Vec<String>, f64)> {
    let started = Instant::now();
    let mut ws = ws_connect_query(ep, query).await?;
    let mut texts = Vec::with_capacity(ROWS + 1);
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            let last = t.as_str().contains("\"realtime.");
            texts.push(t.as_str().to_owned());
            if last {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let _ = ws.close(None).await;
                return Ok((texts, ms));
            }
        }
    }
    bail!(
        "the socket closed after {} frames, before caught_up",
        texts.len()
    )
}

/// Seeds the rows, measures `REPEATS` catch-ups, then the heals.
pub(super) async fn measure(
    ep: &Endpoint,
    db_url: &str,
    secret: &str,
    channel: &str,
) -> anyhow::Result<ResumeReport> {
    let user = Uuid::new_v4();
    progress(&format!("resume: inserting {ROWS} documents for one user"));
    let (t0, ids) = seed(db_url, user, ROWS).await?;
    let ids: HashSet<Uuid> = ids.into_iter().collect();
    let token = crate::auth::mint(secret, user, Duration::from_secs(3600))?;
    let since = t0.to_rfc3339_opts(SecondsFormat::Micros, true);
    let query = format!("token={token}&since={since}");
    let mut attempts = Vec::new();
    for i in 0..REPEATS {
        let (texts, ms) = tokio::time::timeout(TIMEOUT, attempt(ep, &query))
            .await
            .with_context(|| format!("resume catch-up took over {TIMEOUT:?}"))??;
        let a = analyse(&texts, &ids, ms);
        progress(&format!(
            "resume {}/{REPEATS}: {:.1} ms, {} frames, caught_up.count {:?}, {} missing",
            i + 1,
            a.ms,
            a.frames,
            a.caught_up_count,
            a.missing
        ));
        attempts.push(a);
    }
    let mut report = summarise(ROWS, attempts);
    report.heal = Some(super::heal::measure(ep, db_url, secret, channel).await?);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created(id: Uuid) -> String {
        json!({"type": "document.created", "payload": {"document_id": id}}).to_string()
    }

    fn caught_up(count: u64) -> String {
        json!({"payload": {"cursor": "x", "count": count}, "type": "realtime.caught_up"})
            .to_string()
    }

    #[test]
    fn analyse_counts_missing_repeated_and_foreign_frames() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let set: HashSet<Uuid> = ids.iter().copied().collect();
        let all: Vec<String> = ids
            .iter()
            .map(|&i| created(i))
            .chain([caught_up(3)])
            .collect();
        let a = analyse(&all, &set, 12.0);
        assert_eq!(
            (a.frames, a.caught_up_count, a.missing, a.unexpected),
            (3, Some(3), 0, 0)
        );
        assert!(a.complete(3));

        let bad = vec![
            created(ids[0]),
            created(ids[0]),
            created(Uuid::new_v4()),
            json!({"type": "realtime.resync", "payload": {"reason": "catchup_overflow"}})
                .to_string(),
        ];
        let a = analyse(&bad, &set, 5.0);
        assert_eq!(
            (a.frames, a.caught_up_count, a.missing, a.unexpected),
            (3, None, 2, 2)
        );
        assert!(!a.complete(3));
    }

    fn ok(ms: f64) -> Attempt {
        Attempt {
            ms,
            frames: 10,
            caught_up_count: Some(10),
            missing: 0,
            unexpected: 0,
        }
    }

    #[test]
    fn summary_and_target_use_the_median_and_require_completeness() {
        let r = summarise(
            10,
            vec![ok(400.0), ok(100.0), ok(250.0), ok(120.0), ok(200.0)],
        );
        assert_eq!((r.min_ms, r.median_ms, r.max_ms), (100.0, 200.0, 400.0));
        assert_eq!(r.frames_per_s, 50.0);
        assert!(r.complete);
        assert_eq!(target(&r).met, Some(true));

        let slow = summarise(10, vec![ok(310.0), ok(290.0), ok(320.0), ok(100.0)]);
        assert_eq!(slow.median_ms, 300.0);
        assert_eq!(target(&slow).met, Some(false));

        let mut short = ok(10.0);
        short.missing = 1;
        let r = summarise(10, vec![ok(10.0), short]);
        assert!(!r.complete);
        let t = target(&r);
        assert_eq!(t.met, Some(false));
        assert!(t.measured.contains("INCOMPLETE"), "{}", t.measured);
    }
}
