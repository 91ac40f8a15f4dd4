//! Test harness: a fresh database per test, the real `ragctl` binary as
//! separate processes, and a tokio-tungstenite client acting as a user.
//!
//! The database server is `DATABASE_URL` if set, else the local
//! `postgres://postgres@127.0.0.1:5432/postgres`, else an embedded cluster
//! started under `target/`.
#![allow(dead_code)]

pub mod bus;
pub mod chrome;
pub mod holding;
pub mod model;
pub mod nats;
pub mod raw;
pub mod realtime_page;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ragctl::harness::{Ready, ScratchDb};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-for-ragctl";
/// The bearer token every server the harness starts wants for `/metrics`
/// on its API port (`RAG_METRICS_TOKEN`); a test that wants the default
/// removes the variable.
pub const METRICS_TOKEN: &str = "test-metrics-token";
/// How long a test waits for something that should happen; a deadline to
/// fail instead of hanging, not a speed requirement.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ragctl")
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/documents")
        .join(name)
}

fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let local = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_string();
        if std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5432".parse().unwrap(),
            Duration::from_secs(2),
        )
        .is_ok()
        {
            return local;
        }
        // No server: start the embedded cluster once for the whole run.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("embedded-pg");
        block_on(async move { ragctl::db::embedded::Embedded::start(&dir).await })
            .expect("no PostgreSQL reachable and the embedded cluster failed to start")
            .url
    })
}

/// Runs `f` to completion on a runtime of its own thread (for `Drop` and
/// callers outside a runtime).
fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

fn admin_sql(sql: &str) {
    let (owned, url) = (sql.to_string(), admin_url());
    block_on(async move { ragctl::harness::admin_sql(url, &owned).await })
        .unwrap_or_else(|e| panic!("admin SQL {sql:?}: {e:#}"));
}

/// A fresh database, dropped (with its connections) at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
    scratch: ScratchDb,
}

impl TestDb {
    pub fn new() -> TestDb {
        Self::owned_by(None)
    }

    /// A database owned by `role` (created beforehand by the test).
    pub fn owned_by(role: Option<&str>) -> TestDb {
        let role = role.map(str::to_string);
        let scratch =
            block_on(
                async move { ScratchDb::create(admin_url(), "ragctl_t", role.as_deref()).await },
            )
            .unwrap_or_else(|e| panic!("cannot create a test database: {e:#}"));
        TestDb {
            name: scratch.name.clone(),
            url: scratch.url.clone(),
            scratch,
        }
    }

    pub fn url_as(&self, role: &str) -> String {
        let url = self
            .url
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
        assert_ne!(url, self.url, "cannot rewrite the user of {}", self.url);
        url
    }

    /// Runs SQL in this database and returns the rows.
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = ragctl::db::connect(&self.url, "ragctl-test")
            .await
            .expect("test connection");
        let task = tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.expect("test query");
        drop(client);
        let _ = task.await;
        rows
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let scratch = self.scratch.clone();
        if let Err(e) = block_on(async move { scratch.drop_now().await }) {
            panic!("cannot drop {}: {e:#}", self.name);
        }
    }
}

pub fn admin(sql: &str) {
    admin_sql(sql)
}

/// A spawned `ragctl` process; SIGTERM then SIGKILL on drop. Its stderr is
/// kept for failure messages.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_with(name, db_url, args, env, |_| {})
    }

    /// `spawn`, with `configure` applied to the command last.
    pub fn spawn_with(
        name: &str,
        db_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        Self::spawn_exe(
            std::path::Path::new(bin()),
            name,
            db_url,
            args,
            env,
            configure,
        )
    }

    /// `spawn_with`, running the ragctl binary at `exe` (a copy of it).
    pub fn spawn_exe(
        exe: &std::path::Path,
        name: &str,
        db_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("DATABASE_URL", db_url)
            .env("RAG_JWT_SECRET", SECRET)
            .env("RAG_METRICS_TOKEN", METRICS_TOKEN)
            .env("RAG_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn ragctl");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub async fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with {needle:?}; log:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; log:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: its processes' last words are the evidence.
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(80)..];
            let dir = std::env::temp_dir().join("ragctl-test-logs");
            let file = dir.join(format!("{}-{}.log", self.name, self.pid()));
            let _ =
                std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, log.join("\n")));
            eprintln!(
                "--- {} (last {} log lines; all in {}) ---\n{}",
                self.name,
                tail.len(),
                file.display(),
                tail.join("\n")
            );
        }
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running API (`ragctl serve --port 0`), found through its ready file.
pub struct Api {
    pub proc: Proc,
    pub url: String,
    _ready_dir: tempfile::TempDir,
}

