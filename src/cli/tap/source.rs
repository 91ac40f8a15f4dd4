//! Feeds the inspector: a LISTEN connection (the shared reconnecting
//! listener, under its own application name so it is not counted as an API
//! instance) on the event channel and on the ops channel, whose
//! notifications and status become [`Input`]s. Of the ops channel it keeps
//! the reports of its own event channel.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::report::OpsReport;
use crate::db::listener::{self, ListenItem, ListenerConfig};
use crate::events::ops::OPS_CHANNEL;

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
    /// A report off the ops channel for this event channel (a bridge's
    /// heal run).
    Report(Box<OpsReport>),
    /// The state of the LISTEN connection, sent whenever it changes and
    /// periodically with fresh queue usage and listener counts.
    Status(SourceStatus),
    /// A message of the NATS relay (`tap --bus nats`).
    Relay {
        message: crate::bus::relay_msg::RelayMessage,
        received_at: DateTime<Utc>,
    },
}

impl Input {
    /// What a notification on `channel` becomes for a tap of `tap_channel`:
    /// events pass as they are, ops reports are read and kept only when
    /// they name `tap_channel`.
    pub fn from_notification(
        tap_channel: &str,
        channel: String,
        payload: String,
        received_at: DateTime<Utc>,
    ) -> Option<Input> {
        if channel == OPS_CHANNEL && tap_channel != OPS_CHANNEL {
            let report = OpsReport::read(tap_channel, channel, payload, received_at)?;
            return Some(Input::Report(Box::new(report)));
        }
        Some(Input::Notification {
            channel,
            payload,
            received_at,
        })
    }
}

/// Starts listening on `channel` and the ops channel; inputs arrive on the
/// returned receiver until `shutdown` is cancelled.
pub fn spawn(url: &str, channel: &str, shutdown: CancellationToken) -> mpsc::Receiver<Input> {
    let (items_tx, mut items_rx) = mpsc::channel::<ListenItem>(8192);
    let mut cfg = ListenerConfig::new(url, "ragctl-tap", &[channel, OPS_CHANNEL]);
    // The status bar wants fresh queue usage and listener counts.
    cfg.probe_interval = Duration::from_secs(1);
    let (handle, _task) = listener::spawn(cfg, items_tx, shutdown.clone());
    let (tx, rx) = mpsc::channel::<Input>(8192);
    let mut watch = handle.status;
    let channel = channel.to_string();
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
                        let input = Input::from_notification(
                            &channel, n.channel, n.payload, n.received_wall,
                        );
                        let Some(input) = input else { continue };
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
