//! Requests written by hand (the test controls when a body is sent and
//! when a connection goes away), the upload and chat requests built on
//! them, and the table locks that make a query wait as long as a test wants.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::{Api, PATIENCE, TestDb, token};

pub const MIB: usize = 1024 * 1024;

/// An HTTP/1.1 request written by hand, so that a test controls when the
/// body is sent and when the connection goes away.
pub struct Raw {
    pub stream: TcpStream,
    /// Why the request could not be written whole: a server that refuses
    /// an upload early answers and closes without reading the body.
    cut: Option<std::io::Error>,
}

pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Value,
}

impl RawResponse {
    /// Status 0: the connection was closed on a request not yet written
    /// whole, before any response arrived.
    pub const CUT: u16 = 0;

    fn cut(e: &std::io::Error) -> RawResponse {
        RawResponse {
            status: Self::CUT,
            head: format!("request cut: {e}"),
            body: Value::Null,
        }
    }
}

impl Raw {
    /// Sends the head and the first `body.len()` bytes of a `length`-byte body.
    pub async fn start(
        base: &str,
        method: &str,
        path: &str,
        user: Uuid,
        ctype: &str,
        length: usize,
        body: &[u8],
    ) -> Raw {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.expect("connect to the API");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n",
            token(user)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Raw { stream, cut: None };
        raw.send(body).await;
        raw
    }

    /// Writes more of the request; after a failed write, nothing more is
    /// sent and `response` tells what the server said, if anything.
    pub async fn send(&mut self, bytes: &[u8]) {
        if self.cut.is_none()
            && let Err(e) = self.stream.write_all(bytes).await
        {
            self.cut = Some(e);
        }
    }

    /// Reads the whole response (the server answers with a Content-Length).
    pub async fn response(mut self) -> RawResponse {
        let mut buf = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 8192];
                let n = match (self.stream.read(&mut chunk).await, &self.cut) {
                    (Ok(n), _) if n > 0 => n,
                    // Refused before the body was taken, the answer lost to
                    // the reset (RST discards what the socket had queued).
                    (_, Some(cut)) if buf.is_empty() => return RawResponse::cut(cut),
                    (r, _) => panic!(
                        "connection closed before a whole response ({r:?}, request {:?}): {:?}",
                        self.cut,
                        String::from_utf8_lossy(&buf)
                    ),
                };
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
                    if buf.len() >= end + 4 + length {
                        let body = serde_json::from_slice(&buf[end + 4..end + 4 + length])
                            .unwrap_or(Value::Null);
                        let status = head[9..12].parse().unwrap();
                        return RawResponse { status, head, body };
                    }
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("a response in time")
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A multipart body holding one `file` field of `size` bytes of text,
/// split as (everything before the file's last byte, the rest).
pub fn multipart(size: usize) -> (Vec<u8>, Vec<u8>, String) {
    let boundary = "ragctlboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'a', size));
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let split = body.len() - 1;
    let rest = [&body[split..], &tail[..]].concat();
    body.truncate(split);
    (
        body,
        rest,
        format!("multipart/form-data; boundary={boundary}"),
    )
}

/// An upload whose body stops one byte short, holding its reservation.
pub async fn held_upload(base: &str, user: Uuid, size: usize) -> (Raw, Vec<u8>) {
    let (first, rest, ctype) = multipart(size);
    let raw = Raw::start(
        base,
        "POST",
        "/documents",
        user,
        &ctype,
        first.len() + rest.len(),
        &first,
    )
    .await;
    (raw, rest)
}

pub async fn full_upload(base: &str, user: Uuid, size: usize) -> RawResponse {
    let (mut raw, rest) = held_upload(base, user, size).await;
    raw.send(&rest).await;
    raw.response().await
}

pub async fn wait_metric(api: &Api, line: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while api.metric(line).await != want {
        assert!(
            Instant::now() < deadline,
            "{line} never reached {want}:\n{}",
            api.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_refused(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}\n{}", r.head, r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert_eq!(header(&r.head, "retry-after"), Some("2"), "{}", r.head);
}

/// Holds ACCESS EXCLUSIVE on a table until dropped or released: every
/// query of it waits (on `chunks`: every search; on `documents`: every
/// upload's insert), holding its pool connection, as a slow query would.
pub struct TableLock {
    client: tokio_postgres::Client,
}

impl TableLock {
    pub async fn take(db: &TestDb, table: &str) -> TableLock {
        let (client, conn) = ragctl::db::connect(&db.url, "ragctl-test-lock")
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        TableLock { client }
    }

    /// ACCESS EXCLUSIVE on `chunks`: every search waits.
    /// Holds every search: the first statement of one reads the user's
    /// BM25 term statistics (`db::lexical`).
    pub async fn searches(db: &TestDb) -> TableLock {
        TableLock::take(db, "bm25_terms").await
    }

    pub async fn release(self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }
}

/// Backend pids of the API's searches running now.
pub async fn running_searches(db: &TestDb) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
           AND application_name = 'ragctl-api' AND state = 'active' AND query LIKE '%bm25_terms%'",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub async fn wait_searches(db: &TestDb, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pids = running_searches(db).await;
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{} searches running, waited for {n}",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `POST /conversations/{id}/messages`; the answer is read later.
pub async fn ask(api: &Api, user: Uuid, conv: &str, question: &str) -> Raw {
    let body = serde_json::to_vec(&json!({ "content": question })).unwrap();
    let path = format!("/conversations/{conv}/messages");
    Raw::start(
        &api.url,
        "POST",
        &path,
        user,
        "application/json",
        body.len(),
        &body,
    )
    .await
}

/// Waits until `n` of the API's queries wait on a lock.
pub async fn wait_blocked(db: &TestDb, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = db
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'ragctl-api' AND wait_event_type = 'Lock'",
            )
            .await;
        if rows.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} queries wait on a lock, waited for {n}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
