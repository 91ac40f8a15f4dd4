//! `ragctl ws-client`: a `/ws` client for people and scripts. It prints each
//! frame, checks expectations (`--expect 'TYPE key=value ...'`), and turns
//! the outcome into an exit code: 0 all expectations met (or --count frames
//! seen), 1 an expectation or the frame count was not met before the
//! timeout or the end of the connection, 2 usage, connection or auth error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Failure;
use super::emit::loose_json;
use crate::config::{ConnectOpts, parse_duration};
use crate::db::listener::Backoff;
use crate::events::EventType;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server-side frame type for gap notices (`?resync=1`).
const RESYNC_TYPE: &str = "realtime.resync";

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit codes: 0 all expectations met (or --count frames received, or the \
connection ended with nothing pending); 1 an expectation or --count was not \
met before --timeout or the end of the connection; 2 usage, connection or \
authentication error.

Examples:
  ragctl ws-client --user $U
  ragctl ws-client --user $U --expect 'job.status_updated kind=parse status=success' \\
      --expect 'document.status_updated status=ingested' --timeout 60s
  ragctl ws-client --user $U --resync --reconnect --format raw")]
pub struct WsClientArgs {
    /// Mint a token for this user with the configured JWT secret.
    #[arg(long, required_unless_present_any = ["token", "headers"])]
    pub user: Option<Uuid>,
    /// Use this JWT instead of minting one (sent as Authorization: Bearer).
    #[arg(long, hide_env_values = true)]
    pub token: Option<String>,
    /// Extra request header, 'Name: value'. An Authorization or a
    /// `Sec-WebSocket-Protocol: bearer, <jwt>` header replaces the minted token.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Ask for `realtime.resync` frames when the server may have missed events.
    #[arg(long)]
    pub resync: bool,
    /// `pretty` (default on a terminal), `json` (JSON Lines, default
    /// otherwise) or `raw` (each frame's text exactly as received).
    #[arg(long, value_enum)]
    pub format: Option<WsFormat>,
    /// 'TYPE key=value ...': wait for a frame of TYPE whose payload has these
    /// values (JSON-typed: retry_count=3 is a number, status=parsed a string;
    /// quote to keep spaces: error_message="no text"). Repeatable; each
    /// expectation needs its own frame.
    #[arg(long = "expect", value_name = "TYPE KEY=VALUE...")]
    pub expect: Vec<String>,
    /// Give up after this long [default: 30s with --expect, else never].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Stop after N frames (or once every expectation is met, if sooner).
    /// Without --expect, fewer than N frames before the end is exit 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Send a ping this often (the client always answers the server's pings).
    #[arg(long, value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Reconnect with exponential backoff when the connection closes or fails.
    #[arg(long)]
    pub reconnect: bool,
    /// Lifetime of the minted token.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFormat {
    Pretty,
    Json,
    Raw,
}

#[derive(Debug, thiserror::Error)]
pub enum WsClientError {
    #[error(
        "{0}: this build speaks plain ws:// only; use an http:// or ws:// URL (--url / RAG_API_URL), or put a TLS-terminating proxy in front"
    )]
    Tls(String),
    #[error("invalid API URL {url:?} (--url / RAG_API_URL): {problem}")]
    BadUrl { url: String, problem: String },
    #[error("-H {0:?} is not 'Name: value'")]
    BadHeader(String),
    #[error("--expect {text:?}: {problem}")]
    BadExpect { text: String, problem: String },
    #[error("WebSocket handshake refused: {status} {detail}")]
    Refused { status: u16, detail: String },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
}

