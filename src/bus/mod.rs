//! The optional NATS bus (issue #21, `--bus nats`): connecting to NATS,
//! the subject names, and the relay, the one process per database and
//! channel that LISTENs on PostgreSQL and republishes each envelope to the
//! subject of its user.
//!
//! ```text
//! workers ──pg_notify──▶ PostgreSQL ──NOTIFY──▶ relay (leader) ──▶ NATS <prefix>.u.<user>
//!                                        relay (standby: waits on the advisory lock)
//! ```

pub mod connect;
mod error;
pub mod relay;
mod relay_config;
mod relay_lock;
pub mod relay_msg;
mod relay_term;
pub mod subject;

pub use connect::{Link, LinkState, connect, connect_link};
pub use error::BusError;
pub use relay::{RelayConfig, RelayHandle, RelayRole};