impl Api {
    pub async fn start(db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> Api {
        Self::start_url(&db.url, extra, env).await
    }

    pub async fn start_url(db_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Api {
        Self::start_with(db_url, extra, env, |_| {}).await
    }

    /// `start_url`, with `configure` applied to the server's command.
    pub async fn start_with(
        db_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Api {
        Self::launch(db_url, 0, extra, env, configure).await
    }

    /// `start`, on a given port (e.g. to restart an API where it was).
    pub async fn start_port(db: &TestDb, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Api {
        Self::launch(&db.url, port, extra, env, |_| {}).await
    }

    async fn launch(
        db_url: &str,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Api {
        let port = port.to_string();
        let ready_dir = tempfile::tempdir().expect("a folder for the ready file");
        let ready_path = ready_dir.path().join("ready.json");
        let ready_arg = ready_path.to_str().expect("a UTF-8 temporary path");
        let mut args = vec!["serve", "--port", &port, "--no-workers"];
        args.extend_from_slice(&["--ready-file", ready_arg]);
        args.extend_from_slice(extra);
        // A client left unread through a long phase of a test (uploads on a
        // busy machine) answers no ping and would be closed as idle (4002);
        // tests of the idle close set their own timings.
        let timed = extra
            .iter()
            .any(|a| a.starts_with("--ws-idle") || a.starts_with("--ws-ping"))
            || env
                .iter()
                .any(|(k, _)| k.starts_with("RAG_WS_IDLE") || k.starts_with("RAG_WS_PING"));
        let mut env = env.to_vec();
        if !timed {
            env.push(("RAG_WS_IDLE_SECS", "86400"));
        }
        let mut proc = Proc::spawn_with("api", db_url, &args, &env, configure);
        let child = &mut proc.child;
        let ready = Ready::wait(&ready_path, PATIENCE, || {
            matches!(child.try_wait(), Ok(None))
        })
        .await;
        let url = match ready {
            Ok(Some(ready)) => ready.url,
            Ok(None) => panic!("the API exited before it was ready; log:\n{}", proc.logs()),
            Err(e) => panic!("{e}; log:\n{}", proc.logs()),
        };
        let api = Api {
            proc,
            url,
            _ready_dir: ready_dir,
        };
        api.wait_ready().await;
        api
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http().get(format!("{}/readyz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "API never ready; log:\n{}",
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1) + "/ws"
    }
}

pub fn worker(db: &TestDb, kind: &str, env: &[(&str, &str)]) -> Proc {
    Proc::spawn(&format!("worker {kind}"), &db.url, &["worker", kind], env)
}

/// Short retry backoff and poll, so failure paths finish quickly.
pub const FAST_RETRIES: [(&str, &str); 2] = [
    ("RAG_RETRY_BACKOFF_MS", "50"),
    ("RAG_WORKER_POLL_MS", "200"),
];

/// A parse and an ingest worker, each its own process, with fast retries.
pub fn workers(db: &TestDb) -> [Proc; 2] {
    [
        worker(db, "parse", &FAST_RETRIES),
        worker(db, "ingest", &FAST_RETRIES),
    ]
}

/// `ragctl ws-client` as `user` on `api`, printing JSON and giving up
/// after `PATIENCE`; `extra` adds its options (`--expect ...`).
pub fn ws_client(db: &TestDb, api: &Api, user: Uuid, extra: &[&str]) -> Proc {
    let (user, timeout) = (user.to_string(), format!("{}s", PATIENCE.as_secs()));
    let mut args = vec!["ws-client", "--url", &api.url, "--user", &user];
    args.extend_from_slice(&["--format", "json", "--timeout", &timeout]);
    args.extend_from_slice(extra);
    Proc::spawn("ws-client", &db.url, &args, &[])
}

pub fn token(user: Uuid) -> String {
    ragctl::auth::mint(SECRET, user, Duration::from_secs(3600)).unwrap()
}

pub fn http() -> reqwest::Client {
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::new()
}

/// Uploads a fixture (or bytes) as `user`; returns (status, body).
pub async fn upload_bytes(api: &Api, user: Uuid, filename: &str, bytes: Vec<u8>) -> (u16, Value) {
    upload_bytes_at(&api.url, user, filename, bytes).await
}

/// `upload_bytes` to the API at `base` (for a task that outlives no `Api`).
pub async fn upload_bytes_at(
    base: &str,
    user: Uuid,
    filename: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()),
    );
    let r = http()
        .post(format!("{base}/documents"))
        .bearer_auth(token(user))
        .multipart(form)
        .send()
        .await
        .expect("upload request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn upload(api: &Api, user: Uuid, fixture_name: &str) -> Value {
    let bytes = std::fs::read(fixture(fixture_name)).unwrap();
    let (status, body) = upload_bytes(api, user, fixture_name, bytes).await;
    assert_eq!(status, 201, "upload {fixture_name}: {body}");
    body
}

pub async fn get_json(api: &Api, user: Uuid, path: &str) -> (u16, Value) {
    get_json_at(&api.url, user, path).await
}

/// Peak resident memory of a process (`VmHWM` in /proc), KiB.
pub fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Every row of a paginated list (`/documents`, `/conversations`,
/// `/conversations/{id}/messages`): follows `next_cursor` to the end.
pub async fn get_all(api: &Api, user: Uuid, path: &str, key: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page = match &cursor {
            Some(c) => format!("{path}{sep}limit=200&cursor={c}"),
            None => format!("{path}{sep}limit=200"),
        };
        let (status, body) = get_json(api, user, &page).await;
        assert_eq!(status, 200, "GET {page}: {body}");
        rows.extend(body[key].as_array().expect(key).iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return rows,
        }
    }
}

/// `get_json` on the API at `base` (e.g. one run in the test's process).
pub async fn get_json_at(base: &str, user: Uuid, path: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{base}{path}"))
        .bearer_auth(token(user))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /conversations` as `user` (with `{"title"}` when given); the id.
pub async fn new_conversation(api: &Api, user: Uuid, title: Option<&str>) -> String {
    new_conversation_at(&api.url, user, title).await
}

/// `new_conversation` on the API at `base`.
pub async fn new_conversation_at(base: &str, user: Uuid, title: Option<&str>) -> String {
    let mut req = http()
        .post(format!("{base}/conversations"))
        .bearer_auth(token(user));
    if let Some(title) = title {
        req = req.json(&serde_json::json!({ "title": title }));
    }
    let conv: Value = req
        .send()
        .await
        .expect("POST /conversations")
        .json()
        .await
        .expect("a JSON body");
    conv["id"].as_str().expect("an id").to_string()
}

/// Polls REST until the document reaches `status`.
pub async fn wait_status(api: &Api, user: Uuid, doc: &str, status: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = get_json(api, user, &format!("/documents/{doc}")).await;
        assert_eq!(code, 200, "{body}");
        if body["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "document {doc} stuck at {} (wanted {status}): {body}; API log:\n{}",
            body["status"],
            api.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client acting as a user.
pub struct Client {
    pub socket: Socket,
    pub frames: Vec<Value>,
    /// Frames read by [`Client::wait_live`], handed out by `next` first.
    pending: std::collections::VecDeque<Value>,
}

#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(api: &Api, user: Uuid, query: &str) -> Client {
        let url = format!("{}?token={}{query}", api.ws_url(), token(user));
        Self::connect_url(&url).await.expect("ws connect")
    }

    pub async fn connect_url(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client {
            socket,
            frames: vec![],
            pending: Default::default(),
        })
    }

    /// Waits until the server runs this socket, so that a live event
    /// published from now on reaches it: the client gets its 101 before
    /// the server registers the socket with the hub, and the server answers
    /// a ping only after. Frames that arrive meanwhile are kept for `next`.
    pub async fn wait_live(&mut self) {
        let tag = Uuid::new_v4().to_string();
        self.socket
            .send(Message::Ping(tag.clone().into_bytes().into()))
            .await
            .expect("send a ping");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("no pong within PATIENCE");
            match msg {
                Some(Ok(Message::Pong(p))) if p.as_ref() == tag.as_bytes() => return,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("frames are JSON");
                    self.pending.push_back(v);
                }
                Some(Ok(Message::Ping(p))) => {
                    let _ = self.socket.send(Message::Pong(p)).await;
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended before it went live: {other:?}"),
            }
        }
    }

    /// The next data frame (answering pings), or the close.
    pub async fn next(&mut self, within: Duration) -> Option<Next> {
        if let Some(v) = self.pending.pop_front() {
            self.frames.push(v.clone());
            return Some(Next::Frame(v));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("frames are JSON");
                    self.frames.push(v.clone());
                    return Some(Next::Frame(v));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Next::Closed(frame.map(|f| f.code.into())));
                }
                Some(Ok(Message::Ping(p))) => {
                    let _ = self.socket.send(Message::Pong(p)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Next::Closed(None)),
            }
        }
    }

    /// Reads frames until one satisfies `pred`; panics with what was seen.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Next::Frame(v)) if pred(&v) => return v,
                Some(Next::Frame(_)) => {}
                Some(Next::Closed(code)) => panic!(
                    "socket closed ({code:?}) while waiting for {what}; seen: {:#?}",
                    self.frames
                ),
                None => panic!("no {what} within {PATIENCE:?}; seen: {:#?}", self.frames),
            }
        }
    }

    /// Reads until the socket closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next(PATIENCE).await {
                Some(Next::Closed(code)) => return code,
                Some(Next::Frame(_)) => {}
                None => panic!("socket not closed within {PATIENCE:?}"),
            }
        }
    }
}

/// `frame.type == t` and every `(key, value)` matches the payload.
pub fn is(frame: &Value, t: &str, fields: &[(&str, Value)]) -> bool {
    frame["type"] == t && fields.iter().all(|(k, v)| &frame["payload"][*k] == v)
}

pub fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// A publisher on the test database, as a worker would have.
pub async fn publisher(db: &TestDb) -> ragctl::events::Publisher {
    let pool = ragctl::db::pool(&db.url, 2, "ragctl-test-publisher")
        .await
        .unwrap();
    ragctl::events::Publisher::new(pool, "rag_events", "test", Duration::from_secs(5))
}

/// Publishes one envelope on the test database.
pub async fn publish(db: &TestDb, env: ragctl::events::Envelope) {
    publisher(db).await.publish(env).await.unwrap();
}

/// A `document.status_updated` envelope for `user`.
/// Publishes raw payloads on the event channel, as they are (no envelope
/// checks): for malformed-input tests.
pub async fn notify_raw<'a>(db: &TestDb, payloads: impl IntoIterator<Item = &'a String>) {
    let pool = ragctl::db::pool(&db.url, 1, "ragctl-test-raw")
        .await
        .unwrap();
    let c = pool.get().await.unwrap();
    for payload in payloads {
        c.execute("SELECT pg_notify('rag_events', $1)", &[payload])
            .await
            .unwrap();
    }
}

/// One malformed payload per drop reason, built from `good`.
pub fn malformed(good: &serde_json::Value) -> Vec<(&'static str, String)> {
    let with = |k: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[k] = v;
        g.to_string()
    };
    vec![
        ("not_json", "{this is not json".to_string()),
        ("unknown_version", with("v", serde_json::json!(7))),
        ("bad_user_id", with("user_id", serde_json::json!("robert'); DROP TABLE users;--"))),
        ("unknown_type", with("type", serde_json::json!("document.exploded"))),
        ("bad_payload", with("payload", serde_json::json!({"document_id": "x"}))),
        ("bad_envelope", with("ts", serde_json::json!(12))),
        (
            "bad_fragment",
            serde_json::json!({"v": 1, "frag": {"id": Uuid::new_v4(), "seq": 5, "total": 2}, "data": "!!"})
                .to_string(),
        ),
    ]
}

pub fn doc_status(user: Uuid, doc: Uuid, status: &str) -> ragctl::events::Envelope {
    ragctl::events::Envelope::new(
        user,
        ragctl::events::EventType::DocumentStatusUpdated,
        serde_json::json!({"document_id": doc, "status": status, "error_message": null, "updated_at": chrono::Utc::now()}),
        "test",
    )
}

impl Api {
    /// `GET /readyz`: its status and JSON body.
    pub async fn readyz(&self) -> (u16, Value) {
        let r = http()
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .expect("GET /readyz");
        let status = r.status().as_u16();
        (status, r.json().await.expect("readyz answers JSON"))
    }

    /// The server's /metrics text.
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the first metric line starting with `line_prefix`, 0 if none.
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Runs `ragctl args` (with `env`) and expects a usage error: exit 2
/// before anything connects, with a message containing each of `names`.
pub fn assert_usage_error(args: &[&str], env: &[(&str, &str)], names: &[&str]) {
    let out = std::process::Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ragctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for name in names {
        assert!(err.contains(name), "{args:?}: no {name:?} in {err}");
    }
}