impl WsClientError {
    /// Worth another attempt with --reconnect: the server may come back;
    /// a refused token or a bad request will not get better.
    fn retryable(&self) -> bool {
        match self {
            WsClientError::Connect { .. } => true,
            WsClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// One `--expect`: a frame type and payload values to find.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub text: String,
    pub kind: String,
    pub fields: Vec<(String, Value)>,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, WsClientError> {
        let bad = |problem: String| WsClientError::BadExpect {
            text: text.to_string(),
            problem,
        };
        let mut words = split_words(text).map_err(&bad)?.into_iter();
        let (kind, _) = words
            .next()
            .ok_or_else(|| bad("empty; write 'TYPE key=value ...'".into()))?;
        if EventType::parse(&kind).is_none() && kind != RESYNC_TYPE {
            let mut valid: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            valid.push(RESYNC_TYPE);
            return Err(bad(format!(
                "unknown type {kind:?}; valid types: {}",
                valid.join(", ")
            )));
        }
        let fields = words
            .map(|(word, quoted)| {
                let (key, value) = word
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| bad(format!("{word:?} is not key=value")))?;
                let value = if quoted {
                    Value::String(value.to_string())
                } else {
                    loose_json(value)
                };
                Ok((key.to_string(), value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expectation {
            text: text.trim().to_string(),
            kind,
            fields,
        })
    }

    /// Payload value at `key`; `a.b` reaches into nested objects.
    fn lookup<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
        key.split('.').try_fold(payload, |v, k| v.get(k))
    }

    pub fn matches(&self, kind: &str, payload: &Value) -> bool {
        kind == self.kind
            && self
                .fields
                .iter()
                .all(|(k, want)| Self::lookup(payload, k) == Some(want))
    }
}

/// Splits on whitespace; single or double quotes keep spaces together (and
/// make the value a string). Returns each word and whether it was quoted.
fn split_words(text: &str) -> Result<Vec<(String, bool)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let close = c;
                quoted = true;
                in_word = true;
                loop {
                    match chars.next() {
                        Some(ch) if ch == close => break,
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unclosed {close} quote")),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push((std::mem::take(&mut word), quoted));
                    quoted = false;
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push((word, quoted));
    }
    Ok(words)
}

/// Assigns frames to expectations so that each expectation has its own
/// frame, finding the largest such assignment (Kuhn's augmenting paths): a
/// frame matching two expectations never starves a later one.
#[derive(Debug, Default)]
pub struct Matcher {
    pub expectations: Vec<Expectation>,
    /// For each frame that matched something: the expectations it matches.
    frames: Vec<Vec<usize>>,
    /// For each expectation: the frame it is assigned, if any.
    owner: Vec<Option<usize>>,
    met: usize,
}

impl Matcher {
    pub fn new(expectations: Vec<Expectation>) -> Matcher {
        let n = expectations.len();
        Matcher {
            expectations,
            frames: Vec::new(),
            owner: vec![None; n],
            met: 0,
        }
    }

    pub fn met(&self) -> usize {
        self.met
    }

    pub fn all_met(&self) -> bool {
        self.met == self.expectations.len()
    }

    /// Offers a frame; returns the expectation newly met thanks to it.
    pub fn offer(&mut self, kind: &str, payload: &Value) -> Option<usize> {
        let adj: Vec<usize> = (0..self.expectations.len())
            .filter(|&e| self.expectations[e].matches(kind, payload))
            .collect();
        if adj.is_empty() || self.all_met() {
            return None;
        }
        self.frames.push(adj);
        let frame = self.frames.len() - 1;
        let mut visited = vec![false; self.expectations.len()];
        let newly = self.augment(frame, &mut visited)?;
        self.met += 1;
        Some(newly)
    }

    /// Tries to give `frame` an expectation, moving earlier frames to
    /// others if needed; returns the expectation that was free before.
    fn augment(&mut self, frame: usize, visited: &mut [bool]) -> Option<usize> {
        for i in 0..self.frames[frame].len() {
            let e = self.frames[frame][i];
            if visited[e] {
                continue;
            }
            visited[e] = true;
            let freed = match self.owner[e] {
                None => Some(e),
                Some(other) => self.augment(other, visited),
            };
            if freed.is_some() {
                self.owner[e] = Some(frame);
                return freed;
            }
        }
        None
    }

    pub fn missing(&self) -> impl Iterator<Item = &Expectation> {
        self.owner
            .iter()
            .zip(&self.expectations)
            .filter(|(o, _)| o.is_none())
            .map(|(_, e)| e)
    }
}

/// Turns the API base URL into the `/ws` URL.
fn ws_url(api_url: &str, resync: bool) -> Result<String, WsClientError> {
    let (scheme, rest) = api_url
        .split_once("://")
        .ok_or_else(|| WsClientError::BadUrl {
            url: api_url.to_string(),
            problem: "expected http://host:port".into(),
        })?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => return Err(WsClientError::Tls(api_url.to_string())),
        other => {
            return Err(WsClientError::BadUrl {
                url: api_url.to_string(),
                problem: format!("unsupported scheme {other:?}"),
            });
        }
    };
    let base = rest.trim_end_matches('/');
    let query = if resync { "?resync=1" } else { "" };
    Ok(format!("{scheme}://{base}/ws{query}"))
}

fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), WsClientError> {
    let bad = || WsClientError::BadHeader(raw.to_string());
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Whether the user's headers already carry a credential.
fn carries_token(headers: &[(HeaderName, HeaderValue)]) -> bool {
    headers.iter().any(|(name, value)| {
        *name == header::AUTHORIZATION
            || (*name == header::SEC_WEBSOCKET_PROTOCOL
                && value.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("bearer"))
                }))
    })
}

