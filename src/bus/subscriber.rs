//! The bridge's NATS source, the API's side of `--bus nats`: no LISTEN
//! connection; user events come from the per-user subscriptions of
//! [`Interest`], and this task watches the relay subject and the
//! connection's events, turning every possible loss into a gap item for
//! the router, which heals it from the rows (`subscriber_gaps` has the
//! rules). Its status is the listener's, so `/readyz` and the metrics read
//! either bus the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, Event, Subscriber};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connect::{EventHook, Extra, connect_link_with};
use super::interest::{Interest, Setup};
use super::relay_msg::RelayMessage;
use super::subject::relay_subject;
use super::subscriber_gaps::Tracker;
use crate::config::NatsOpts;
use crate::db::listener::{
    Gap, GapReason, ListenItem, ListenerCounters, ListenerHandle, ListenerStatus,
};

/// How often silence and coalesced slow-consumer gaps are looked at.
const TICK: Duration = Duration::from_millis(500);

/// How long the flush after a reconnect (resubscriptions in) may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection events waiting for the task (the client drops past its own
/// bound; ours waits).
const EVENTS: usize = 256;

#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub opts: NatsOpts,
    /// The event channel, named on the notifications.
    pub channel: String,
    /// `--nats-unsubscribe-grace-ms`.
    pub grace: Duration,
    /// Users a subscription is kept for at most beyond their sockets.
    pub max_users: usize,
    /// The NATS connection's name (`ragctl-api host:pid`).
    pub name: String,
    /// Messages buffered per subscription (`--nats-subscription-capacity`).
    pub capacity: Option<usize>,
}

