//! The relay's failover under load (`--capacity --bus nats`): one NATS
//! instance, two `ragctl relay` processes (the first leads), one socket for
//! each of `USERS` users. A writer updates documents rows and publishes
//! each update (`fo:<seq>` in the row's and the event's `error_message`) at
//! `RATE`; the leader is SIGKILLed while it runs. Measured: the time from
//! the kill to the first frame of an event committed after it, and at the
//! end, the documents whose latest row their user's socket never saw
//! (stale; events lost during the switch come back by the heal from rows).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::BenchArgs;
use super::capacity_bus_report::Failover;
use super::fleet::ws_connect;
use super::pg_cpu::PgCpu;
use super::progress::progress;
use super::relay_proc::{RelayProc, RelaySite, sessions, wait_leading};
use super::serve_cmd::BenchBus;
use super::server::{Site, endpoint, launch_on};
use crate::bus::relay::LOCK_SESSION_NAME;
use crate::events::{Envelope, EventType};

const USERS: usize = 100;
const DOCS_PER_USER: i32 = 4;
/// Events per second while the leader is killed.
const RATE: u32 = 200;
/// How long events flow after the kill.
const AFTER: Duration = Duration::from_secs(5);
const PATIENCE: Duration = Duration::from_secs(30);

/// What the sockets saw: the highest seq per document, every seq, and the
/// first frame of an event at or past `threshold` (set at the kill).
struct Seen {
    max: HashMap<Uuid, i64>,
    seqs: HashSet<i64>,
    threshold: i64,
    first_after: Option<Instant>,
}

type Shared = Arc<Mutex<Seen>>;

pub(super) async fn measure(
    args: &BenchArgs,
    site: &Site,
    relay_site: &RelaySite,
    pg: &PgCpu,
) -> anyhow::Result<Failover> {
    progress("failover: one NATS instance, two relays");
    let bus = BenchBus::Nats {
        url: relay_site.nats_url.clone(),
        relay: false,
    };
    let mut leader = RelayProc::spawn(relay_site)?;
    wait_leading(pg.client(), &mut leader).await?;
    let standby = RelayProc::spawn(relay_site)?;
    wait_sessions(pg.client(), 2).await?;
    let names = (
        "bench_fo",
        site.secret.as_str(),
        relay_site.channel.as_str(),
    );
    let instance = launch_on(&site.db_url, names, args, &bus).await?;
    let result = run(site, relay_site, &instance.api, leader).await;
    standby.kill().await;
    instance.stop().await;
    result
}

/// Waits until `n` relay lock sessions are open (the standby polls on one).
async fn wait_sessions(db: &tokio_postgres::Client, n: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if sessions(db, LOCK_SESSION_NAME).await? >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the standby relay never opened its lock session");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    site: &Site,
    relay_site: &RelaySite,
    api: &str,
    leader: RelayProc,
) -> anyhow::Result<Failover> {
    let (db, conn) = crate::db::connect(&site.db_url, "ragctl-bench-failover").await?;
    let _conn = tokio::spawn(conn);
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    let docs = seed(&db, &users).await?;
    let seen: Shared = Arc::new(Mutex::new(Seen {
        max: HashMap::new(),
        seqs: HashSet::new(),
        threshold: i64::MAX,
        first_after: None,
    }));
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    connect_sockets(api, &site.secret, &users, &seen, &stop).await?;
    let committed = Arc::new(AtomicI64::new(0));
    // The writer stops on a token of its own: the sockets go on reading
    // until the judge is done, since the last events are still in flight
    // (relay, NATS, instance) when the writer stops.
    let write_stop = CancellationToken::new();
    let writer = tokio::spawn(write(
        db,
        relay_site.channel.clone(),
        docs.clone(),
        committed.clone(),
        write_stop.clone(),
    ));
    // Every socket has its subscription once every document got a frame.
    wait_for(&seen, |s| s.max.len() >= docs.len()).await?;
    let killed_at = Instant::now();
    leader.kill().await;
    // Events committed from here on found no leader alive to relay them.
    let threshold = committed.load(Ordering::SeqCst) + 1;
    seen.lock().expect("seen").threshold = threshold;
    progress(&format!(
        "failover: the leading relay SIGKILLed; events from {threshold} on count"
    ));
    tokio::time::sleep(AFTER).await;
    write_stop.cancel();
    let db = writer.await.context("the failover's writer")??;
    let last = committed.load(Ordering::SeqCst);
    judge(&db, &docs, &seen, (threshold, last), killed_at).await
}

