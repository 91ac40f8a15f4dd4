//! Issue #17, attack 7: one user's fan-out cannot take the router. Each
//! event costs the router one write per socket of its user, so attackers
//! holding many sockets ask for events × sockets frames. With a per-user
//! frame budget the router sends each attacker at most its budget (counted,
//! not timed: frames forwarded against budget × elapsed), skips the rest
//! (counted by reason), and heals each attacker's sockets from the rows, so
//! every one of them still ends up holding what REST shows; the victim gets
//! every one of its events. Real `serve`, real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::holding::{Holding, View, rest_view, upload_text};
use common::*;
use ragctl::events::{Envelope, EventType};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

/// Several attacker accounts, each under a per-user socket cap of 64.
const ATTACKERS: usize = 4;
const SOCKETS: usize = 50;
const DOCS: usize = 3;
/// Events per attacker.
const ROUNDS: usize = 150;
const RATE: f64 = 200.0;
const BURST: f64 = 400.0;
const VICTIM_EVERY: usize = 5;
const STATUSES: [&str; 4] = ["parsing", "parsed", "ingesting", "ingested"];

/// One attacker socket, read in a task of its own until it holds `target`.
fn spawn_reader(
    mut client: Client,
    mut held: Holding,
    mut target: watch::Receiver<Option<View>>,
) -> tokio::task::JoinHandle<Result<Vec<String>, String>> {
    tokio::spawn(async move {
        let mut realtime = vec![];
        let mut deadline = None;
        loop {
            if let Some(view) = target.borrow_and_update().as_ref() {
                if held.view() == *view {
                    return Ok(realtime);
                }
                deadline.get_or_insert(Instant::now() + PATIENCE);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(format!("never held what REST shows: {:#?}", held.view()));
            }
            match client.next(Duration::from_millis(500)).await {
                Some(Next::Frame(f)) => {
                    let kind = held.apply_any(&f);
                    if kind.starts_with("realtime.") {
                        realtime.push(kind);
                    }
                }
                Some(Next::Closed(code)) => return Err(format!("closed: {code:?}")),
                None => {}
            }
        }
    })
}

fn copy(h: &Holding) -> Holding {
    Holding {
        docs: h.docs.clone(),
        jobs: h.jobs.clone(),
        msgs: h.msgs.clone(),
        newest: h.newest,
    }
}

/// Sets a document's status as a worker would (row first, then its event,
/// carrying the row's stamp).
async fn set_status(
    db: &deadpool_postgres::Pool,
    events: &ragctl::events::Publisher,
    user: Uuid,
    doc: &str,
    status: &str,
) {
    let c = db.get().await.unwrap();
    let id: Uuid = doc.parse().unwrap();
    let row = c
        .query_one(
            "UPDATE documents SET status = $1, updated_at = clock_timestamp()
             WHERE id = $2 RETURNING updated_at",
            &[&status, &id],
        )
        .await
        .unwrap();
    let at: chrono::DateTime<chrono::Utc> = row.get(0);
    let payload =
        json!({"document_id": id, "status": status, "error_message": null, "updated_at": at});
    let env = Envelope::new(user, EventType::DocumentStatusUpdated, payload, "test");
    events.publish(env).await.unwrap();
}

#[tokio::test]
async fn attackers_sockets_cannot_take_the_router_and_still_converge() {
    let db = TestDb::new();
    let (rate, burst) = (RATE.to_string(), BURST.to_string());
    // Through the environment, so that a build without the bound runs the
    // same attack (and fails it for the attack's reason, not a flag).
    let api = Api::start(
        &db,
        &[],
        &[
            ("RAG_USER_FRAME_RATE", &rate),
            ("RAG_USER_FRAME_BURST", &burst),
        ],
    )
    .await;
    let attackers: Vec<Uuid> = (0..ATTACKERS).map(|_| Uuid::new_v4()).collect();
    let mut docs = vec![];
    for a in &attackers {
        let mut mine = vec![];
        for i in 0..DOCS {
            mine.push(upload_text(&api, *a, i).await);
        }
        docs.push(mine);
    }
    let mut targets = vec![];
    let mut readers = vec![];
    for a in &attackers {
        let (tx, rx) = watch::channel(None::<View>);
        targets.push(tx);
        let loaded = Holding::load(&api, *a, None).await;
        for _ in 0..SOCKETS {
            let client = Client::connect(&api, *a, "&resync=1").await;
            readers.push(spawn_reader(client, copy(&loaded), rx.clone()));
        }
    }
    let victim = Uuid::new_v4();
    let mut watcher = Client::connect(&api, victim, "").await;

    let pool = ragctl::db::pool(&db.url, 2, "ragctl-test-attack")
        .await
        .unwrap();
    let events = publisher(&db).await;
    let forwarded = "ragctl_events_forwarded_total";
    let before = api.metric(forwarded).await;
    let started = Instant::now();
    let mut victim_docs = vec![];
    for round in 0..ROUNDS {
        for (a, mine) in attackers.iter().zip(&docs) {
            let status = STATUSES[(round / DOCS) % STATUSES.len()];
            set_status(&pool, &events, *a, &mine[round % DOCS], status).await;
        }
        if round % VICTIM_EVERY == 0 {
            let doc = Uuid::new_v4();
            events
                .publish(doc_status(victim, doc, "parsing"))
                .await
                .unwrap();
            victim_docs.push(doc.to_string());
        }
    }

    // Every one of the victim's events arrives, in order.
    for doc in &victim_docs {
        watcher
            .expect("the victim's event", |f| {
                is(f, "document.status_updated", &[("document_id", s(doc))])
            })
            .await;
    }
    // Every attacker socket ends up holding what REST shows.
    for (a, target) in attackers.iter().zip(&targets) {
        target.send_replace(Some(rest_view(&api, *a, None).await));
    }
    for r in readers {
        let realtime = r.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            realtime.is_empty(),
            "an attacker was resynced: {realtime:?}"
        );
    }
    let sent = api.metric(forwarded).await - before;
    let elapsed = started.elapsed().as_secs_f64();

    // Counted, not timed: what the attackers were sent stays within their
    // budgets over the (longer, test-side) elapsed time; one payment may
    // overdraw a full bucket by at most a heal of every document.
    let victim_frames = victim_docs.len() as f64;
    let asked = (ATTACKERS * ROUNDS * SOCKETS) as f64;
    let budget = ATTACKERS as f64 * (BURST + RATE * elapsed + (DOCS * SOCKETS) as f64);
    let attackers_sent = sent - victim_frames;
    assert!(
        attackers_sent <= budget,
        "attackers were sent {attackers_sent} frames of the {asked} asked, over their budget of {budget} in {elapsed:.1} s"
    );
    let throttled = api
        .metric("ragctl_bridge_user_throttled_total{reason=\"over_rate\"}")
        .await;
    assert!(throttled > 0.0, "no event was counted as throttled");
    let healed = api
        .metric("ragctl_bridge_throttle_heals_total{outcome=\"healed\"}")
        .await;
    assert!(healed > 0.0, "no throttle heal was counted");
    eprintln!(
        "attackers asked {asked} frames, were sent {attackers_sent} (budget {budget:.0} in {elapsed:.1} s); {throttled} events over rate, {healed} heals"
    );
}
