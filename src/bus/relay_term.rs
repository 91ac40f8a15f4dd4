//! One leadership term of the relay: LISTEN (its own `db::listener` with
//! application_name `ragctl-relay`), then republish every valid envelope
//! to its user's subject, heartbeat the horizon every 500 ms, and turn
//! every way of missing events into a `gap` on the relay subject. The
//! term ends the moment the lock session is lost (nothing more is
//! published) or on shutdown (after `resigned`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::connect::{Link, LinkState};
use super::relay_config::{RELAY_LISTENER_NAME, RelayConfig, RelayRole};
use super::relay_msg::{Micros, RelayGap, RelayMessage};
use super::subject::{relay_subject, user_subject};
use crate::db::listener::{
    self, GapReason, ListenItem, ListenerConfig, ListenerCounters, Notification,
};
use crate::events::{self, DropReason, Reassembler, Scanned, WireMessage};

/// How often the leader says it is alive, and how far it has published.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How far back a NATS drop is dated from its detection: async-nats finds
/// a dead connection after two unanswered pings (`connect::PING`, 10 s).
const NATS_LOOKBACK: Duration = Duration::from_secs(60);
/// Horizons kept, one per heartbeat: past the lookback.
const SAMPLES: usize = 2 * 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermEnd {
    /// The lock session died: another relay may lead now.
    Lost,
    Shutdown,
}

/// Leads until `lost` or `shutdown`.
pub async fn lead(
    cfg: &RelayConfig,
    link: &Link,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
    role: &watch::Sender<RelayRole>,
) -> TermEnd {
    let listen_stop = CancellationToken::new();
    // However the term ends, its LISTEN ends with it.
    let _stop_listening = listen_stop.clone().drop_guard();
    let (tx, rx) = mpsc::channel(cfg.queue);
    let listen_cfg = ListenerConfig::new(
        &cfg.listen_url,
        RELAY_LISTENER_NAME,
        &[cfg.channel.as_str()],
    );
    let (handle, _task) = listener::spawn(listen_cfg, tx, listen_stop);
    // LISTEN done and a first horizon read before the first heartbeat.
    let mut status = handle.status.clone();
    tokio::select! {
        _ = lost.cancelled() => return TermEnd::Lost,
        _ = shutdown.cancelled() => return TermEnd::Shutdown,
        r = status.wait_for(|s| s.connected) => if r.is_err() { return TermEnd::Lost },
    }
    let term = Term::new(cfg, link, handle.counters.clone(), lost.clone());
    role.send_replace(RelayRole::Leader);
    metrics::gauge!("ragctl_relay_leader").set(1.0);
    tracing::info!(epoch = %term.epoch, channel = %cfg.channel, "relay leading");
    publish_loop(term, rx, link, lost, shutdown).await
}

/// The leader's loop: queued notifications, heartbeats, NATS drops.
async fn publish_loop(
    mut term: Term,
    mut rx: mpsc::Receiver<ListenItem>,
    link: &Link,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
) -> TermEnd {
    let mut link_state = link.state.clone();
    term.seen = *link_state.borrow_and_update();
    // Closed with the client only; then there is nothing more to watch.
    let mut link_open = true;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut expire = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            biased;
            _ = lost.cancelled() => return TermEnd::Lost,
            _ = shutdown.cancelled() => {
                term.resign().await;
                return TermEnd::Shutdown;
            }
            changed = link_state.changed(), if link_open => {
                link_open = changed.is_ok();
                let now = *link_state.borrow_and_update();
                term.link_changed(now).await;
            }
            _ = beat.tick() => {
                // What the horizon covers is queued already: publish it first.
                for _ in 0..rx.len() {
                    match rx.try_recv() {
                        Ok(item) => term.item(item).await,
                        Err(_) => break,
                    }
                }
                term.heartbeat().await;
            }
            _ = expire.tick() => term.expire(),
            item = rx.recv() => match item {
                Some(item) => term.item(item).await,
                None => return TermEnd::Lost,
            },
        }
    }
}

