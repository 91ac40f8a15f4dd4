//! Feeds the inspector: a LISTEN connection (the shared reconnecting
//! listener, under its own application name so it is not counted as an API
//! instance) whose notifications and status become [`Input`]s.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::listener::{self, ListenItem, ListenerConfig};

/// The state of the LISTEN connection: the shared listener's own status.
pub use crate::db::listener::ListenerStatus as SourceStatus;

/// What the source sends to the inspector.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// One NOTIFY, exactly as it came off the connection.
    Notification {
        channel: String,
        payload: String,
        received_at: DateTime<Utc>,
    },
    /// The state of the LISTEN connection, sent whenever it changes and
    /// periodically with fresh queue usage and listener counts.
    Status(SourceStatus),
}

/// Starts listening on `channel`; inputs arrive on the returned receiver
/// until `shutdown` is cancelled.
pub fn spawn(url: &str, channel: &str, shutdown: CancellationToken) -> mpsc::Receiver<Input> {
    let (items_tx, mut items_rx) = mpsc::channel::<ListenItem>(8192);
    let mut cfg = ListenerConfig::new(url, "ragctl-tap", &[channel]);
    // The status bar wants fresh queue usage and listener counts.
    cfg.probe_interval = Duration::from_secs(1);
    let (handle, _task) = listener::spawn(cfg, items_tx, shutdown.clone());
    let (tx, rx) = mpsc::channel::<Input>(8192);
    let mut watch = handle.status;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = watch.changed() => {
                    if changed.is_err() { return; }
                    let s = watch.borrow_and_update().clone();
                    if tx.send(Input::Status(s)).await.is_err() {
                        return;
                    }
                }
                item = items_rx.recv() => match item {
                    Some(ListenItem::Notification(n)) => {
                        let input = Input::Notification {
                            channel: n.channel,
                            payload: n.payload,
                            received_at: n.received_wall,
                        };
                        if tx.send(input).await.is_err() { return; }
                    }
                    // Reconnects show in the status bar already.
                    Some(ListenItem::Gap(_)) => {}
                    None => return,
                },
            }
        }
    });
    rx
}
