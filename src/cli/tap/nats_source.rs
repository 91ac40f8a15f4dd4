//! Feeds the inspector from NATS (`tap --bus nats`): every message under
//! `<prefix>.>` as it crosses NATS. A user subject's message is an
//! envelope's text, shown like a NOTIFY with the subject as its channel;
//! the relay subject's become [`Input::Relay`]; the connection's state is
//! the status bar's.

use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::source::{Input, SourceStatus};
use crate::bus::relay_msg::RelayMessage;
use crate::bus::subject::relay_subject;
use crate::bus::{Link, LinkState};

/// Subscribes to `<prefix>.>`; inputs arrive on the returned receiver
/// until `shutdown` is cancelled.
pub async fn spawn(
    link: Link,
    prefix: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<mpsc::Receiver<Input>> {
    let mut sub = link.client.subscribe(format!("{prefix}.>")).await?;
    // Subscribed at the server before the first status says connected.
    link.client.flush().await?;
    let relay = relay_subject(prefix);
    let (tx, rx) = mpsc::channel::<Input>(8192);
    let mut state = link.state.clone();
    tokio::spawn(async move {
        let first = status(&state.borrow_and_update());
        let _ = tx.send(Input::Status(first)).await;
        loop {
            let input = tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = state.changed() => {
                    if changed.is_err() { return; }
                    let now = status(&state.borrow_and_update());
                    Input::Status(now)
                }
                msg = sub.next() => match msg {
                    None => return,
                    Some(m) => {
                        let subject = m.subject.to_string();
                        let payload = String::from_utf8_lossy(&m.payload).into_owned();
                        to_input(&relay, subject, payload)
                    }
                },
            };
            if tx.send(input).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// A relay message read as one; anything else (an envelope, or a relay
/// message that is not one) goes to the decoder, which says what it is.
fn to_input(relay: &str, subject: String, payload: String) -> Input {
    let received_at = Utc::now();
    if subject == relay
        && let Ok(message) = serde_json::from_str::<RelayMessage>(&payload)
    {
        return Input::Relay {
            message,
            received_at,
        };
    }
    Input::Notification {
        channel: subject,
        payload,
        received_at,
    }
}

/// The NATS link as the status bar's connection: no queue usage or
/// listener count to report on this bus.
fn status(s: &LinkState) -> SourceStatus {
    SourceStatus {
        connected: s.connected,
        reconnects: s.disconnects,
        ..SourceStatus::default()
    }
}