struct Term {
    client: Client,
    prefix: String,
    relay_subject: String,
    epoch: Uuid,
    seq: u64,
    counters: Arc<ListenerCounters>,
    lost: CancellationToken,
    frags: Reassembler,
    /// The NATS connection dropped: events from then on may be lost;
    /// published as a gap once it is back.
    nats_gap: Option<DateTime<Utc>>,
    seen: LinkState,
    /// The older horizon at each heartbeat, to date a gap from when an
    /// item was read off the socket, however long it queued since.
    samples: std::collections::VecDeque<(Instant, DateTime<Utc>)>,
    /// The older horizon as the term began: before anything it read.
    first: DateTime<Utc>,
    published: metrics::Counter,
    drop_log: DropLog,
}

impl Term {
    fn new(
        cfg: &RelayConfig,
        link: &Link,
        counters: Arc<ListenerCounters>,
        lost: CancellationToken,
    ) -> Term {
        Term {
            client: link.client.clone(),
            prefix: cfg.nats.prefix.clone(),
            relay_subject: relay_subject(&cfg.nats.prefix),
            epoch: Uuid::new_v4(),
            seq: 0,
            counters: counters.clone(),
            lost,
            frags: Reassembler::default(),
            nats_gap: None,
            seen: LinkState::default(),
            samples: std::collections::VecDeque::with_capacity(SAMPLES),
            first: counters.horizons.gap_since(),
            published: metrics::counter!("ragctl_relay_published_total"),
            drop_log: DropLog::default(),
        }
    }

    /// Where a gap that begins now begins (recorded for `since_read`).
    fn since(&mut self) -> Micros {
        let h = self.counters.horizons.gap_since();
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((Instant::now(), h));
        Micros(h)
    }

    /// Where a gap begins for an item read off the socket at `at`: the
    /// older horizon as it was then. One read later may postdate the
    /// item's transaction if the queue lagged past a probe interval.
    fn since_read(&self, at: Instant) -> DateTime<Utc> {
        let before = self.samples.iter().rev().find(|(t, _)| *t <= at);
        before.map_or(self.first, |(_, h)| *h)
    }

    async fn item(&mut self, item: ListenItem) {
        match item {
            ListenItem::Gap(g) => {
                let reason = match g.reason {
                    GapReason::Overflow => RelayGap::RelayListenOverflow,
                    // A listener reports only these two; the others are the
                    // subscriber's. A lost connection is the safe reading.
                    _ => RelayGap::RelayListenReconnected,
                };
                self.gap(Micros(g.since), reason).await;
            }
            ListenItem::Notification(n) => self.notification(n).await,
        }
    }

    /// An envelope goes out as the NOTIFY payload's own text; a fragment's
    /// envelope once its group is complete; anything malformed is dropped.
    async fn notification(&mut self, n: Notification) {
        let (user, text) = match events::scan(&n.payload) {
            Ok(Scanned::Envelope { user_id }) => (user_id, n.payload),
            Ok(Scanned::Fragment) => match self.fragment(&n) {
                Ok(Some(env)) => {
                    let text = serde_json::to_string(&env).expect("an envelope always serialises");
                    (env.user_id, text)
                }
                Ok(None) => return,
                Err(reason) => return self.drop_log.note(reason.as_str()),
            },
            Err(reason) => return self.drop_log.note(reason.as_str()),
        };
        if text.len() > self.client.max_payload() {
            metrics::counter!("ragctl_relay_oversize_total").increment(1);
            tracing::warn!(user = %user, bytes = text.len(), max = self.client.max_payload(), "envelope over the NATS max_payload; subscribers heal it");
            let since = Micros(self.since_read(n.received_at));
            self.say(|epoch, seq| RelayMessage::Oversize {
                epoch,
                seq,
                user_id: user,
                since,
            })
            .await;
            return;
        }
        if self
            .send(user_subject(&self.prefix, user), Bytes::from(text))
            .await
        {
            self.published.increment(1);
        }
    }

