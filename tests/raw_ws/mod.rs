//! A WebSocket client written by hand over a `TcpStream`: it sends exactly
//! the bytes a test asks for (masked or not, reserved bits, any opcode,
//! broken fragment sequences) and reads the server's frames one by one.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::PATIENCE;

pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;
pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame with `first` as its first byte (FIN, RSV bits, opcode).
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if !masked {
        out.extend_from_slice(payload);
        return out;
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A masked client frame, as a client must send.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, payload, true)
}

/// A close frame's payload: the code, then the reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// An HTTP response, head and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased names, values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// How the stream ended, if by an error (a reset).
    pub error: Option<std::io::Error>,
    /// Frames read by [`Raw::wait_live`], handed out by `next_frame` first.
    pending: std::collections::VecDeque<(u8, Vec<u8>)>,
}

/// Sends `GET path` with the WebSocket headers plus `extra` (lines without
/// CRLF; a `Sec-WebSocket-Version` or `-Key` in `extra` replaces ours).
pub async fn request(base_url: &str, path: &str, extra: &[String]) -> (HttpResponse, Raw) {
    let addr = base_url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).await.expect("connect");
    request_on(stream, addr, path, extra).await
}

pub async fn request_on(
    stream: TcpStream,
    host: &str,
    path: &str,
    extra: &[String],
) -> (HttpResponse, Raw) {
    let has = |name: &str| {
        extra
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with(name))
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    );
    if !has("sec-websocket-version:") {
        req.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    if !has("sec-websocket-key:") {
        req.push_str("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    }
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
        error: None,
        pending: Default::default(),
    };
    raw.stream.write_all(req.as_bytes()).await.unwrap();
    let resp = raw.read_response().await;
    (resp, raw)
}

impl Raw {
    /// Upgrades `/ws?token=` for `token`; panics unless the answer is 101.
    pub async fn connect(base_url: &str, token: &str) -> Raw {
        let (resp, raw) = request(base_url, &format!("/ws?token={token}"), &[]).await;
        assert_eq!(resp.status, 101, "upgrade refused: {resp:?}");
        raw
    }

    /// Reads more; false at the end of the stream (FIN or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("the server sent nothing within the test's patience");
        match read {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n > 0
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    async fn read_response(&mut self) -> HttpResponse {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await, "connection closed before a response");
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap())
            .unwrap_or(0);
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        let body = self.buf.drain(..len).collect();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The server may already have failed the connection.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Waits until the server runs this socket, so that a live event
    /// published from now on reaches it: the 101 comes before the server
    /// registers the socket with the hub, and a ping is answered only
    /// after. Frames that arrive meanwhile are kept for `next_frame`.
    pub async fn wait_live(&mut self) {
        let tag = uuid::Uuid::new_v4();
        self.send(&masked(FIN | PING, tag.as_bytes())).await;
        loop {
            match self.read_frame().await {
                Some((PONG, p)) if p == tag.as_bytes() => return,
                Some(frame) => self.pending.push_back(frame),
                None => panic!("the socket ended before it went live"),
            }
        }
    }

    /// The next frame (opcode, payload), or `None` at the end of the stream.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => self.read_frame().await,
        }
    }

    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((len, frame)) = parse(&self.buf) {
                self.buf.drain(..len);
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "the stream ended inside a frame");
                return None;
            }
        }
    }

    /// Reads frames until the server's close frame; its code (`None` for
    /// an empty close), or `Err` with what came instead.
    pub async fn close_code(&mut self) -> Result<Option<u16>, String> {
        let mut seen = Vec::new();
        loop {
            match self.next_frame().await {
                Some((CLOSE, p)) if p.len() >= 2 => {
                    return Ok(Some(u16::from_be_bytes([p[0], p[1]])));
                }
                Some((CLOSE, _)) => return Ok(None),
                Some((op, p)) => seen.push(format!("opcode {op} ({} bytes)", p.len())),
                None => {
                    let end = self
                        .error
                        .as_ref()
                        .map_or("EOF".to_string(), |e| e.to_string());
                    return Err(format!("{end} without a close frame after {seen:?}"));
                }
            }
        }
    }

    /// Reads until the end of the stream: `Ok` for FIN, `Err` for a reset.
    pub async fn eof(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server did not close the connection")?;
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// One complete server frame at the start of `buf`: (bytes used, (opcode, payload)).
fn parse(buf: &[u8]) -> Option<(usize, (u8, Vec<u8>))> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    Some((at + len, (buf[0] & 0x0f, buf[at..at + len].to_vec())))
}
