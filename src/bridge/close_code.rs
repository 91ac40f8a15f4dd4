//! The WebSocket close codes this server sends: one list, with each code's
//! wire value, its reason text and its `ragctl_ws_closed_total` label.
//!
//! A leaf of `bridge` (the hub closes slow consumers; `api::ws` closes for
//! everything else and imports it from here, never the other way round).

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCode;

/// Why the server closes a socket. The wire values are part of the client
/// contract (docs/events.md): they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002 (RFC 6455): the client broke the protocol.
    ProtocolError,
    /// 1007 (RFC 6455): a text message that is not UTF-8.
    InvalidData,
    /// 1009 (RFC 6455): a message or frame over the size bound.
    TooBig,
    /// 1011 (RFC 6455): any other error reading the client.
    Internal,
    /// 4001: the token expired.
    TokenExpired,
    /// 4002: nothing from the client within the idle timeout.
    Idle,
    /// 4003: an `auth.refresh` token that does not verify.
    RefreshInvalid,
    /// 4004: an `auth.refresh` token of another user.
    RefreshOtherUser,
    /// 4008: the socket's queue overflowed; the client should resync
    /// through REST before reconnecting.
    SlowConsumer,
}

impl CloseCode {
    pub const ALL: [CloseCode; 10] = [
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidData,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::TokenExpired,
        CloseCode::Idle,
        CloseCode::RefreshInvalid,
        CloseCode::RefreshOtherUser,
        CloseCode::SlowConsumer,
    ];

    /// The value on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidData => 1007,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TokenExpired => 4001,
            CloseCode::Idle => 4002,
            CloseCode::RefreshInvalid => 4003,
            CloseCode::RefreshOtherUser => 4004,
            CloseCode::SlowConsumer => 4008,
        }
    }

    /// The reason sent with the code when the server decides the close
    /// (a protocol error sends the error's own text instead).
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidData => "invalid UTF-8",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Idle => "nothing from the client within the idle timeout",
            CloseCode::RefreshInvalid => "refresh token invalid",
            CloseCode::RefreshOtherUser => "refresh token is another user's",
            CloseCode::SlowConsumer => "slow consumer: resync via REST",
        }
    }

    /// The `reason` label of `ragctl_ws_closed_total` for this close.
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "shutdown",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::InvalidData => "invalid_utf8",
            CloseCode::TooBig => "too_big",
            CloseCode::Internal => "internal_error",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Idle => "idle",
            CloseCode::RefreshInvalid => "refresh_invalid",
            CloseCode::RefreshOtherUser => "refresh_other_user",
            CloseCode::SlowConsumer => "slow_consumer",
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.code()
    }
}

impl TryFrom<u16> for CloseCode {
    /// A value this server never sends.
    type Error = u16;

    fn try_from(v: u16) -> Result<CloseCode, u16> {
        CloseCode::ALL.into_iter().find(|c| c.code() == v).ok_or(v)
    }
}

impl From<CloseCode> for WireCode {
    fn from(c: CloseCode) -> WireCode {
        WireCode::from(c.code())
    }
}

/// The first byte of an unfragmented close frame (FIN, opcode 8).
const CLOSE_FRAME: u8 = 0x88;

/// Whether `frame` (whole frames, as tungstenite writes them) starts with
/// a close frame.
pub fn is_close_frame(frame: &[u8]) -> bool {
    frame.first() == Some(&CLOSE_FRAME)
}

/// A server's close frame with `code` and no reason.
#[cfg(test)]
pub(super) fn close_frame(code: CloseCode) -> [u8; 4] {
    let [hi, lo] = code.code().to_be_bytes();
    [CLOSE_FRAME, 2, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()), "{c:?} repeats a value");
            assert_eq!(CloseCode::try_from(u16::from(c)), Ok(c));
            assert_eq!(u16::from(WireCode::from(c)), c.code());
            assert!(
                c.reason().len() <= 123,
                "{c:?}: a reason fits a close frame"
            );
        }
        assert_eq!(CloseCode::try_from(1000), Err(1000));
        assert_eq!(CloseCode::SlowConsumer.code(), 4008);
    }

    #[test]
    fn a_close_frame_is_recognised() {
        let frame = close_frame(CloseCode::SlowConsumer);
        assert_eq!(frame, *b"\x88\x02\x0f\xa8");
        assert!(is_close_frame(&frame));
        assert!(!is_close_frame(b"\x8a\x00"));
        assert!(!is_close_frame(b""));
    }
}
