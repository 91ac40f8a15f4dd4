//! The attacks of issue #17, each from one attacker account (four for the
//! upload pin), exactly as the issue describes them. Every loop is bounded
//! in count (the constants below) and in time (it ends when the phase's
//! `cancel` fires); everything goes to the loopback server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::abuse_raw::{End, await_answer, drip, head, send_head};
use super::abuse_report::AttackerReport;
use super::abuse_seed::ATTACKER_QUESTION;
use super::fleet::{Endpoint, ws_connect_query};
use super::limits::source_addr;
use super::mass::connect_from;
use super::publish::{Batch, PublishRuntime, connect_publisher, publish};
use super::record::Clock;
use super::run::token;

/// The attacks: number, name, key (for the exit code's list).
pub(super) const ATTACKS: [(u8, &str, &str); 7] = [
    (1, "catch-up memory", "catchup_memory"),
    (2, "unbounded list", "unbounded_list"),
    (3, "slow bodies", "slow_bodies"),
    (4, "upload pin", "upload_pin"),
    (5, "socket flood", "socket_flood"),
    (6, "search flood", "search_flood"),
    (7, "fan-out", "fan_out"),
];

/// Resuming sockets of attack 1, and GETs of attack 2.
const CATCHUP_SOCKETS: usize = 8;
const LIST_CLIENTS: usize = 4;
/// Attack 3: most slow requests held at once, and their byte interval.
const SLOW_MAX: usize = 50_000;
const SLOW_EVERY: Duration = Duration::from_secs(5);
const SLOW_BODY: usize = 100_000;
/// Attack 4: declared uploads, over this many accounts; each declares the
/// largest body the default server takes (25 MiB + 64 KiB of multipart).
const PIN_UPLOADS: usize = 7;
const PIN_ACCOUNTS: usize = 4;
const PIN_DECLARED: usize = 25 * 1024 * 1024 + 64 * 1024;
/// Attack 5: most sockets tried at once (the default cap is 50,000).
const FLOOD_MAX: usize = 60_000;
/// Attack 6: concurrent chat searches.
const SEARCHES: usize = 20;
/// Attack 7: the attacker's sockets, and its events per second.
const FANOUT_SOCKETS: usize = 8_000;
const FANOUT_RATE: u32 = 100;
/// Concurrent connects of the attacks that open many.
const GATE: usize = 256;
/// A slot whose connection ended waits this long before the next.
const RETRY: Duration = Duration::from_secs(1);
/// Phase tag of the attacker's events (never an honest phase's).
const ATTACK_PHASE: u32 = u32::MAX - 1;

/// Where an attack goes, and what it was given.
pub(super) struct Target {
    pub(super) ep: Endpoint,
    pub(super) api: String,
    pub(super) secret: String,
    pub(super) db_url: String,
    pub(super) channel: String,
    pub(super) attacker: Uuid,
    /// Attacks 1-2: the long history; 6: the conversation to ask in.
    pub(super) conversation: Option<Uuid>,
}

/// What the attacker achieved, counted as it happens.
#[derive(Default)]
pub(super) struct Tally {
    attempts: AtomicU64,
    opened: AtomicU64,
    held: AtomicU64,
    peak: AtomicU64,
    failed: AtomicU64,
    ends: Mutex<BTreeMap<String, u64>>,
    ready_after: AtomicU64,
    ready: AtomicBool,
}

impl Tally {
    /// The attack is at full strength once it has made `n` attempts.
    fn ready_after(&self, n: usize) {
        self.ready_after.store(n as u64, Ordering::SeqCst);
    }

