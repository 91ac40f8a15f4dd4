//! `ragctl ws-client`: a `/ws` client for people and scripts. It prints each
//! frame, checks expectations (`--expect 'TYPE key=value ...'`), and turns
//! the outcome into an exit code: 0 all expectations met (or --count frames
//! seen), 1 an expectation or the frame count was not met before the
//! timeout or the end of the connection, 2 usage, connection or auth error.

//!
//! `dial` reaches `/ws`, `expect` matches frames to `--expect`, `print`
//! writes what a person or a script reads, `args` and `error` are the
//! leaves they share; this file holds the run: connect, read, reconnect,
//! and the verdict.

mod args;
mod dial;
mod error;
mod expect;
mod print;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::failure::Failure;
use super::term_style::color_for;
use crate::backoff::Backoff;
use crate::config::ConnectOpts;
use dial::{Dialer, Socket, close_politely, io_detail};
use expect::{Expectation, Matcher};
use print::Style;

pub use args::{WsClientArgs, WsFormat};

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

impl End {
    /// Tells how a connection ended, where that is news.
    fn log(&self) {
        match self {
            End::Closed { code, reason } => eprintln!(
                "closed: {} {reason}",
                code.map_or_else(|| "(no code)".to_string(), |c| c.to_string())
            ),
            End::Lost(why) => eprintln!("connection lost: {why}"),
            End::Unreachable(why) => eprintln!("{why}"),
            _ => {}
        }
    }

    /// Whether `--reconnect` tries again after this end.
    fn retry(&self) -> bool {
        matches!(
            self,
            End::Closed { .. } | End::Lost(_) | End::Unreachable(_)
        )
    }
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
    /// Where a reconnect resumes from.
    resume: Resume,
}

