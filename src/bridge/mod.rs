//! The realtime bridge that runs in every API process: LISTEN on the event
//! channel, validate each envelope, and hand it to the sockets of its
//! `user_id` in this process.
//!
//! ```text
//! Postgres ──NOTIFY──▶ db::listener ──bounded queue──▶ router ──▶ Hub ──▶ Outlet ──▶ /ws socket
//!                      └──────── thread `ragctl-bridge` ────────────────┘
//! ```
//!
//! With `--bus nats` the source is [`bus`] instead (the users' subjects and
//! the relay's heartbeats, no LISTEN connection); the router is the same.
//!
//! The listener and the router run on a thread of their own, so that the
//! Postgres socket is read, and events routed, without waiting behind the
//! API's tasks. The router takes whatever notifications are queued (up to
//! [`ROUTE_BATCH`]) and the hub writes each user's frames of that batch to
//! each of the user's sockets in one write, straight from the router when
//! nothing is queued for the socket. Nothing here blocks on a client: what a
//! socket cannot take at once waits in its bounded queue for the socket's
//! task, and a socket whose queue overflows is closed.

mod close_code;
mod control;
mod heal;
mod hold;
mod hub;
mod inflight;
mod outlet;
mod send;
mod throttle;
mod uring;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use close_code::CloseCode;
pub use control::{ControlWriter, unbuffered_ws_config};
pub use heal::{HealConfig, instance_name};
pub use hold::{Held, Hold, Step};
pub use hub::{ConnGuard, Hub, HubStats, put_text_frame};
pub use outlet::{Begun, Chunk, Direct, Outlet, Pushed, Sink, TcpSink};
pub use send::SendOutcome;
pub use throttle::{RESYNC_THROTTLED, ThrottleConfig};
pub use uring::Sender;

/// Most notifications the router takes from its queue at once. Only what is
/// already queued is taken, so a quiet bridge routes one event at a time;
/// a bridge that fell behind catches up with batches holding several events
/// per user, each written to a socket in one call.
pub const ROUTE_BATCH: usize = 2048;

use heal::Healer;
use throttle::{HealRead, Throttle};

/// How often the router looks for throttled users whose budget refilled.
const THROTTLE_TICK: Duration = Duration::from_millis(100);

use crate::bus::{self, Interest, SubscriberConfig};
use crate::config::BusKind;
use crate::db::listener::{
    self, API_LISTENER_NAME, ListenItem, ListenerConfig, ListenerHandle, Notification,
};
use crate::events::{self, DropReason, Envelope, Reassembler, Scanned, WireMessage};

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub channel: String,
    /// Capacity of the queue between the Postgres socket and the router.
    pub queue: usize,
    /// Send an event's frames in one io_uring submission (`uring.rs`).
    pub io_uring: bool,
    /// Where gaps are healed from; `None` makes every gap a resync.
    pub heal: Option<HealConfig>,
    /// Each user's budget of frames on the router (`throttle.rs`).
    pub throttle: ThrottleConfig,
}

/// Where the router's notifications and gaps come from.
pub enum Source {
    /// A LISTEN connection of this process (`--bus postgres`).
    Postgres { listen_url: String },
    /// The users' NATS subjects and the relay's (`--bus nats`).
    Nats(SubscriberConfig),
}

/// A running bridge.
#[derive(Clone)]
pub struct Bridge {
    /// The source's connection state: the LISTEN connection's, or the
    /// NATS connection's (no queue usage, no listener count).
    pub listener: ListenerHandle,
    pub bus: BusKind,
    /// The sockets' subscriptions, with the NATS bus.
    pub interest: Option<Interest>,
}

