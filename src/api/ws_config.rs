//! The WebSocket settings, which every
//! part of a socket's life reads and `Shared` holds; here, not under
//! `ws/`, so that `state.rs` need not import the folder whose handler
//! imports it. A leaf but for `catchups.rs`.

use std::time::Duration;

use super::catchups::Catchups;

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub ping_interval: Duration,
    /// A peer that sends nothing (no pong, no frame) this long is closed
    /// with 4002.
    pub idle_timeout: Duration,
    /// A write that takes longer than this drops the socket.
    pub write_timeout: Duration,
    /// Largest frame or message a client may send (`auth.refresh` is the
    /// only message it means anything to send).
    pub max_client_frame: usize,
    /// Most state frames a resuming socket (`?since=`) is sent before
    /// `realtime.resync` replaces the rest.
    pub max_catchup: usize,
    /// Catch-ups running at once, per process and per user.
    pub catchups: Catchups,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_client_frame: 4096,
            max_catchup: 10_000,
            catchups: Catchups::new(32, 2),
        }
    }
}