impl Session {
    fn new(args: &WsClientArgs, expectations: Vec<Expectation>) -> Session {
        let stdout = std::io::stdout();
        let format = args.format.unwrap_or(if stdout.is_terminal() {
            WsFormat::Pretty
        } else {
            WsFormat::Json
        });
        Session {
            format,
            style: Style {
                on: format == WsFormat::Pretty && color_for(&stdout),
            },
            matcher: Matcher::new(expectations),
            count: args.count,
            frames: 0,
            per_type: BTreeMap::new(),
            last: BTreeMap::new(),
            resume: Resume {
                caught_up: None,
                newest: None,
                given: args.since.clone(),
            },
        }
    }

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
        let shown = typed.as_ref().map(|(k, p)| (k.as_str(), p));
        print::frame(self.format, self.style, text, parsed.as_ref(), shown)?;
        if let Some((kind, payload)) = typed {
            self.offer(kind, payload);
        }
        Ok(())
    }

    fn offer(&mut self, kind: String, payload: Value) {
        self.resume.track(&kind, &payload);
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
        self.missing(&mut lines);
        lines.join("\n")
    }

    /// Each missing expectation, with what the last frame of its type had.
    fn missing(&self, lines: &mut Vec<String>) {
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
    }

    /// The exit code: success once nothing is pending, else a failed check
    /// that says why and what was seen.
    fn outcome(
        &self,
        end: End,
        elapsed: Duration,
        timeout: Option<Duration>,
    ) -> anyhow::Result<ExitCode> {
        let elapsed = elapsed.as_secs_f64();
        if !self.pending() {
            if !self.matcher.expectations.is_empty() {
                eprintln!(
                    "all {} expectations met after {} frames in {elapsed:.1}s",
                    self.matcher.expectations.len(),
                    self.frames,
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let why = match end {
            End::Done => format!("stopped after {} frames (--count)", self.frames),
            End::Deadline => format!("timed out after {:?}", timeout.unwrap_or_default()),
            End::Interrupted => format!("interrupted after {elapsed:.1}s"),
            _ => format!("connection ended after {elapsed:.1}s"),
        };
        Err(Failure::check(anyhow::anyhow!("{}", self.report(&why))).into())
    }
}

/// The cursor to resume from: the last `realtime.caught_up` cursor, else
/// the newest `updated_at`/`created_at` received (RFC 3339), else `--since`.
struct Resume {
    caught_up: Option<String>,
    newest: Option<chrono::DateTime<chrono::Utc>>,
    given: Option<String>,
}

impl Resume {
    fn track(&mut self, kind: &str, payload: &Value) {
        if kind == "realtime.caught_up" {
            if let Some(c) = payload.get("cursor").and_then(Value::as_str) {
                self.caught_up = Some(c.to_string());
            }
            return;
        }
        let stamps = ["updated_at", "created_at"]
            .iter()
            .filter_map(|k| payload.get(*k)?.as_str()?.parse().ok());
        self.newest = stamps.chain(self.newest).max();
    }

    fn since(&self) -> Option<String> {
        let newest = self
            .newest
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        self.caught_up
            .clone()
            .or(newest)
            .or_else(|| self.given.clone())
    }
}

/// What bounds the run: when to give up, the signal to stop, the pings to
/// send and whether to reconnect.
struct Limits {
    deadline: Option<Instant>,
    cancel: CancellationToken,
    ping_interval: Option<Duration>,
    reconnect: bool,
}

impl Limits {
    /// Resolves when the run is over (deadline or signal), with how.
    async fn over(&self) -> End {
        tokio::select! {
            _ = sleep_until(self.deadline) => End::Deadline,
            _ = self.cancel.cancelled() => End::Interrupted,
        }
    }

    fn pinger(&self) -> Option<tokio::time::Interval> {
        self.ping_interval.map(|d| {
            let mut i = tokio::time::interval_at((Instant::now() + d).into(), d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        })
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

/// What one message read means: nothing to do (`None`), or the
/// connection's end. Text frames go to the session.
fn on_message(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    session: &mut Session,
) -> anyhow::Result<Option<End>> {
    Ok(match msg {
        Some(Ok(Message::Text(t))) => session.on_frame(t.as_str()).map(|_| None)?,
        Some(Ok(Message::Binary(b))) => session
            .on_frame(&String::from_utf8_lossy(&b))
            .map(|_| None)?,
        Some(Ok(Message::Close(frame))) => Some(End::Closed {
            code: frame.as_ref().map(|f| u16::from(f.code)),
            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
        }),
        // Pings are answered by the library; pongs need nothing.
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(End::Lost(io_detail(&e))),
        None => Some(End::Lost("connection closed without a close frame".into())),
    })
}

/// The payload of the ping that asks whether the server runs the socket.
const LIVE_PING: &[u8] = b"ragctl-ws-client-live";

/// Waits until the server runs this socket, reading what comes meanwhile.
/// The server answers pings only from the socket's own task, which starts
/// once the socket is registered for events (and, on the NATS bus, its
/// user subscribed): from then on an event published reaches this client,
/// which the 101 alone does not promise. `None`: live.
async fn await_live(
    socket: &mut Socket,
    session: &mut Session,
    limits: &Limits,
) -> anyhow::Result<Option<End>> {
    if let Err(e) = socket.send(Message::Ping(LIVE_PING.to_vec().into())).await {
        return Ok(Some(End::Lost(io_detail(&e))));
    }
    loop {
        tokio::select! {
            end = limits.over() => {
                close_politely(socket).await;
                return Ok(Some(end));
            }
            msg = socket.next() => match msg {
                Some(Ok(Message::Pong(p))) if p.as_ref() == LIVE_PING => return Ok(None),
                msg => if let Some(end) = on_message(msg, session)? {
                    return Ok(Some(end));
                },
            },
        }
    }
}

/// Reads one connection until it ends or the run is over.
async fn read_socket(
    socket: &mut Socket,
    session: &mut Session,
    limits: &Limits,
) -> anyhow::Result<End> {
    let mut ping = limits.pinger();
    while !session.finished() {
        tokio::select! {
            end = limits.over() => {
                close_politely(socket).await;
                return Ok(end);
            }
            _ = tick(&mut ping) => {
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return Ok(End::Lost(io_detail(&e)));
                }
            }
            msg = socket.next() => if let Some(end) = on_message(msg, session)? {
                return Ok(end);
            },
        }
    }
    close_politely(socket).await;
    Ok(End::Done)
}

/// One attempt: dial, then read until the connection ends.
async fn attempt(
    dialer: &Dialer,
    session: &mut Session,
    limits: &Limits,
    backoff: &mut Backoff,
) -> anyhow::Result<End> {
    let since = session.resume.since();
    let dialed = tokio::select! {
        r = dialer.dial(since.as_deref()) => r?,
        end = limits.over() => return Ok(end),
    };
    match dialed {
        Ok(mut socket) => {
            if let Some(end) = await_live(&mut socket, session, limits).await? {
                return Ok(end);
            }
            eprintln!("connected");
            backoff.reset();
            read_socket(&mut socket, session, limits).await
        }
        Err(e) if limits.reconnect && e.retryable() => Ok(End::Unreachable(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Connects, and with --reconnect connects again after a backoff, until
/// an end that is final.
async fn connect_loop(
    dialer: &Dialer,
    session: &mut Session,
    limits: &Limits,
) -> anyhow::Result<End> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let who = dialer.who();
    loop {
        eprintln!("connecting to {} as {who}", dialer.url);
        let end = attempt(dialer, session, limits, &mut backoff).await?;
        end.log();
        if !(limits.reconnect && end.retry()) {
            return Ok(end);
        }
        let delay = backoff.next_delay();
        eprintln!("reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            end = limits.over() => return Ok(end),
        }
    }
}

pub async fn run(connect: ConnectOpts, args: WsClientArgs) -> anyhow::Result<ExitCode> {
    let expectations = args
        .expect
        .iter()
        .map(|e| Expectation::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let dialer = Dialer::new(&connect, &args)?;
    let timeout = args
        .timeout
        .or((!expectations.is_empty()).then_some(Duration::from_secs(30)));
    let started = Instant::now();
    let mut session = Session::new(&args, expectations);
    let limits = Limits {
        deadline: timeout.map(|t| started + t),
        cancel: CancellationToken::new(),
        ping_interval: args.ping_interval,
        reconnect: args.reconnect,
    };
    super::signal::cancel_on_signal(limits.cancel.clone());
    let end = connect_loop(&dialer, &mut session, &limits).await?;
    session.outcome(end, started.elapsed(), timeout)
}