    fn fragment(&mut self, n: &Notification) -> Result<Option<events::Envelope>, DropReason> {
        let WireMessage::Fragment(f) = events::decode(&n.payload)? else {
            return Err(DropReason::BadFragment);
        };
        let (res, evicted) = self.frags.push(f, n.received_at);
        for _ in 0..evicted {
            dropped(DropReason::BadFragment.as_str());
        }
        res
    }

    fn expire(&mut self) {
        for _ in 0..self.frags.expire(Instant::now()) {
            dropped(DropReason::FragmentExpired.as_str());
        }
    }

    async fn link_changed(&mut self, now: LinkState) {
        if now.disconnects > self.seen.disconnects {
            self.nats_dropped();
        }
        self.seen = now;
        if now.connected {
            self.owed_gap().await;
        }
    }

    /// What was published since the connection died (found up to
    /// [`NATS_LOOKBACK`] later) may be lost: a gap, sent once it is back.
    fn nats_dropped(&mut self) {
        let at = Instant::now().checked_sub(NATS_LOOKBACK);
        let since = at.map_or(self.first, |at| self.since_read(at));
        self.nats_gap.get_or_insert(since);
    }

    async fn owed_gap(&mut self) {
        if let Some(since) = self.nats_gap.take() {
            self.gap(Micros(since), RelayGap::RelayNatsReconnected)
                .await;
        }
    }

    async fn gap(&mut self, since: Micros, reason: RelayGap) {
        metrics::counter!("ragctl_relay_gaps_total", "reason" => reason.as_str()).increment(1);
        tracing::warn!(reason = reason.as_str(), since = %since.0, "relay gap");
        self.say(|epoch, seq| RelayMessage::Gap {
            epoch,
            seq,
            since,
            reason,
        })
        .await;
    }

    async fn heartbeat(&mut self) {
        if self.seen.connected {
            self.owed_gap().await;
        }
        let horizon = self.since();
        self.say(|epoch, seq| RelayMessage::Heartbeat {
            epoch,
            seq,
            horizon,
        })
        .await;
    }

    async fn resign(&mut self) {
        self.say(|epoch, seq| RelayMessage::Resigned { epoch, seq })
            .await;
        let flushed = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("could not flush the relay's resignation to NATS");
        }
        tracing::info!(epoch = %self.epoch, "relay resigned");
    }

    /// Publishes a relay-subject message with the next sequence number.
    async fn say(&mut self, build: impl FnOnce(Uuid, u64) -> RelayMessage) {
        self.seq += 1;
        let msg = build(self.epoch, self.seq);
        let subject = self.relay_subject.clone();
        self.send(subject, Bytes::from(msg.to_json())).await;
    }

    /// Publishes unless leadership is lost (checked before, and while
    /// waiting for room in the client's buffer). A failed publish is a
    /// gap from now.
    async fn send(&mut self, subject: String, payload: Bytes) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        let sent = tokio::select! {
            _ = self.lost.cancelled() => return false,
            r = self.client.publish(subject, payload) => r,
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "relay publish failed");
                dropped("publish_failed");
                self.nats_dropped();
                false
            }
        }
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!("ragctl_relay_dropped_total", "reason" => reason).increment(1);
}

/// Counts malformed payloads, and logs a reason at most once a minute so
/// that a flood of them cannot flood the log.
#[derive(Default)]
struct DropLog {
    last: std::collections::HashMap<&'static str, Instant>,
}

impl DropLog {
    fn note(&mut self, reason: &'static str) {
        dropped(reason);
        let now = Instant::now();
        let due = self
            .last
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
        if due {
            self.last.insert(reason, now);
            tracing::warn!(
                reason,
                "the relay dropped a malformed event (logged once a minute per reason)"
            );
        }
    }
}