/// How each attempt builds its request; the token is minted afresh every
/// time so that a reconnect after expiry (4001) gets a valid one.
struct Dialer {
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    token: Option<String>,
    mint: Option<(String, Uuid, Duration)>,
}

impl Dialer {
    fn request(&self) -> anyhow::Result<Request> {
        let mut req = self.url.as_str().into_client_request()?;
        let token = match (&self.token, &self.mint) {
            (Some(t), _) => Some(t.clone()),
            (None, Some((secret, user, ttl))) => Some(crate::auth::mint(secret, *user, *ttl)?),
            (None, None) => None,
        };
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                anyhow::anyhow!("the token contains characters not allowed in a header")
            })?;
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        for (name, value) in &self.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        Ok(req)
    }

    async fn dial(&self) -> anyhow::Result<Result<Socket, WsClientError>> {
        let req = self.request()?;
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await;
        let err = match attempt {
            Ok(Ok((socket, _))) => return Ok(Ok(socket)),
            Ok(Err(e)) => e,
            Err(_) => {
                return Ok(Err(WsClientError::Connect {
                    url: self.url.clone(),
                    detail: "timed out after 10s".into(),
                }));
            }
        };
        Ok(Err(match err {
            tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let body = resp.body().as_deref().unwrap_or_default();
                WsClientError::Refused {
                    status: status.as_u16(),
                    detail: error_detail(status.canonical_reason().unwrap_or(""), body),
                }
            }
            other => WsClientError::Connect {
                url: self.url.clone(),
                detail: io_detail(&other),
            },
        }))
    }
}

/// `code: message` from the API's error body, else the body text.
pub(crate) fn error_detail(reason: &str, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let (Some(code), Some(message)) = (
            v.pointer("/error/code").and_then(Value::as_str),
            v.pointer("/error/message").and_then(Value::as_str),
        )
    {
        return format!("{code}: {message}");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        reason.to_string()
    } else {
        text.chars().take(300).collect()
    }
}

fn io_detail(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// How one connection ended.
enum End {
    /// Expectations met or --count reached.
    Done,
    Closed {
        code: Option<u16>,
        reason: String,
    },
    Lost(String),
    /// The server could not be reached (only with --reconnect).
    Unreachable(String),
    Deadline,
    Interrupted,
}

/// Terminal styling, off unless stdout is a terminal and NO_COLOR is unset.
#[derive(Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn status(self, status: &str) -> String {
        let code = match status {
            "parsed" | "ingested" | "success" | "completed" => "32",
            "error" | "failed" => "31",
            "parsing" | "ingesting" | "running" | "pending" => "33",
            _ => "36",
        };
        self.paint(code, status)
    }
}

