//! The realtime bridge that runs in every API process: LISTEN on the event
//! channel, validate each envelope, and hand it to the sockets of its
//! `user_id` in this process.
//!
//! ```text
//! Postgres ──NOTIFY──▶ db::listener ──bounded queue──▶ router ──▶ Hub ──per-socket queues──▶ /ws
//! ```
//!
//! Nothing here blocks on a client: the hub only `try_send`s into bounded
//! per-socket queues, and a socket whose queue overflows is closed.

mod hub;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use hub::{CLOSE_SLOW_CONSUMER, ConnGuard, Hub, HubStats, Outbound};

use crate::db::listener::{self, API_LISTENER_NAME, ListenItem, ListenerConfig, ListenerHandle};
use crate::events::{self, DropReason, Reassembler, WireMessage};

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub listen_url: String,
    pub channel: String,
    /// Capacity of the queue between the Postgres socket and the router.
    pub queue: usize,
}

/// A running bridge.
#[derive(Clone)]
pub struct Bridge {
    pub listener: ListenerHandle,
}

/// Starts the listener and the router; both stop on `shutdown`.
pub fn start(
    cfg: BridgeConfig,
    hub: Hub,
    shutdown: CancellationToken,
) -> (Bridge, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(cfg.queue);
    let (handle, listen_task) = listener::spawn(
        ListenerConfig::new(&cfg.listen_url, API_LISTENER_NAME, &[cfg.channel.as_str()]),
        tx,
        shutdown.clone(),
    );
    let router = tokio::spawn(async move {
        route(rx, hub).await;
        let _ = listen_task.await;
    });
    (Bridge { listener: handle }, router)
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

async fn route(mut rx: mpsc::Receiver<ListenItem>, hub: Hub) {
    let mut frags = Reassembler::default();
    let mut log = DropLog {
        last: HashMap::new(),
        every: Duration::from_secs(10),
    };
    let dropped: HashMap<DropReason, metrics::Counter> = DropReason::ALL
        .into_iter()
        .map(|r| {
            (
                r,
                metrics::counter!("ragctl_events_dropped_total", "reason" => r.as_str()),
            )
        })
        .collect();
    let mut expire = tokio::time::interval(Duration::from_secs(5));
    loop {
        let item = tokio::select! {
            item = rx.recv() => match item { Some(i) => i, None => return },
            _ = expire.tick() => {
                let n = frags.expire(Instant::now());
                if n > 0 {
                    dropped[&DropReason::FragmentExpired].increment(n as u64);
                }
                continue;
            }
        };
        let n = match item {
            ListenItem::Gap(reason) => {
                hub.resync(reason.as_str());
                continue;
            }
            ListenItem::Notification(n) => n,
        };
        let env = match events::decode(&n.payload) {
            Ok(WireMessage::Envelope(env)) => Ok(*env),
            Ok(WireMessage::Fragment(f)) => {
                let (res, evicted) = frags.push(f, n.received_at);
                if evicted > 0 {
                    dropped[&DropReason::BadFragment].increment(evicted as u64);
                }
                match res {
                    Ok(Some(env)) => Ok(env),
                    Ok(None) => continue,
                    Err(reason) => Err(reason),
                }
            }
            Err(reason) => Err(reason),
        };
        match env {
            Ok(env) => hub.deliver(&env, n.received_at),
            Err(reason) => {
                dropped[&reason].increment(1);
                log.note(reason, &n.payload, Instant::now());
            }
        }
    }
}
