//! The optional NATS bus (issue #21, `--bus nats`): one relay per database
//! and channel LISTENs on PostgreSQL and republishes each envelope to the
//! subject of its user; API instances subscribe to the subjects of the
//! users they hold sockets for and feed the bridge's router, healing every
//! gap from the rows.
//!
//! ```text
//! workers ──pg_notify──▶ PostgreSQL ──NOTIFY──▶ relay (leader) ──▶ NATS <prefix>.u.<user> ──▶ API instances with that user's sockets
//!                                        relay (standby: waits on the advisory lock)
//! ```
//!
//! - `connect`: a NATS connection from the bus options; `subject`: names.
//! - `relay*`: the relay (lock, term, messages on `<prefix>.relay`).
//! - `interest`: a subscription per user with a socket here.
//! - `subscriber`: the bridge's NATS source (relay subject, connection
//!   events, status); `subscriber_gaps` its gap rules.

pub mod connect;
mod error;
mod interest;
pub mod relay;
mod relay_config;
mod relay_lock;
pub mod relay_msg;
mod relay_term;
pub mod subject;
mod subscriber;
mod subscriber_gaps;

pub use connect::{EventHook, Extra, Link, LinkState, connect, connect_link, connect_link_with};
pub use error::BusError;
pub use interest::{Held, Interest};
pub use relay::{RelayConfig, RelayHandle, RelayRole};
pub use subject::{relay_subject, user_subject};
pub use subscriber::{NatsSource, SubscriberConfig, spawn as spawn_subscriber};
