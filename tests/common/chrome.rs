//! Headless Chromium driven over the DevTools protocol (CDP), raw: one
//! WebSocket to a page target, `Runtime.evaluate` to act and to read the
//! DOM. Tests poll the page's state with a generous deadline (`PATIENCE`),
//! never a timed assertion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, http};

/// The Chromium to drive: `CHROMIUM`, else `chromium` / `chromium-browser`
/// / `google-chrome` on the PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// The flags every headless run uses: no sandbox (containers), no
/// background work, and timers not throttled in a page nobody looks at.
pub const HEADLESS_FLAGS: [&str; 10] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

/// One browser process with its own profile; killed on drop.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch(chrome: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chrome)
            .args(HEADLESS_FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it picked into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium never opened its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// A new tab, navigated to `url`.
    pub async fn page(&self, url: &str) -> Page {
        let target: Value = http()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send()
            .await
            .expect("CDP /json/new")
            .json()
            .await
            .expect("CDP target JSON");
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a debugger URL");
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("CDP socket");
        let mut page = Page { ws, next_id: 0 };
        page.navigate(url).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tab under control.
pub struct Page {
    ws: Cdp,
    next_id: u64,
}

impl Page {
    /// Sends a CDP command and returns its result (events are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("CDP send");
        let reply = tokio::time::timeout(PATIENCE, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("CDP JSON");
                        if v["id"] == id {
                            return v;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("CDP socket ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no CDP answer to {method}"));
        if !reply["error"].is_null() {
            panic!("CDP {method}: {}", reply["error"]);
        }
        reply["result"].clone()
    }

    /// Loads `url` and waits for its document to be ready.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        // Until the new document is in (about:blank is complete too).
        let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        let loaded = format!(
            "document.readyState === 'complete' && location.origin === {}",
            serde_json::to_string(&origin).unwrap()
        );
        self.wait_for("the page to load", &loaded).await;
    }

    /// Evaluates `expr` in the page (promises awaited); its JSON value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}\nthrew: {}", e["exception"]["description"]);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; returns its value.
    pub async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited in vain for {what} ({expr})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("PNG data"))
            .expect("base64 PNG")
    }
}

/// One browser at a time: the machine running the suite may be small.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chromium, launched for this test alone (holding the one-browser lock),
/// or `None`: the test is skipped, saying why.
pub async fn browser_or_skip() -> Option<(tokio::sync::MutexGuard<'static, ()>, Browser)> {
    let Some(chrome) = chromium() else {
        // CI installs Chromium (.ci/run): there, a missing browser is a
        // failure, not a silent pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "no Chromium found under CI (set CHROMIUM or install chromium)"
        );
        eprintln!("skipping: no Chromium found (set CHROMIUM or install chromium)");
        return None;
    };
    let one = BROWSER.lock().await;
    Some((one, Browser::launch(&chrome).await))
}