/// The running source: the listener-style status, the sockets' interest,
/// and the task (ends on shutdown).
pub struct NatsSource {
    pub handle: ListenerHandle,
    pub interest: Interest,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the source on the current runtime.
pub fn spawn(
    cfg: SubscriberConfig,
    queue: mpsc::Sender<ListenItem>,
    shutdown: CancellationToken,
) -> NatsSource {
    let (status_tx, status) = watch::channel(ListenerStatus::default());
    let (client_tx, client_rx) = watch::channel(None);
    let counters = Arc::new(ListenerCounters::default());
    let unconfirmed = Arc::new(AtomicBool::new(false));
    let interest = Interest::new(Setup {
        client: client_rx,
        prefix: cfg.opts.prefix.clone(),
        channel: cfg.channel.clone(),
        queue: queue.downgrade(),
        counters: counters.clone(),
        grace: cfg.grace,
        max_users: cfg.max_users,
        shutdown: shutdown.clone(),
        unconfirmed: unconfirmed.clone(),
    });
    let watcher = Watcher {
        queue,
        status: status_tx,
        tracker: Tracker::starting(Instant::now(), Utc::now()),
        // Until the first connection, as if lost from the start.
        lost: Some((Instant::now(), Utc::now())),
        connected_once: false,
        unconfirmed,
        slow: None,
        client: None,
    };
    let task = tokio::spawn(watcher.run(cfg, client_tx, shutdown));
    NatsSource {
        handle: ListenerHandle { status, counters },
        interest,
        task,
    }
}

/// A connection event and when this process saw it.
type Seen = (Event, Instant, DateTime<Utc>);

struct Watcher {
    queue: mpsc::Sender<ListenItem>,
    status: watch::Sender<ListenerStatus>,
    tracker: Tracker,
    /// When the connection was lost, while it is.
    lost: Option<(Instant, DateTime<Utc>)>,
    connected_once: bool,
    /// A socket went on before its subscription was confirmed.
    unconfirmed: Arc<AtomicBool>,
    /// Slow-consumer losses since the last tick, healed together.
    slow: Option<DateTime<Utc>>,
    client: Option<Client>,
}

impl Watcher {
    async fn run(
        mut self,
        cfg: SubscriberConfig,
        client_tx: watch::Sender<Option<Client>>,
        shutdown: CancellationToken,
    ) {
        let (ev_tx, mut events) = mpsc::channel::<Seen>(EVENTS);
        let hook: EventHook = Arc::new(move |e| {
            let tx = ev_tx.clone();
            Box::pin(async move {
                let _ = tx.send((e, Instant::now(), Utc::now())).await;
            })
        });
        let extra = Extra {
            subscription_capacity: cfg.capacity,
            on_event: Some(hook),
            // Sockets subscribe before NATS is first reached; the first
            // connection sends those subscriptions and heals them.
            background: true,
        };
        let Some(mut relay) = self.start(&cfg, extra, &client_tx).await else {
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(seen) = events.recv() => self.on_event(seen).await,
                m = relay.next() => match m {
                    Some(m) => self.on_relay(&m.payload).await,
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// Connects and subscribes to the relay subject; `None` if the options
    /// cannot make a client (reported in the status).
    async fn start(
        &mut self,
        cfg: &SubscriberConfig,
        extra: Extra,
        client_tx: &watch::Sender<Option<Client>>,
    ) -> Option<Subscriber> {
        let subscribed = async {
            let client = connect_link_with(&cfg.opts, &cfg.name, extra).await?.client;
            let relay = client
                .subscribe(relay_subject(&cfg.opts.prefix))
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to the relay subject: {e}"))?;
            anyhow::Ok((client, relay))
        };
        match subscribed.await {
            Ok((client, relay)) => {
                client_tx.send_replace(Some(client.clone()));
                self.client = Some(client);
                Some(relay)
            }
            Err(e) => {
                tracing::error!(error = %e, "the NATS bus cannot start; realtime gets no events");
                self.status
                    .send_modify(|s| s.last_error = Some(format!("{e:#}")));
                None
            }
        }
    }

    async fn on_event(&mut self, (event, at, wall): Seen) {
        match event {
            Event::Connected => self.connected().await,
            Event::Disconnected => {
                self.lost.get_or_insert((at, wall));
                self.status.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some("disconnected from NATS".into());
                });
                tracing::warn!("NATS connection lost; the client reconnects");
            }
            Event::SlowConsumer(sid) => {
                let since = self.tracker.since_before(at, wall);
                tracing::warn!(sid, "NATS slow consumer: messages dropped; healing");
                self.slow = Some(self.slow.map_or(since, |s| s.min(since)));
            }
            Event::ServerError(e) => self.error(e.to_string()),
            Event::ClientError(e) => self.error(e.to_string()),
            Event::Closed => {
                self.status.send_modify(|s| s.connected = false);
                self.error("the NATS client closed".into());
            }
            Event::LameDuckMode | Event::Draining => {}
        }
    }

    fn error(&self, text: String) {
        tracing::warn!(error = %text, "NATS");
        self.status.send_modify(|s| s.last_error = Some(text));
    }

    /// (Re)connected: once the resubscriptions are in (a flush after the
    /// client re-sent them), heals what the outage lost.
    async fn connected(&mut self) {
        let first = !std::mem::replace(&mut self.connected_once, true);
        let lost = self.lost.take();
        if let Some(client) = &self.client
            && tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
                .await
                .is_err()
        {
            tracing::warn!("no flush answer after reconnecting; healing anyway");
        }
        self.status.send_modify(|s| {
            s.reconnects += u64::from(!first);
            s.connected = true;
            s.last_error = None;
        });
        tracing::info!(first, "connected to NATS");
        // A first connection heals only sockets whose subscription went
        // on unconfirmed while NATS was not there yet.
        let unconfirmed = self.unconfirmed.swap(false, Ordering::AcqRel);
        if first && !unconfirmed {
            return;
        }
        let (at, wall) = lost.unwrap_or((Instant::now(), Utc::now()));
        let since = self.tracker.since_before(at, wall);
        self.gap(Gap::all(GapReason::NatsReconnected, since)).await;
    }

    async fn on_relay(&mut self, payload: &[u8]) {
        let msg = match serde_json::from_slice::<RelayMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("ragctl_bus_relay_invalid_total").increment(1);
                tracing::debug!(error = %e, "an invalid relay message");
                return;
            }
        };
        let beat = matches!(msg, RelayMessage::Heartbeat { .. });
        if let Some(gap) = self.tracker.on_message(msg, Instant::now()) {
            self.gap(gap).await;
        }
        // After its gap is counted: whoever sees the heartbeat counted
        // sees the gap it caused too.
        if beat {
            metrics::counter!("ragctl_bus_relay_heartbeats_total").increment(1);
        }
    }

    async fn on_tick(&mut self) {
        if self.tracker.on_tick(Instant::now()) {
            metrics::counter!("ragctl_bus_relay_silences_total").increment(1);
            tracing::warn!(epoch = ?self.tracker.epoch(), "no relay heartbeat for 3 s; healing once one comes");
        }
        if let Some(since) = self.slow.take() {
            self.gap(Gap::all(GapReason::NatsSlowConsumer, since)).await;
        }
    }

    async fn gap(&self, gap: Gap) {
        metrics::counter!("ragctl_bus_gaps_total", "cause" => gap.reason.as_str()).increment(1);
        tracing::info!(cause = gap.reason.as_str(), since = %gap.since, user = ?gap.user, "bus gap");
        // Control items may wait: the router drains continuously.
        let _ = self.queue.send(ListenItem::Gap(gap)).await;
    }
}
