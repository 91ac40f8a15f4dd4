//! Interest-based subscriptions: this instance subscribes to a user's
//! subject while that user has a socket here, so NATS sends it only the
//! events of the users it holds.
//!
//! A socket takes a [`Held`] after its hub registration and before its
//! catch-up: the first socket of a user subscribes and waits for the
//! server to confirm (a flush), so an event committed after the catch-up's
//! read reaches the subscription. The last socket's [`Held`] going away
//! unsubscribes after a grace, so a reconnecting client does not churn.
//!
//! Each subscription has a small task forwarding its messages into the
//! bridge's queue (one wake per message, where a merged stream would poll
//! every user's subscription); waiting on a full queue lets the client's
//! own buffer fill, and its slow-consumer event heals the loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, Subscriber};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::subject::user_subject;
use crate::db::listener::{ListenItem, ListenerCounters, Notification};

/// How long a subscription (and the server's confirmation) may take
/// before the socket goes on without it: the client resubscribes by
/// itself once connected, and that reconnect heals.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by the API's sockets (cheap to clone).
#[derive(Clone)]
pub struct Interest {
    inner: Arc<Inner>,
}

pub(super) struct Setup {
    pub client: watch::Receiver<Option<Client>>,
    pub prefix: String,
    pub channel: String,
    /// Weak: the router ends once the bus's tasks have stopped.
    pub queue: mpsc::WeakSender<ListenItem>,
    pub counters: Arc<ListenerCounters>,
    pub grace: Duration,
    /// Users kept in their grace at most (the socket limit).
    pub max_users: usize,
    pub shutdown: CancellationToken,
    /// Set when a subscription went on unconfirmed: the events it missed
    /// before the connection came up are healed then.
    pub unconfirmed: Arc<AtomicBool>,
}

struct Inner {
    setup: Setup,
    users: Mutex<HashMap<Uuid, Entry>>,
    gauge: metrics::Gauge,
    received: metrics::Counter,
}

struct Entry {
    sockets: usize,
    /// Bumped by every hold: a grace timer acts only if none came since.
    generation: u64,
    /// The forwarding task's stop, once subscribed.
    sub: Arc<OnceCell<CancellationToken>>,
}

