//! Publishing: the one function every state change goes through, called
//! *after* the business transaction commits.
//!
//! Realtime is best effort. A publish is bounded by a timeout, and a failure
//! is logged and counted, never returned to the business flow as a reason to
//! fail or roll back.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;
use uuid::Uuid;

use super::contract::EventType;
use super::payloads::{Outgoing, Payload};
use super::publish_error::PublishError;
use super::wire::{Envelope, encode_notifications};
use crate::db::error_text as db_error_text;

/// Where an event goes when it could not be put on the bus: the API process
/// hands it to its own sockets directly.
pub trait LocalDelivery: Send + Sync {
    fn deliver_local(&self, env: &Envelope);
}

#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    channel: String,
    origin: String,
    timeout: Duration,
    local: OnceLock<Arc<dyn LocalDelivery>>,
}

impl Publisher {
    pub fn new(pool: Pool, channel: &str, origin: &str, timeout: Duration) -> Publisher {
        Publisher {
            inner: Arc::new(Inner {
                pool,
                channel: channel.to_string(),
                origin: origin.to_string(),
                timeout,
                local: OnceLock::new(),
            }),
        }
    }

    /// How long a newly queued job must wait for the events announcing it:
    /// two publishes at their timeout, plus a margin.
    pub fn embargo(&self) -> Duration {
        self.inner.timeout * 2 + Duration::from_secs(1)
    }

    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Installs the fallback used when a publish fails (API processes only).
    pub fn set_local_delivery(&self, sink: Arc<dyn LocalDelivery>) {
        let _ = self.inner.local.set(sink);
    }

    /// Builds the envelope for one state change and publishes it, best
    /// effort: a failure is logged and the business flow goes on.
    pub async fn emit(&self, user_id: Uuid, kind: EventType, payload: Value) {
        let env = Envelope::new(user_id, kind, payload, &self.inner.origin);
        let id = env.id;
        if let Err(e) = self.publish(env).await {
            tracing::warn!(event_id = %id, r#type = kind.as_str(), error = %e, "event publish failed; realtime is best effort, continuing");
        }
    }

    /// [`Publisher::emit`] for a payload built from its row.
    pub async fn emit_payload<P: Payload>(&self, user_id: Uuid, payload: &P) {
        self.emit_outgoing(Outgoing::new(user_id, payload)).await
    }

    pub async fn emit_outgoing(&self, out: Outgoing) {
        self.emit(out.user_id, out.kind, out.payload).await
    }

    /// Publishes an envelope. Failures are counted, handed to the local
    /// fallback if there is one, and returned: [`Publisher::emit`] logs
    /// them, `ragctl emit` reports them as its own error.
    pub async fn publish(&self, env: Envelope) -> Result<(), PublishError> {
        let kind = env.kind.as_str();
        let result = match encode_notifications(&env) {
            Ok(notes) => match tokio::time::timeout(self.inner.timeout, self.send(&notes)).await {
                Ok(r) => r,
                Err(_) => Err(PublishError::Timeout(self.inner.timeout)),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                metrics::counter!("ragctl_events_published_total", "type" => kind).increment(1);
            }
            Err(e) => {
                metrics::counter!("ragctl_publish_failures_total", "reason" => e.label())
                    .increment(1);
                if let Some(local) = self.inner.local.get() {
                    local.deliver_local(&env);
                }
            }
        }
        result
    }

    async fn send(&self, notes: &[String]) -> Result<(), PublishError> {
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| PublishError::Pool(e.to_string()))?;
        let notify = |e: tokio_postgres::Error| PublishError::Notify(db_error_text(&e));
        if let [one] = notes {
            let stmt = client
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .map_err(notify)?;
            client
                .execute(&stmt, &[&self.inner.channel, one])
                .await
                .map_err(notify)?;
            return Ok(());
        }
        // Fragments go in one transaction: PostgreSQL queues a transaction's
        // notifications together, in order, so listeners get them back to back.
        let tx = client.transaction().await.map_err(notify)?;
        let stmt = tx
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(notify)?;
        for note in notes {
            tx.execute(&stmt, &[&self.inner.channel, note])
                .await
                .map_err(notify)?;
        }
        tx.commit().await.map_err(notify)
    }
}
