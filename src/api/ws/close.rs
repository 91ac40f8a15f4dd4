//! How a socket ends: which close frame it gets, and the close handshake.
//!
//! RFC 6455 section 7.1.1 wants the server to close TCP once the close
//! handshake is done, so a close the server starts waits (briefly) for the
//! client's reply; a client that breaks the protocol (section 7.1.7) gets
//! its close code, then FIN, and what it still sends is read and dropped so
//! that closing the socket does not turn into a reset.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

use super::stream::Socket;
use crate::api::ws_config::WsConfig;
use crate::bridge::{CloseCode, Outlet};

/// How long a close frame may take to leave (a slow consumer's gets the
/// write timeout instead).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// How long the server waits for the client's close reply, or for the
/// client to close after a protocol error.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);
/// A close frame's reason holds at most 123 bytes.
const MAX_REASON: usize = 123;

/// Why the socket loop ended; `finish` does the rest.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The server closes: a close frame with the code's reason, then the
    /// client's reply.
    Server {
        code: CloseCode,
        /// A slow consumer's close skips the queued events.
        slow: bool,
    },
    /// The client broke the protocol: a close frame with the error's text,
    /// FIN, then drain.
    Fail { code: CloseCode, reason: String },
    /// The client closed; tungstenite has queued the reply.
    Replied,
    /// The connection is gone: nothing more to send.
    Gone(&'static str),
}

impl Ending {
    pub fn server(code: CloseCode) -> Ending {
        Ending::Server { code, slow: false }
    }

    /// The close of a socket whose queue overflowed.
    pub fn slow_consumer() -> Ending {
        Ending::Server {
            code: CloseCode::SlowConsumer,
            slow: true,
        }
    }

    /// The close code for an error tungstenite met reading the client.
    pub fn from_error(e: &WsError) -> Ending {
        let code = match e {
            WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => {
                return Ending::Gone("client_closed");
            }
            // The peer hung up without a close frame.
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return Ending::Gone("client_closed");
            }
            WsError::Protocol(_) | WsError::AttackAttempt => CloseCode::ProtocolError,
            WsError::Utf8(_) => CloseCode::InvalidData,
            WsError::Capacity(_) => CloseCode::TooBig,
            _ => CloseCode::Internal,
        };
        Ending::Fail {
            code,
            reason: truncate(e.to_string()),
        }
    }

    /// Sends what the ending calls for; the reason to count it under.
    pub async fn finish(
        self,
        socket: &mut Socket,
        outlet: &Outlet,
        cfg: &WsConfig,
    ) -> &'static str {
        match self {
            Ending::Server { code, slow } => {
                // A slow consumer's close waits as long as any write may:
                // it gets out if the client starts reading again in time.
                let wait = if slow { cfg.write_timeout } else { CLOSE_FLUSH };
                if send_close(socket, outlet, code, code.reason(), slow, wait).await {
                    await_reply(socket).await;
                }
                shutdown(outlet).await;
                code.label()
            }
            Ending::Fail { code, reason } => {
                tracing::debug!(
                    code = code.code(),
                    reason,
                    "closing a WebSocket that broke the protocol"
                );
                send_close(socket, outlet, code, &reason, false, CLOSE_FLUSH).await;
                shutdown(outlet).await;
                drain(socket).await;
                code.label()
            }
            Ending::Replied => {
                let _ = socket.flush().await;
                let _ = tokio::time::timeout(CLOSE_FLUSH, outlet.flush()).await;
                shutdown(outlet).await;
                "client_closed"
            }
            Ending::Gone(metric) => metric,
        }
    }
}

/// Cut at a character boundary to fit a close frame.
fn truncate(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Queues a close frame (behind the queued events, or with `discard`
/// behind only a partly written one); true once it reached the kernel.
async fn send_close(
    socket: &mut Socket,
    outlet: &Outlet,
    code: CloseCode,
    reason: &str,
    discard: bool,
    wait: Duration,
) -> bool {
    outlet.close(discard);
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }));
    // Never waits: the frame goes into the outlet.
    if socket.send(frame).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(wait, outlet.flush()).await, Ok(Ok(())))
}

/// Reads (and ignores) what the client sends until its close frame.
async fn await_reply(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(msg)) = socket.next().await {
            if let Message::Close(_) = msg {
                return;
            }
        }
    })
    .await;
}

/// Half-closes the connection (FIN): the client sees the end of the stream
/// right after the close frame.
async fn shutdown(outlet: &Outlet) {
    let _ = tokio::time::timeout(CLOSE_FLUSH, outlet.shutdown()).await;
}

/// After a protocol error the frames cannot be parsed any more: read raw
/// bytes until the client closes, or for a bounded time.
async fn drain(socket: &mut Socket) {
    let reader = socket.get_mut().reader_mut();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: WsError) -> Option<u16> {
        match Ending::from_error(&e) {
            Ending::Fail { code, .. } => Some(code.code()),
            _ => None,
        }
    }

    #[test]
    fn errors_map_to_rfc_close_codes() {
        use tokio_tungstenite::tungstenite::error::CapacityError;
        assert_eq!(code(ProtocolError::NonZeroReservedBits.into()), Some(1002));
        assert_eq!(code(ProtocolError::InvalidCloseSequence.into()), Some(1002));
        assert_eq!(code(WsError::Utf8("bad".into())), Some(1007));
        let big = CapacityError::MessageTooLong {
            size: 5000,
            max_size: 4096,
        };
        assert_eq!(code(big.into()), Some(1009));
        assert_eq!(
            code(ProtocolError::ResetWithoutClosingHandshake.into()),
            None
        );
        assert_eq!(code(std::io::Error::other("reset").into()), None);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_REASON && cut.chars().all(|c| c == 'é'));
    }
}
