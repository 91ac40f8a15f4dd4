//! A real browser against `/ws`: headless Chromium opens the socket with
//! the token as a subprotocol, the ways Chrome is strict about (it fails a
//! handshake whose selected subprotocol is not one it offered, spelled
//! exactly). Skipped, saying why, when no Chromium is installed
//! (`CHROMIUM` names the binary, else `chromium` / `chromium-browser` /
//! `google-chrome` on the PATH). tests/console.rs drives the console and
//! `realtime.js` the same way.
//!
//! The page comes from a small HTTP server in the test and POSTs its
//! results back to it, so nothing depends on when the page is dumped.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::chrome::{HEADLESS_FLAGS, chromium};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

/// Each case opens a socket, records the selected subprotocol, and closes
/// after its first frame; the results are POSTed back as JSON.
fn page(ws_url: &str, jwt: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const url = "{ws_url}", jwt = "{jwt}";
const results = {{}};
function show() {{ document.getElementById('out').textContent = JSON.stringify(results); }}
function run(name, u, protocols) {{
  return new Promise(done => {{
    const r = results[name] = {{}};
    const ws = new WebSocket(u, protocols);
    ws.onopen = () => {{ r.open = true; r.protocol = ws.protocol; show(); }};
    ws.onmessage = m => {{ r.frame = JSON.parse(m.data).type; show(); ws.close(1000); }};
    ws.onclose = e => {{ r.code = e.code; show(); done(); }};
  }});
}}
Promise.all([
  run('Bearer', url, ['Bearer', jwt]),
  run('query+bearer', url + '?token=' + jwt, ['bearer', jwt]),
]).then(() => fetch('/results', {{method: 'POST', body: JSON.stringify(results)}}));
</script></body></html>"#
    )
}

/// Serves `html` at `/` and hands over the body POSTed to `/results`.
async fn serve_page(listener: TcpListener, html: String) -> Value {
    loop {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break None;
            }
            req.extend_from_slice(&chunk[..n]);
            if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
        };
        let Some(head_end) = head_end else { continue };
        let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
        if head.starts_with("post /results") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while req.len() < head_end + len {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the results were cut short");
                req.extend_from_slice(&chunk[..n]);
            }
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            return serde_json::from_slice(&req[head_end..head_end + len]).unwrap();
        }
        let (status, body) = if head.starts_with("get / ") {
            ("200 OK", html.as_str())
        } else {
            ("404 Not Found", "")
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes()).await;
    }
}

#[tokio::test]
async fn chromium_opens_sockets_with_the_token_as_a_subprotocol() {
    let Some(chrome) = chromium() else {
        eprintln!("skipping: no Chromium found (set CHROMIUM or install chromium)");
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &[], &[]).await;
    let user = Uuid::new_v4();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let results = tokio::spawn(serve_page(listener, page(&api.ws_url(), &token(user))));
    // Events keep coming, so that each socket gets a frame once open.
    let publisher = publisher(&db).await;
    let events = tokio::spawn(async move {
        loop {
            let env = doc_status(user, Uuid::new_v4(), "parsed");
            publisher.publish(env).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(&chrome)
        .args(HEADLESS_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let got = tokio::time::timeout(PATIENCE, results).await;
    let _ = browser.kill();
    let _ = browser.wait();
    events.abort();
    let got = got.expect("no results from the page").unwrap();
    for (case, protocol) in [("Bearer", "Bearer"), ("query+bearer", "bearer")] {
        let r = &got[case];
        assert_eq!(r["open"], true, "{case}: {got}");
        assert_eq!(r["protocol"], protocol, "{case}: {got}");
        assert_eq!(r["frame"], "document.status_updated", "{case}: {got}");
        assert_eq!(r["code"], 1000, "{case}: {got}");
    }
}
