//! What starts a `ragctl serve` and waits for it: the ready file `serve`
//! writes (`--ready-file`), scratch databases, and a `nats-server` of
//! one's own. One copy serves
//! `tests/`, `ragctl bench` and `tests/e2e.sh` (through `ragctl` itself).

mod hex;
mod nats;
mod ready;
mod scratch;

pub use hex::random_hex;
pub use nats::{NatsServer, NatsServerError};
pub use ready::Ready;
pub use scratch::{ScratchDb, admin_sql, with_db};
