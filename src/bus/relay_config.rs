//! What a relay is given, and the role it reports (`/readyz`). A leaf but
//! for the NATS options.

use crate::config::NatsOpts;

/// `application_name` of the relay's LISTEN connection: the one LISTEN
/// backend on the event channel with `--bus nats`.
pub const RELAY_LISTENER_NAME: &str = "ragctl-relay";

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The URL of the LISTEN and lock connections.
    pub listen_url: String,
    pub channel: String,
    pub nats: NatsOpts,
    /// Bound of the queue between the LISTEN socket and the publisher.
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// Connecting to NATS, or waiting for the lock.
    Standby,
    Leader,
}

impl RelayRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayRole::Standby => "standby",
            RelayRole::Leader => "leader",
        }
    }
}
