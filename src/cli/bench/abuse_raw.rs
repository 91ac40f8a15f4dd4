//! Raw HTTP/1.1 for the attacks a client library would not make: a
//! request whose body never comes or comes a byte at a time, a response
//! that is never read.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::fleet::Endpoint;
use super::limits::source_addr;
use super::mass::no_port_at_bind;

/// How a held request ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The attack was over (or stopped) first.
    Cancelled,
    /// The server answered with this status.
    Answered(u16),
    /// The server closed the connection without an answer.
    Closed,
}

impl End {
    /// How the attack counts it.
    pub(super) fn label(&self) -> String {
        match self {
            End::Cancelled => "held to the end".into(),
            End::Answered(s) => format!("answered {s}"),
            End::Closed => "closed by the server".into(),
        }
    }
}

/// A request's head: `length` declares a body that may never come.
pub(super) fn head(
    method: &str,
    path: &str,
    host: &str,
    token: &str,
    content_type: Option<&str>,
    length: Option<usize>,
) -> String {
    let mut h =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n");
    if let Some(ct) = content_type {
        h.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(n) = length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Connects from source address number `i / PER_SOURCE` (so that tens of
/// thousands of connections do not run out of ports) and sends `head`.
pub(super) async fn send_head(ep: &Endpoint, i: usize, head: &str) -> anyhow::Result<TcpStream> {
    let SocketAddr::V4(_) = ep.addr else {
        bail!("--abuse needs an IPv4 loopback server");
    };
    let socket = TcpSocket::new_v4()?;
    no_port_at_bind(&socket);
    socket.bind(SocketAddr::new(IpAddr::V4(source_addr(i)), 0))?;
    let mut tcp = socket.connect(ep.addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(head.as_bytes()).await?;
    Ok(tcp)
}

/// The status of an answer's first bytes (`HTTP/1.1 503 …`).
pub(super) fn status_of(first: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(first.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Reads the answer's first bytes, if any come.
async fn answer(tcp: &mut (impl AsyncReadExt + Unpin)) -> End {
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf).await {
        Ok(0) | Err(_) => End::Closed,
        Ok(n) => status_of(&buf[..n]).map_or(End::Closed, End::Answered),
    }
}

/// Holds the connection, sending nothing more, until the server answers
/// or closes it or the attack is over.
pub(super) async fn await_answer(mut tcp: TcpStream, cancel: &CancellationToken) -> End {
    tokio::select! {
        end = answer(&mut tcp) => end,
        _ = cancel.cancelled() => End::Cancelled,
    }
}

/// Sends one byte of the body every `every` until the server answers or
/// closes the connection, or the attack is over.
pub(super) async fn drip(tcp: TcpStream, every: Duration, cancel: &CancellationToken) -> End {
    let (mut rd, mut wr) = tcp.into_split();
    let reading = answer(&mut rd);
    tokio::pin!(reading);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            end = &mut reading => return end,
            _ = cancel.cancelled() => return End::Cancelled,
            _ = tick.tick() => {
                if wr.write_all(b" ").await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_comes_from_the_status_line() {
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(status_of(b"HTTP/1.1 2"), None);
        assert_eq!(status_of(b"garbage that is long"), None);
    }

    #[test]
    fn a_head_declares_what_it_is_told() {
        let h = head("POST", "/documents", "h:1", "t", Some("a/b"), Some(7));
        assert!(h.starts_with("POST /documents HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(
            h.contains("Authorization: Bearer t\r\nContent-Type: a/b\r\nContent-Length: 7\r\n\r\n")
        );
        assert!(h.ends_with("\r\n\r\n"));
    }
}