/// Starts the source and the router on the `ragctl-bridge` thread; both
/// stop on `shutdown`, and the returned task ends when the thread has.
pub fn start(
    cfg: BridgeConfig,
    source: Source,
    hub: Hub,
    shutdown: CancellationToken,
) -> std::io::Result<(Bridge, tokio::task::JoinHandle<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel(cfg.queue);
    let healer = Healer::new(cfg.heal.clone(), hub.clone());
    let throttle = Throttle::new(cfg.throttle, cfg.heal.clone());
    let (bridge, listen_task) = {
        let _on = runtime.enter();
        spawn_source(source, &cfg.channel, tx, shutdown)
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ragctl-bridge".into())
        .spawn(move || {
            runtime.block_on(async move {
                let sender = Sender::new(cfg.io_uring);
                route(rx, hub, Steps { healer, throttle }, sender).await;
                let _ = listen_task.await;
            });
            let _ = done_tx.send(());
        })?;
    let done = tokio::spawn(async move {
        let _ = done_rx.await;
    });
    Ok((bridge, done))
}

/// Starts the source's task on the current runtime.
fn spawn_source(
    source: Source,
    channel: &str,
    tx: mpsc::Sender<ListenItem>,
    shutdown: CancellationToken,
) -> (Bridge, tokio::task::JoinHandle<()>) {
    match source {
        Source::Postgres { listen_url } => {
            let cfg = ListenerConfig::new(&listen_url, API_LISTENER_NAME, &[channel]);
            let (listener, task) = listener::spawn(cfg, tx, shutdown);
            let bus = BusKind::Postgres;
            let bridge = Bridge {
                listener,
                bus,
                interest: None,
            };
            (bridge, task)
        }
        Source::Nats(cfg) => {
            let nats = bus::spawn_subscriber(cfg, tx, shutdown);
            let bridge = Bridge {
                listener: nats.handle,
                bus: BusKind::Nats,
                interest: Some(nats.interest),
            };
            (bridge, nats.task)
        }
    }
}

/// Logs a drop reason at most once per interval, with how many were
/// suppressed, so a flood of bad payloads cannot flood the log.
struct DropLog {
    last: HashMap<DropReason, (Instant, u64)>,
    every: Duration,
}

impl DropLog {
    fn note(&mut self, reason: DropReason, sample: &str, now: Instant) {
        let entry = self.last.entry(reason).or_insert((now - self.every, 0));
        if now.duration_since(entry.0) >= self.every {
            let snippet: String = sample.chars().take(120).collect();
            tracing::warn!(reason = reason.as_str(), suppressed = entry.1, payload = %snippet, "dropped a malformed event");
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

/// Reads notifications into envelopes to deliver here, counting (and
/// logging, rate-limited) every one it drops.
struct Reader {
    frags: Reassembler,
    log: DropLog,
    dropped: HashMap<DropReason, metrics::Counter>,
    no_recipient: metrics::Counter,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            frags: Reassembler::default(),
            log: DropLog {
                last: HashMap::new(),
                every: Duration::from_secs(10),
            },
            dropped: DropReason::ALL
                .into_iter()
                .map(|r| {
                    let c =
                        metrics::counter!("ragctl_events_dropped_total", "reason" => r.as_str());
                    (r, c)
                })
                .collect(),
            no_recipient: metrics::counter!("ragctl_events_no_recipient_total"),
        }
    }

    /// The envelope `n` carries, if it is valid, complete, and for a user
    /// with a socket here.
    fn read(&mut self, n: &Notification, hub: &Hub) -> Option<Envelope> {
        let env = match events::scan(&n.payload) {
            // Most events on a bus with several instances are for users
            // with no socket here: checked, counted, never built.
            Ok(Scanned::Envelope { user_id }) if !hub.has_sockets(user_id) => {
                self.no_recipient.increment(1);
                return None;
            }
            Ok(Scanned::Envelope { .. }) => events::envelope(&n.payload),
            Ok(Scanned::Fragment) => self.fragment(n).transpose()?,
            Err(reason) => Err(reason),
        };
        env.inspect_err(|&reason| {
            self.dropped[&reason].increment(1);
            self.log.note(reason, &n.payload, Instant::now());
        })
        .ok()
    }

    /// Adds a fragment; the envelope once its group is complete.
    fn fragment(&mut self, n: &Notification) -> Result<Option<Envelope>, DropReason> {
        let WireMessage::Fragment(f) = events::decode(&n.payload)? else {
            return Err(DropReason::BadFragment);
        };
        let (res, evicted) = self.frags.push(f, n.received_at);
        if evicted > 0 {
            self.dropped[&DropReason::BadFragment].increment(evicted as u64);
        }
        res
    }

    fn expire(&mut self) {
        let n = self.frags.expire(Instant::now());
        if n > 0 {
            self.dropped[&DropReason::FragmentExpired].increment(n as u64);
        }
    }
}

/// What the router does to events besides reading them: gap heals and
/// each user's frame budget.
struct Steps {
    healer: Healer,
    throttle: Throttle,
}

impl Steps {
    fn keep(&mut self, env: &Envelope) -> bool {
        !self.healer.superseded(env) && !self.throttle.superseded(env)
    }

    /// Sends what the batch's users can pay for.
    fn deliver(&mut self, envs: &mut Vec<Envelope>, hub: &Hub, sender: &mut Sender) {
        self.throttle.admit(envs, hub);
        hub.deliver_with(envs, sender);
        envs.clear();
    }
}

/// The throttle heal in flight, if any (pending forever otherwise).
async fn finished(heal: &mut Option<tokio::task::JoinHandle<HealRead>>) -> Option<HealRead> {
    match heal {
        Some(task) => task.await.ok(),
        None => std::future::pending().await,
    }
}

async fn route(mut rx: mpsc::Receiver<ListenItem>, hub: Hub, mut steps: Steps, mut sender: Sender) {
    let mut reader = Reader::new();
    let mut expire = tokio::time::interval(Duration::from_secs(5));
    let mut due = tokio::time::interval(THROTTLE_TICK);
    due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healing = None;
    let mut items = Vec::with_capacity(ROUTE_BATCH);
    let mut envs = Vec::with_capacity(ROUTE_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut items, ROUTE_BATCH) => if n == 0 { return },
            _ = expire.tick() => {
                reader.expire();
                steps.throttle.prune(&hub);
                continue;
            }
            _ = due.tick(), if healing.is_none() && steps.throttle.waiting() => {
                healing = steps.throttle.start(&hub);
                continue;
            }
            read = finished(&mut healing) => {
                healing = None;
                match read {
                    Some(read) => steps.throttle.finish(read, &hub),
                    None => steps.throttle.abandon(),
                }
                continue;
            }
        }
        for item in items.drain(..) {
            let n = match item {
                ListenItem::Gap(gap) => {
                    // Events before the gap go out before the healed states,
                    // and nothing after it goes out until they have.
                    steps.deliver(&mut envs, &hub, &mut sender);
                    steps.healer.heal(gap).await;
                    continue;
                }
                ListenItem::Notification(n) => n,
            };
            match reader.read(&n, &hub) {
                Some(env) if steps.keep(&env) => envs.push(env),
                _ => {}
            }
        }
        if !envs.is_empty() {
            steps.deliver(&mut envs, &hub, &mut sender);
        }
    }
}