/// The outcome once every document's latest row has reached its socket,
/// or `PATIENCE` passed.
async fn judge(
    db: &tokio_postgres::Client,
    docs: &[(Uuid, Uuid)],
    seen: &Shared,
    (threshold, last): (i64, i64),
    killed_at: Instant,
) -> anyhow::Result<Failover> {
    let ids: Vec<Uuid> = docs.iter().map(|d| d.0).collect();
    let rows = db
        .query(
            "SELECT id, coalesce(substr(error_message, 4)::bigint, 0) FROM documents WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .context("reading the failover's documents")?;
    let latest: HashMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stale = |s: &Seen| {
        latest
            .iter()
            .filter(|&(id, &seq)| seq > 0 && s.max.get(id).copied().unwrap_or(0) < seq)
            .count()
    };
    let _ = wait_for(seen, |s| stale(s) == 0).await;
    let s = seen.lock().expect("seen");
    let missing: Vec<i64> = (threshold..=last).filter(|q| !s.seqs.contains(q)).collect();
    let coalesced = missing.len() as u64;
    if !missing.is_empty() {
        // Where the losses sit (the kill is at `threshold`) tells a gap
        // the heal missed from one at the end of the run.
        let shown: Vec<String> = missing.iter().take(10).map(i64::to_string).collect();
        progress(&format!(
            "failover: events {threshold}..={last} committed after the kill; never seen: {}",
            shown.join(", ")
        ));
    }
    let out = Failover {
        rate: RATE,
        events: last.max(0) as u64,
        documents: docs.len(),
        resumed_ms: s
            .first_after
            .map(|t| (t.duration_since(killed_at).as_secs_f64() * 1e5).round() / 100.0),
        stale: stale(&s),
        coalesced,
    };
    progress(&format!(
        "failover: flowing again after {:?} ms; {} stale, {} of {} events after the kill coalesced",
        out.resumed_ms,
        out.stale,
        out.coalesced,
        last - threshold + 1
    ));
    Ok(out)
}

/// Polls `seen` until `done` holds, for at most `PATIENCE`.
async fn wait_for(seen: &Shared, done: impl Fn(&Seen) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !done(&seen.lock().expect("seen")) {
        if Instant::now() > deadline {
            bail!("failover: the sockets did not get what was expected within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `DOCS_PER_USER` documents for each user: (document, user).
async fn seed(db: &tokio_postgres::Client, users: &[Uuid]) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
    let rows = db
        .query(
            "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status, created_at, updated_at)
             SELECT gen_random_uuid(), u, 'failover-' || i || '.txt', 'text/plain', 1024, 'ingested', now(), now()
               FROM unnest($1::uuid[]) AS u, generate_series(1, $2::int) AS i
             RETURNING id, user_id",
            &[&users, &DOCS_PER_USER],
        )
        .await
        .context("inserting the failover's documents")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One socket per user; each frame's document and seq go into `seen`.
async fn connect_sockets(
    api: &str,
    secret: &str,
    users: &[Uuid],
    seen: &Shared,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let ep = endpoint(api).await?;
    for &user in users {
        let token = super::crowd::token(secret, user)?;
        let mut ws = ws_connect(&ep, &token).await?;
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = ws.next() => m,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => record(&seen, t.as_str()),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return,
                }
            }
        });
    }
    Ok(())
}

/// A frame `{type, payload: {document_id, error_message: "fo:<seq>"}}`.
fn record(seen: &Shared, text: &str) {
    let at = Instant::now();
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let doc = v["payload"]["document_id"]
        .as_str()
        .and_then(|s| s.parse().ok());
    let seq = v["payload"]["error_message"]
        .as_str()
        .and_then(|m| m.strip_prefix("fo:"))
        .and_then(|n| n.parse::<i64>().ok());
    let (Some(doc), Some(seq)) = (doc, seq) else {
        return;
    };
    let mut s = seen.lock().expect("seen");
    let m = s.max.entry(doc).or_insert(0);
    *m = (*m).max(seq);
    s.seqs.insert(seq);
    if seq >= s.threshold && s.first_after.is_none() {
        s.first_after = Some(at);
    }
}

/// Updates document `seq mod n` and publishes the update, `RATE` a second,
/// until `stop`; `committed` is the last seq committed. Returns the client.
async fn write(
    db: tokio_postgres::Client,
    channel: String,
    docs: Vec<(Uuid, Uuid)>,
    committed: Arc<AtomicI64>,
    stop: CancellationToken,
) -> anyhow::Result<tokio_postgres::Client> {
    let stmt = db
        .prepare(
            "WITH u AS (UPDATE documents SET error_message = $2, updated_at = clock_timestamp()
                        WHERE id = $1 RETURNING 1)
             SELECT pg_notify($3, $4) FROM u",
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(RATE)));
    for seq in 1i64.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (doc, user) = docs[seq as usize % docs.len()];
        let message = format!("fo:{seq}");
        let env = Envelope::new(
            user,
            EventType::DocumentStatusUpdated,
            serde_json::json!({"document_id": doc, "status": "ingested",
                "error_message": message, "updated_at": chrono::Utc::now()}),
            "bench:failover",
        );
        let payload = serde_json::to_string(&env)?;
        db.execute(&stmt, &[&doc, &message, &channel, &payload])
            .await
            .context("the failover's update")?;
        committed.store(seq, Ordering::SeqCst);
    }
    Ok(db)
}