fn short_id(v: &Value) -> String {
    v.as_str()
        .map_or_else(|| "?".into(), |s| s.chars().take(8).collect())
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn snippet(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.replace('\n', " ")
}

/// One human line for a frame: time, type, then the fields that matter.
fn pretty_line(kind: &str, payload: &Value, style: Style) -> String {
    let time = chrono::Local::now().format("%H:%M:%S%.3f").to_string();
    let get = |k: &str| payload.get(k).unwrap_or(&Value::Null);
    let status = style.status(&text_of(get("status")));
    let error = match get("error_message") {
        Value::String(e) => format!(
            " {}",
            style.paint("31", &format!("error: {}", snippet(e, 120)))
        ),
        _ => String::new(),
    };
    let details = match kind {
        "document.created" => format!(
            "{status} {} ({}, {} B) doc={}",
            text_of(get("filename")),
            text_of(get("mime_type")),
            text_of(get("size_bytes")),
            short_id(get("document_id"))
        ),
        "document.status_updated" => {
            format!("{status} doc={}{error}", short_id(get("document_id")))
        }
        "job.status_updated" => format!(
            "{} {status} retry={} job={} doc={}{error}",
            text_of(get("kind")),
            text_of(get("retry_count")),
            short_id(get("job_id")),
            short_id(get("document_id"))
        ),
        "message.created" | "message.status_updated" => {
            let role = match get("role") {
                Value::String(r) => format!("{r} "),
                _ => String::new(),
            };
            format!(
                "{role}{status} conv={} msg={} {:?}",
                short_id(get("conversation_id")),
                short_id(get("message_id")),
                snippet(&text_of(get("content")), 60)
            )
        }
        RESYNC_TYPE => style.paint("35", &format!("reason={}", text_of(get("reason")))),
        _ => payload.to_string(),
    };
    format!(
        "{} {} {details}",
        style.paint("2", &time),
        style.paint("1", &format!("{kind:<24}"))
    )
}

/// Everything that outlives one connection.
struct Session {
    format: WsFormat,
    style: Style,
    matcher: Matcher,
    count: Option<u64>,
    frames: u64,
    per_type: BTreeMap<String, u64>,
    /// The last payload of each type, to explain a missing expectation.
    last: BTreeMap<String, Value>,
}

impl Session {
    fn finished(&self) -> bool {
        self.count.is_some_and(|n| self.frames >= n)
            || (!self.matcher.expectations.is_empty() && self.matcher.all_met())
    }

    /// With expectations, success is meeting them (--count only caps the
    /// run); without, it is receiving --count frames.
    fn pending(&self) -> bool {
        if self.matcher.expectations.is_empty() {
            self.count.is_some_and(|n| self.frames < n)
        } else {
            !self.matcher.all_met()
        }
    }

    fn on_frame(&mut self, text: &str) -> std::io::Result<()> {
        self.frames += 1;
        let parsed: Option<Value> = serde_json::from_str(text).ok();
        let typed = parsed.as_ref().and_then(|v| {
            let kind = v.get("type")?.as_str()?;
            Some((
                kind.to_string(),
                v.get("payload").cloned().unwrap_or(Value::Null),
            ))
        });
        let label = typed
            .as_ref()
            .map_or("(unrecognised frame)", |(k, _)| k.as_str());
        *self.per_type.entry(label.to_string()).or_default() += 1;

        let mut out = std::io::stdout().lock();
        match (self.format, &parsed, &typed) {
            (WsFormat::Raw, _, _) => writeln!(out, "{text}")?,
            // The server's frames are compact JSON already: pass them through
            // as sent (key order kept); anything multi-line is re-serialised.
            (WsFormat::Json, Some(_), _) if !text.contains('\n') => {
                writeln!(out, "{}", text.trim())?
            }
            (WsFormat::Json, Some(v), _) => writeln!(out, "{v}")?,
            (WsFormat::Pretty, _, Some((kind, payload))) => {
                writeln!(out, "{}", pretty_line(kind, payload, self.style))?
            }
            _ => eprintln!(
                "unrecognised frame (not {{type, payload}} JSON): {}",
                snippet(text, 200)
            ),
        }
        drop(out);

        if let Some((kind, payload)) = typed {
            if let Some(e) = self.matcher.offer(&kind, &payload) {
                eprintln!(
                    "expectation met ({}/{}): {}",
                    self.matcher.met(),
                    self.matcher.expectations.len(),
                    self.matcher.expectations[e].text
                );
            }
            self.last.insert(kind, payload);
        }
        Ok(())
    }

    /// What was seen and what is missing, for stderr.
    fn report(&self, why: &str) -> String {
        let mut lines = vec![if self.matcher.expectations.is_empty() {
            format!("ws-client: {why}")
        } else {
            format!(
                "ws-client: {why}: {} of {} expectations met",
                self.matcher.met(),
                self.matcher.expectations.len()
            )
        }];
        let seen: Vec<String> = self
            .per_type
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        lines.push(format!(
            "  seen {} frames{}{}",
            self.frames,
            if seen.is_empty() { "" } else { ": " },
            seen.join(", ")
        ));
        if let Some(n) = self
            .count
            .filter(|n| self.frames < *n && self.matcher.expectations.is_empty())
        {
            lines.push(format!(
                "  wanted {n} frames (--count), got {}",
                self.frames
            ));
        }
        for e in self.matcher.missing() {
            lines.push(format!("  missing: {}", e.text));
            if let Some(last) = self.last.get(&e.kind) {
                let had: Vec<String> = e
                    .fields
                    .iter()
                    .map(|(k, _)| {
                        let v = Expectation::lookup(last, k)
                            .map_or("(absent)".into(), Value::to_string);
                        format!("{k}={v}")
                    })
                    .collect();
                lines.push(format!("    last {} had {}", e.kind, had.join(" ")));
            }
        }
        lines.join("\n")
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn close_politely(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client done".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
}

/// Reads one connection until it ends or the run is over.
async fn read_socket(
    socket: &mut Socket,
    session: &mut Session,
    ping_interval: Option<Duration>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> anyhow::Result<End> {
    let mut ping = ping_interval.map(|d| {
        let mut i = tokio::time::interval_at((Instant::now() + d).into(), d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                close_politely(socket).await;
                return Ok(End::Interrupted);
            }
            _ = sleep_until(deadline) => {
                close_politely(socket).await;
                return Ok(End::Deadline);
            }
            _ = tick(&mut ping) => {
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return Ok(End::Lost(io_detail(&e)));
                }
            }
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(t))) => session.on_frame(t.as_str())?,
                Some(Ok(Message::Binary(b))) => session.on_frame(&String::from_utf8_lossy(&b))?,
                Some(Ok(Message::Close(frame))) => {
                    return Ok(End::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                // Pings are answered by the library; pongs need nothing.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Ok(End::Lost(io_detail(&e))),
                None => return Ok(End::Lost("connection closed without a close frame".into())),
            },
        }
        if session.finished() {
            close_politely(socket).await;
            return Ok(End::Done);
        }
    }
}

pub async fn run(connect: ConnectOpts, args: WsClientArgs) -> anyhow::Result<ExitCode> {
    let expectations = args
        .expect
        .iter()
        .map(|e| Expectation::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let url = ws_url(&connect.api_url()?, args.resync)?;
    let mint = match (&args.token, carries_token(&headers), args.user) {
        (None, false, Some(user)) => Some((connect.jwt_secret()?, user, args.ttl)),
        (None, false, None) => {
            anyhow::bail!("pass --user to mint a token, or --token / -H 'Authorization: Bearer …'")
        }
        _ => None,
    };
    let dialer = Dialer {
        url,
        headers,
        token: args.token.clone(),
        mint,
    };

    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        WsFormat::Pretty
    } else {
        WsFormat::Json
    });
    let color = format == WsFormat::Pretty
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let timeout = args
        .timeout
        .or((!expectations.is_empty()).then_some(Duration::from_secs(30)));
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut session = Session {
        format,
        style: Style { on: color },
        matcher: Matcher::new(expectations),
        count: args.count,
        frames: 0,
        per_type: BTreeMap::new(),
        last: BTreeMap::new(),
    };
    let cancel = CancellationToken::new();
    super::cancel_on_signal(cancel.clone());

    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let who = match (&dialer.mint, args.user) {
        (Some(_), Some(u)) => format!("user {u}"),
        _ => "the given token".to_string(),
    };
    let end = loop {
        eprintln!("connecting to {} as {who}", dialer.url);
        let attempt = tokio::select! {
            r = dialer.dial() => r?,
            _ = sleep_until(deadline) => break End::Deadline,
            _ = cancel.cancelled() => break End::Interrupted,
        };
        let end = match attempt {
            Ok(mut socket) => {
                eprintln!("connected");
                backoff.reset();
                read_socket(
                    &mut socket,
                    &mut session,
                    args.ping_interval,
                    deadline,
                    &cancel,
                )
                .await?
            }
            Err(e) if args.reconnect && e.retryable() => End::Unreachable(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        match &end {
            End::Closed { code, reason } => eprintln!(
                "closed: {} {reason}",
                code.map_or_else(|| "(no code)".to_string(), |c| c.to_string())
            ),
            End::Lost(why) => eprintln!("connection lost: {why}"),
            End::Unreachable(why) => eprintln!("{why}"),
            _ => {}
        }
        match end {
            End::Closed { .. } | End::Lost(_) | End::Unreachable(_) if args.reconnect => {
                let delay = backoff.next_delay();
                eprintln!("reconnecting in {:.1}s", delay.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sleep_until(deadline) => break End::Deadline,
                    _ = cancel.cancelled() => break End::Interrupted,
                }
            }
            other => break other,
        }
    };

    let elapsed = started.elapsed().as_secs_f64();
    if !session.pending() {
        if !session.matcher.expectations.is_empty() {
            eprintln!(
                "all {} expectations met after {} frames in {elapsed:.1}s",
                session.matcher.expectations.len(),
                session.frames,
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let why = match end {
        End::Done => format!("stopped after {} frames (--count)", session.frames),
        End::Deadline => format!("timed out after {:?}", timeout.unwrap_or_default()),
        End::Interrupted => format!("interrupted after {elapsed:.1}s"),
        _ => format!("connection ended after {elapsed:.1}s"),
    };
    Err(Failure::check(anyhow::anyhow!("{}", session.report(&why))).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exp(s: &str) -> Expectation {
        Expectation::parse(s).unwrap()
    }

    #[test]
    fn typed_comparison() {
        let e = exp("job.status_updated status=failed retry_count=3");
        let p = json!({"status": "failed", "retry_count": 3});
        assert!(e.matches("job.status_updated", &p));
        assert!(!e.matches(
            "job.status_updated",
            &json!({"status": "failed", "retry_count": "3"})
        ));
        assert!(!e.matches("document.status_updated", &p));
        let q = exp(r#"document.status_updated error_message="no text" status='3'"#);
        assert_eq!(q.fields[0].1, json!("no text"));
        assert_eq!(q.fields[1].1, json!("3"));
        assert!(
            exp("document.status_updated error_message=null")
                .matches("document.status_updated", &json!({"error_message": null}))
        );
    }

    #[test]
    fn bad_expectations_are_usage_errors() {
        let e = Expectation::parse("document.deleted status=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid types: document.created"), "{e}");
        assert!(Expectation::parse("job.status_updated status").is_err());
        assert!(Expectation::parse("job.status_updated a=\"x").is_err());
        assert!(Expectation::parse("realtime.resync reason=listener_reconnected").is_ok());
    }

    #[test]
    fn each_expectation_gets_its_own_frame() {
        // The first frame matches both; greedy assignment would give it to
        // the broad one and then starve the narrow one.
        let mut m = Matcher::new(vec![
            exp("document.status_updated"),
            exp("document.status_updated status=parsed"),
        ]);
        let t = "document.status_updated";
        assert!(m.offer(t, &json!({"status": "parsed"})).is_some());
        assert!(!m.all_met());
        assert!(m.offer(t, &json!({"status": "ingested"})).is_some());
        assert!(m.all_met());

        let mut twice = Matcher::new(vec![exp("job.status_updated"), exp("job.status_updated")]);
        assert!(twice.offer("job.status_updated", &json!({})).is_some());
        assert_eq!(twice.missing().count(), 1);
        assert!(twice.offer("job.status_updated", &json!({})).is_some());
        assert!(twice.all_met());
    }

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080", false).unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url("http://h/api/", true).unwrap(),
            "ws://h/api/ws?resync=1"
        );
        assert!(matches!(
            ws_url("https://h", false),
            Err(WsClientError::Tls(_))
        ));
    }

    #[test]
    fn api_error_bodies() {
        let body = br#"{"error":{"code":"unauthorized","message":"token expired"}}"#;
        assert_eq!(
            error_detail("Unauthorized", body),
            "unauthorized: token expired"
        );
        assert_eq!(error_detail("Bad Gateway", b""), "Bad Gateway");
    }
}
