//! How tungstenite writes through an outlet: its own frames (pong, ping,
//! close) go into the same outlet as the router's direct writes, so frames
//! never interleave, and only with a configuration that does not buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::outlet::{Outlet, Pushed};

/// The WebSocket configuration the direct write path requires: tungstenite
/// writes each frame to its stream as soon as it makes it, in one call
/// (`write_buffer_size(0)`). `ControlWriter` takes each call as whole
/// frames (a close frame is known by its first byte and gets a slot beyond
/// the queue bound) and queues it at once behind the router's writes; with
/// a write buffer a pong or close would wait inside tungstenite, and frames
/// could reach the outlet merged or split. Clients built on it (the bench
/// fleets) likewise send each message when it is made.
pub fn unbuffered_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().write_buffer_size(0)
}

/// The write half handed to the WebSocket protocol library: what it writes
/// (pongs, pings, close frames) goes through the outlet, behind the frames
/// already queued.
pub struct ControlWriter(Arc<Outlet>);

impl ControlWriter {
    /// The writer of a socket that tungstenite drives with `config`.
    ///
    /// # Panics
    /// If `config` buffers writes (see [`unbuffered_ws_config`]).
    pub fn new(outlet: Arc<Outlet>, config: &WebSocketConfig) -> ControlWriter {
        assert_eq!(
            config.write_buffer_size, 0,
            "a socket written through an outlet needs unbuffered_ws_config()"
        );
        ControlWriter(outlet)
    }
}

impl AsyncWrite for ControlWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Unbuffered (checked in `new`): one call carries complete frames.
        match self.0.push_control(Bytes::copy_from_slice(buf)) {
            Pushed::Written | Pushed::Queued => Poll::Ready(Ok(buf.len())),
            Pushed::Slow => Poll::Ready(Err(io::Error::other("slow consumer"))),
            Pushed::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket's task flushes the outlet.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::outlet::Sink;

    #[test]
    fn the_direct_write_config_does_not_buffer() {
        assert_eq!(unbuffered_ws_config().write_buffer_size, 0);
        let outlet = Arc::new(Outlet::new(Sink::stream(tokio::io::sink()), 4));
        ControlWriter::new(outlet, &unbuffered_ws_config());
    }

    #[test]
    #[should_panic(expected = "unbuffered_ws_config")]
    fn a_buffering_config_is_refused() {
        let outlet = Arc::new(Outlet::new(Sink::stream(tokio::io::sink()), 4));
        ControlWriter::new(outlet, &WebSocketConfig::default());
    }
}