/// A socket's interest in its user's subject; released on drop. Boxed:
/// it lives in every socket's task, whose size is what idle sockets cost.
pub struct Held(#[expect(dead_code, reason = "held for its drop")] Box<HeldBy>);

struct HeldBy {
    inner: Arc<Inner>,
    user: Uuid,
}

impl Interest {
    pub(super) fn new(setup: Setup) -> Interest {
        Interest {
            inner: Arc::new(Inner {
                setup,
                users: Mutex::new(HashMap::new()),
                gauge: metrics::gauge!("ragctl_bus_subscriptions"),
                received: metrics::counter!("ragctl_bus_received_total"),
            }),
        }
    }

    /// Holds `user`'s subscription, subscribing (confirmed by the server)
    /// if this is its first socket.
    pub async fn hold(&self, user: Uuid) -> Held {
        let cell = {
            let mut users = self.inner.users.lock().expect("interest lock");
            let entry = users.entry(user).or_insert_with(|| Entry {
                sockets: 0,
                generation: 0,
                sub: Arc::new(OnceCell::new()),
            });
            entry.sockets += 1;
            entry.generation += 1;
            entry.sub.clone()
        };
        let held = Held(Box::new(HeldBy {
            inner: self.inner.clone(),
            user,
        }));
        if let Err(e) = cell.get_or_try_init(|| self.inner.subscribe(user)).await {
            metrics::counter!("ragctl_bus_subscribe_failures_total").increment(1);
            tracing::warn!(%user, error = %e, "cannot subscribe to the user's subject");
        }
        held
    }
}

#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error("no NATS client yet")]
    NoClient,
    #[error("the bus is stopping")]
    Stopping,
    #[error(transparent)]
    Nats(#[from] async_nats::SubscribeError),
}

impl Inner {
    async fn subscribe(&self, user: Uuid) -> Result<CancellationToken, SubscribeError> {
        let client = self.client().await?;
        let queue = self.setup.queue.upgrade().ok_or(SubscribeError::Stopping)?;
        let sub = client
            .subscribe(user_subject(&self.setup.prefix, user))
            .await?;
        let stop = self.setup.shutdown.child_token();
        let fwd = Forward {
            queue,
            channel: self.setup.channel.clone(),
            counters: self.setup.counters.clone(),
            received: self.received.clone(),
        };
        tokio::spawn(fwd.run(sub, stop.clone()));
        self.gauge.increment(1.0);
        // The server has the SUB once it answers the flush's PING.
        match tokio::time::timeout(CONFIRM_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            _ => {
                self.setup.unconfirmed.store(true, Ordering::Release);
                metrics::counter!("ragctl_bus_subscribe_unconfirmed_total").increment(1);
            }
        }
        Ok(stop)
    }

    async fn client(&self) -> Result<Client, SubscribeError> {
        let mut rx = self.setup.client.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(CONFIRM_TIMEOUT, wait).await {
            Ok(Ok(c)) => c.clone().ok_or(SubscribeError::NoClient),
            _ => Err(SubscribeError::NoClient),
        }
    }

    /// After the grace: unsubscribes if no socket came back meanwhile.
    fn expire(&self, user: Uuid, generation: u64) {
        let mut users = self.users.lock().expect("interest lock");
        let idle = users
            .get(&user)
            .is_some_and(|e| e.sockets == 0 && e.generation == generation);
        if !idle {
            return;
        }
        if let Some(entry) = users.remove(&user)
            && let Some(stop) = entry.sub.get()
        {
            stop.cancel();
            self.gauge.decrement(1.0);
        }
    }
}

impl Drop for HeldBy {
    fn drop(&mut self) {
        let (generation, crowded) = {
            let mut users = self.inner.users.lock().expect("interest lock");
            let crowded = users.len() > self.inner.setup.max_users;
            let Some(entry) = users.get_mut(&self.user) else {
                return;
            };
            entry.sockets -= 1;
            if entry.sockets > 0 {
                return;
            }
            (entry.generation, crowded)
        };
        let grace = self.inner.setup.grace;
        match tokio::runtime::Handle::try_current() {
            // Past the socket limit in users, no grace: the count stays bounded.
            Ok(rt) if !crowded && !grace.is_zero() => {
                let (inner, user) = (self.inner.clone(), self.user);
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    inner.expire(user, generation);
                });
            }
            _ => self.inner.expire(self.user, generation),
        }
    }
}

/// Moves one subscription's messages into the bridge's queue.
struct Forward {
    queue: mpsc::Sender<ListenItem>,
    channel: String,
    counters: Arc<ListenerCounters>,
    received: metrics::Counter,
}

impl Forward {
    /// Runs until stopped; dropping the subscriber unsubscribes.
    async fn run(self, mut sub: Subscriber, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = sub.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let Some(item) = self.item(&msg.payload) else {
                continue;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = self.queue.send(item) => if sent.is_err() { return },
            }
        }
    }

    fn item(&self, payload: &[u8]) -> Option<ListenItem> {
        self.received.increment(1);
        let now = Utc::now();
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let ms = now.timestamp_millis() as u64;
        self.counters
            .last_notification_ms
            .store(ms, Ordering::Relaxed);
        let Ok(text) = std::str::from_utf8(payload) else {
            metrics::counter!("ragctl_bus_dropped_total", "reason" => "not_utf8").increment(1);
            return None;
        };
        Some(ListenItem::Notification(Notification {
            channel: self.channel.clone(),
            payload: text.to_string(),
            received_at: Instant::now(),
            received_wall: now,
        }))
    }
}