    fn attempt(&self) {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.ready_after.load(Ordering::SeqCst) {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    fn open(&self) {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn end(&self, how: String) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(how).or_default() += 1;
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(why).or_default() += 1;
    }

    /// A request that answered (the search flood): counted by status.
    fn answer(&self, how: String) {
        self.opened.fetch_add(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(how).or_default() += 1;
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(super) fn report(&self) -> AttackerReport {
        AttackerReport {
            ready: self.is_ready(),
            attempts: self.attempts.load(Ordering::SeqCst),
            opened: self.opened.load(Ordering::SeqCst),
            peak_held: self.peak.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            outcomes: self.ends.lock().expect("tally").clone(),
        }
    }
}

/// Why a connect failed, short enough to count by.
fn reason(e: &anyhow::Error) -> String {
    format!(
        "error: {}",
        e.to_string().chars().take(60).collect::<String>()
    )
}

/// Runs attack `n` until `cancel`.
pub(super) async fn run(n: u8, t: Arc<Target>, tally: Arc<Tally>, cancel: CancellationToken) {
    let result = match n {
        1 => catchup(&t, &tally, &cancel).await,
        2 => unbounded_list(&t, &tally, &cancel).await,
        3 => slots(&t, &tally, &cancel, SLOW_MAX, slow_body).await,
        4 => slots(&t, &tally, &cancel, PIN_UPLOADS, pin_upload).await,
        5 => slots(&t, &tally, &cancel, FLOOD_MAX, flood_socket).await,
        6 => search_flood(&t, &tally, &cancel).await,
        7 => fan_out(&t, &tally, &cancel).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        super::progress(&format!("attack {n} failed: {e:#}"));
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
        let ws = tokio::time::timeout(Duration::from_secs(30), ws_connect_query(&t.ep, &query));
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
        &t.ep.host,
        &jwt,
        None,
        None,
    );
    let mut held = Vec::new();
    for i in 0..LIST_CLIENTS {
        let sent = send_head(&t.ep, i, &get).await;
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

/// What one slot of a many-connection attack does with its connection.
type Slot = fn(
    usize,
    Arc<Target>,
    Arc<Tally>,
    Arc<Semaphore>,
    CancellationToken,
) -> futures_util::future::BoxFuture<'static, ()>;

/// `n` slots of an attack, each connecting (at most `GATE` at once),
/// holding its connection until it ends, and connecting again `RETRY`
/// later, until `cancel`.
async fn slots(
    t: &Arc<Target>,
    tally: &Arc<Tally>,
    cancel: &CancellationToken,
    n: usize,
    slot: Slot,
) -> anyhow::Result<()> {
    tally.ready_after(n);
    let gate = Arc::new(Semaphore::new(GATE));
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(slot(
            i,
            t.clone(),
            tally.clone(),
            gate.clone(),
            cancel.clone(),
        ));
    }
    cancel.cancelled().await;
    // The slots see `cancel` too; give them a moment to count their ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Waits `RETRY` unless the attack is over; false if it is.
async fn pause(cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => true,
        _ = cancel.cancelled() => false,
    }
}

/// Attack 3's slot: a JSON request declaring `SLOW_BODY` bytes that come
/// one every `SLOW_EVERY`.
fn slow_body(
    i: usize,
    t: Arc<Target>,
    tally: Arc<Tally>,
    gate: Arc<Semaphore>,
    cancel: CancellationToken,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let Ok(jwt) = token(&t.secret, t.attacker) else {
            return;
        };
        let json = Some("application/json");
        let post = head(
            "POST",
            "/conversations",
            &t.ep.host,
            &jwt,
            json,
            Some(SLOW_BODY),
        );
        raw_slot(i, &t, &tally, &gate, &cancel, &post, |tcp, c| {
            Box::pin(drip(tcp, SLOW_EVERY, c))
        })
        .await;
    })
}

/// Attack 4's slot: an upload declaring the largest body, sending none.
fn pin_upload(
    i: usize,
    t: Arc<Target>,
    tally: Arc<Tally>,
    gate: Arc<Semaphore>,
    cancel: CancellationToken,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        // Account k of the attacker's four: the first is `t.attacker`.
        let account = Uuid::from_u128(
            t.attacker
                .as_u128()
                .wrapping_add((i % PIN_ACCOUNTS) as u128),
        );
        let Ok(jwt) = token(&t.secret, account) else {
            return;
        };
        let multipart = Some("multipart/form-data; boundary=abuse");
        let post = head(
            "POST",
            "/documents",
            &t.ep.host,
            &jwt,
            multipart,
            Some(PIN_DECLARED),
        );
        raw_slot(i, &t, &tally, &gate, &cancel, &post, |tcp, c| {
            Box::pin(await_answer(tcp, c))
        })
        .await;
    })
}

/// How a raw slot holds its connection once the head is sent.
type Hold = for<'a> fn(
    tokio::net::TcpStream,
    &'a CancellationToken,
) -> futures_util::future::BoxFuture<'a, End>;

/// The loop of a raw-HTTP slot: send `head`, `hold`, count the end, again.
async fn raw_slot(
    i: usize,
    t: &Target,
    tally: &Tally,
    gate: &Semaphore,
    cancel: &CancellationToken,
    head: &str,
    hold: Hold,
) {
    while !cancel.is_cancelled() {
        let sent = {
            let _permit = gate.acquire().await;
            tokio::select! {
                r = send_head(&t.ep, i, head) => Some(r),
                _ = cancel.cancelled() => None,
            }
        };
        let Some(sent) = sent else { return };
        tally.attempt();
        match sent {
            Ok(tcp) => {
                tally.open();
                tally.end(hold(tcp, cancel).await.label());
            }
            Err(e) => tally.fail(reason(&e)),
        }
        if !pause(cancel).await {
            return;
        }
    }
}

/// Attack 5's slot: one more WebSocket of the attacker's one token, held
/// (read, so pings are answered) until the server closes it.
fn flood_socket(
    i: usize,
    t: Arc<Target>,
    tally: Arc<Tally>,
    gate: Arc<Semaphore>,
    cancel: CancellationToken,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move { socket_slot(i, &t, &tally, &gate, &cancel).await })
}

/// A WebSocket slot (attacks 5 and 7): connect, read until closed, again.
async fn socket_slot(
    i: usize,
    t: &Target,
    tally: &Tally,
    gate: &Semaphore,
    cancel: &CancellationToken,
) {
    let Ok(jwt) = token(&t.secret, t.attacker) else {
        return;
    };
    while !cancel.is_cancelled() {
        let ws = {
            let _permit = gate.acquire().await;
            let src = IpAddr::V4(source_addr(i));
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(30), connect_from(&t.ep, src, &jwt)) => Some(r),
                _ = cancel.cancelled() => None,
            }
        };
        let Some(ws) = ws else { return };
        tally.attempt();
        match ws {
            Ok(Ok(mut ws)) => {
                tally.open();
                let closed = async { while let Some(Ok(_)) = ws.next().await {} };
                tokio::select! {
                    _ = closed => tally.end(End::Closed.label()),
                    _ = cancel.cancelled() => tally.end(End::Cancelled.label()),
                }
            }
            Ok(Err(e)) => tally.fail(reason(&e)),
            Err(_) => tally.fail("handshake timed out (30 s)".into()),
        }
        if !pause(cancel).await {
            return;
        }
    }
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

/// Attack 7: `FANOUT_SOCKETS` sockets of the attacker (as many as the
/// server lets it hold), then `FANOUT_RATE` events/s to them.
async fn fan_out(
    t: &Arc<Target>,
    tally: &Arc<Tally>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let opening = slots(
        t,
        tally,
        cancel,
        FANOUT_SOCKETS,
        |i, t, tally, gate, cancel| {
            Box::pin(async move { socket_slot(i, &t, &tally, &gate, &cancel).await })
        },
    );
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
