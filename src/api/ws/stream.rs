//! What a socket's task reads and writes through: the stream type and the
//! bounded flush of its outlet, which the loop, the catch-up and the close
//! share. A leaf.

use tokio::io::Join;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::bridge::{ControlWriter, Outlet};

/// What tungstenite reads from (the socket's read half) and writes to (the
/// outlet, for the protocol's own frames).
pub(super) type Socket = WebSocketStream<Join<OwnedReadHalf, ControlWriter>>;

/// Writes what is queued in the outlet, giving up when the socket is marked
/// slow, the server shuts down, or no flush completes within `timeout`.
pub(super) async fn flush(
    outlet: &Outlet,
    shutdown: &CancellationToken,
    timeout: Duration,
) -> bool {
    tokio::select! {
        r = tokio::time::timeout(timeout, outlet.flush()) => matches!(r, Ok(Ok(()))),
        // Both are handled by the socket loop, which closes the socket.
        _ = outlet.slow.cancelled() => true,
        _ = shutdown.cancelled() => true,
    }
}
