//! What starts a `ragctl serve` and waits for it: the ready file `serve`
//! writes (`--ready-file`), and scratch databases. One copy serves
//! `tests/`, `ragctl bench` and `tests/e2e.sh` (through `ragctl` itself).

mod ready;
mod scratch;

pub use ready::Ready;
pub use scratch::{ScratchDb, admin_sql, with_db};

/// `bytes` random bytes as lowercase hex (names, secrets).
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
