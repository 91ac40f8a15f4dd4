//! The attacks of issue #17, each from one attacker account (four for the
//! upload pin), exactly as the issue describes them; the many-connection
//! ones are in `abuse_slots`. Every loop is bounded in count (the
//! constants) and in time (it ends when `cancel` fires); everything goes
//! to the loopback server. They run in attacker processes of their own
//! (`abuse_child`), so that their descriptors are not the bench's.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::abuse_raw::{End, head, send_head};
use super::abuse_seed::ATTACKER_QUESTION;
use super::abuse_slots::{Kind, slots};
use super::abuse_target::{Tally, Target, reason};
use super::crowd::token;
use super::fleet::ws_connect_query;
use super::publish::{Batch, PublishRuntime, connect_publisher, publish};
use super::record::Clock;

/// Resuming sockets of attack 1, and GETs of attack 2.
const CATCHUP_SOCKETS: usize = 8;
const LIST_CLIENTS: usize = 4;
/// Attack 6: concurrent chat searches.
const SEARCHES: usize = 20;
/// Attack 7: the attacker's events per second.
const FANOUT_RATE: u32 = 100;
/// Phase tag of the attacker's events (never an honest phase's).
const ATTACK_PHASE: u32 = u32::MAX - 1;

/// Runs attack `n` until `cancel`.
pub(super) async fn run(n: u8, t: Arc<Target>, tally: Arc<Tally>, cancel: CancellationToken) {
    let result = match n {
        1 => catchup(&t, &tally, &cancel).await,
        2 => unbounded_list(&t, &tally, &cancel).await,
        3 => slots(&t, &tally, &cancel, Kind::SlowBody).await,
        4 => slots(&t, &tally, &cancel, Kind::PinUpload).await,
        5 => slots(&t, &tally, &cancel, Kind::Socket).await,
        6 => search_flood(&t, &tally, &cancel).await,
        7 => fan_out(&t, &tally, &cancel).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        super::progress::progress(&format!("attack {n} failed: {e:#}"));
        tally.fail(reason(&e));
    }
}

/// Attack 1: `CATCHUP_SOCKETS` sockets resuming from 1970 on the long
/// history, opened at once and never read.
async fn catchup(t: &Target, tally: &Tally, cancel: &CancellationToken) -> anyhow::Result<()> {
    tally.ready_after(CATCHUP_SOCKETS);
    let jwt = token(&t.secret, t.attacker)?;
    let query = format!("token={jwt}&since=1970-01-01T00:00:00Z");
    let opening = (0..CATCHUP_SOCKETS).map(|_| async {
        let ws = tokio::time::timeout(Duration::from_secs(30), ws_connect_query(t.ep(), &query));
        let ws = ws.await;
        tally.attempt();
        match ws {
            Ok(Ok(ws)) => Some(ws),
            Ok(Err(e)) => {
                tally.fail(reason(&e));
                None
            }
            Err(_) => {
                tally.fail("handshake timed out (30 s)".into());
                None
            }
        }
    });
    let held: Vec<_> = join_all(opening).await.into_iter().flatten().collect();
    for _ in &held {
        tally.open();
    }
    cancel.cancelled().await;
    for _ in &held {
        tally.end(End::Cancelled.label());
    }
    Ok(())
}

/// Attack 2: `LIST_CLIENTS` GETs of the long history whose answers are
/// never read.
async fn unbounded_list(
    t: &Target,
    tally: &Tally,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    tally.ready_after(LIST_CLIENTS);
    let jwt = token(&t.secret, t.attacker)?;
    let conv = t.conversation.unwrap_or_default();
    let get = head(
        "GET",
        &format!("/conversations/{conv}/messages"),
        &t.ep().host,
        &jwt,
        None,
        None,
    );
    let mut held = Vec::new();
    for i in 0..LIST_CLIENTS {
        let sent = send_head(t.ep(), i, &get).await;
        tally.attempt();
        match sent {
            Ok(tcp) => {
                tally.open();
                held.push(tcp);
            }
            Err(e) => tally.fail(reason(&e)),
        }
    }
    cancel.cancelled().await;
    for _ in &held {
        tally.end(End::Cancelled.label());
    }
    Ok(())
}

/// Attack 6: `SEARCHES` chat questions at once, each asking again as soon
/// as it is answered, on the attacker's large corpus.
async fn search_flood(t: &Target, tally: &Tally, cancel: &CancellationToken) -> anyhow::Result<()> {
    tally.ready_after(SEARCHES);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let jwt = token(&t.secret, t.attacker)?;
    let url = format!(
        "{}/conversations/{}/messages",
        t.api,
        t.conversation.unwrap_or_default()
    );
    let asker = || async {
        while !cancel.is_cancelled() {
            tally.attempt();
            let ask = http
                .post(&url)
                .bearer_auth(&*jwt)
                .json(&serde_json::json!({ "content": ATTACKER_QUESTION }))
                .send();
            let outcome = tokio::select! {
                r = ask => r,
                _ = cancel.cancelled() => return,
            };
            match outcome {
                Ok(r) => tally.answer(format!("answered {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => tally.fail("timed out (120 s)".into()),
                Err(_) => tally.fail("transport error".into()),
            }
        }
    };
    join_all((0..SEARCHES).map(|_| asker())).await;
    Ok(())
}

/// Attack 7: the attacker's sockets (8,000, or as many as the
/// server lets it hold), then `FANOUT_RATE` events/s to them.
async fn fan_out(
    t: &Arc<Target>,
    tally: &Arc<Tally>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let opening = slots(t, tally, cancel, Kind::Socket);
    let events = async {
        while !tally.is_ready() && !cancel.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publish_to_attacker(t, cancel).await
    };
    let (opened, published) = tokio::join!(opening, events);
    opened.and(published)
}

/// `FANOUT_RATE` events/s to the attacker, until `cancel` (at most an hour).
async fn publish_to_attacker(t: &Target, cancel: &CancellationToken) -> anyhow::Result<()> {
    let runtime = PublishRuntime::start()?;
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let url = t.db_url.clone();
        publishers.push(
            runtime
                .handle
                .spawn(async move { connect_publisher(&url).await })
                .await??,
        );
    }
    let n = FANOUT_RATE as usize * 3600;
    let batch = Arc::new(Batch {
        phase: ATTACK_PHASE,
        n,
        users: Arc::new(vec![t.attacker]),
    });
    let commits = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let clock = Clock(std::time::Instant::now());
    let publishing = publish(
        &runtime.handle,
        &publishers,
        &t.channel,
        batch,
        commits,
        FANOUT_RATE,
        clock,
    );
    tokio::select! {
        r = publishing => r.map(|_| ()),
        _ = cancel.cancelled() => Ok(()),
    }
}
