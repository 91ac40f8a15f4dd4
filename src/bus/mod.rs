//! The NATS bus (issue #21, `--bus nats`): one relay LISTENs to
//! PostgreSQL and republishes each envelope to its user's subject; API
//! instances subscribe to the subjects of the users they hold sockets for
//! and feed the bridge's router, healing every gap from the rows.
//!
//! - `connect`: a NATS connection from [`crate::config::BusOpts`].
//! - `subject`: subject names.
//! - `interest`: a subscription per user with a socket here.
//! - `subscriber`: the bridge's NATS source (relay subject, connection
//!   events, status); `subscriber_gaps` its gap rules.

mod connect;
mod interest;
mod subject;
mod subscriber;
mod subscriber_gaps;

pub use connect::{BusError, connect};
pub use interest::{Held, Interest};
pub use subject::{relay_subject, user_subject};
pub use subscriber::{NatsSource, SubscriberConfig, spawn as spawn_subscriber};
pub use subscriber_gaps::RelayMsg;
