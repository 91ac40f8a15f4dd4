//! `ragctl emit`: publish events onto the NOTIFY channel exactly as a worker
//! would (through [`Publisher::publish`], so large envelopes are fragmented
//! the same way), replay scenario files, send deliberately broken payloads,
//! and generate paced load.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::text::loose_json;
use crate::config::ConnectOpts;
use crate::db::status::{DocumentStatus, JobKind, MessageRole, MessageStatus};
use crate::events::{
    Envelope, EventType, MAX_NOTIFY_BYTES, Publisher, encode_notifications, validate_payload,
};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ragctl emit document.status_updated --user $U --set status=parsed
  ragctl emit job.status_updated --user $U --set status=failed --set retry_count=3 --set error_message=boom
  ragctl emit --file fixtures/events/parse-failure.jsonl --user $U
  ragctl emit --raw 'not json'
  ragctl emit document.created --user $U --count 10000 --rate 2000 --format json > sent.jsonl")]
pub struct EmitArgs {
    /// Event type: document.created, document.status_updated,
    /// job.status_updated, message.created or message.status_updated.
    #[arg(value_name = "TYPE", required_unless_present_any = ["raw", "file"])]
    pub kind: Option<String>,
    /// The user the event is for (its `user_id`; `$USER` in scenario files).
    #[arg(long, required_unless_present = "raw")]
    pub user: Option<Uuid>,
    /// Set a payload field; VALUE is parsed as JSON if it parses (3, null,
    /// true, "3"), else taken as a string. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Base payload as a JSON object; --set entries override its fields.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Send STRING verbatim with pg_notify, valid or not (to test drops).
    #[arg(long, value_name = "STRING", conflicts_with_all = ["kind", "set", "payload", "file"])]
    pub raw: Option<String>,
    /// Replay a scenario: JSON Lines of {"type","payload","delay_ms"} or
    /// {"raw"}; $USER is the --user, any other $NAME a fresh UUID per replay.
    #[arg(long, value_name = "PATH.jsonl", conflicts_with_all = ["kind", "set", "payload"])]
    pub file: Option<PathBuf>,
    /// How many events to send (with --file: how many replays).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Pace sending at this many events per second (default: as fast as
    /// the database takes them).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// `text`: one line per event on stderr; `json`: one object per event on
    /// stdout.
    #[arg(long, value_enum, default_value_t = EmitFormat::Text)]
    pub format: EmitFormat,
    /// The envelope's `origin` (never shown to clients).
    #[arg(long, default_value = "ragctl-emit")]
    pub origin: String,
    /// Upper bound on one publish.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub publish_timeout: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitFormat {
    Text,
    Json,
}

/// Bad input: reported with exit code 2 before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("unknown event type {0:?}; valid types: {valid}", valid = type_list())]
    UnknownType(String),
    #[error("--set {0:?} is not KEY=VALUE")]
    BadSet(String),
    #[error("--payload is not a JSON object: {0}")]
    BadPayload(String),
    #[error("{kind} needs {fields}: pass each with --set KEY=VALUE")]
    MissingFields { kind: EventType, fields: String },
    #[error("invalid {kind} payload: {detail}")]
    Invalid { kind: EventType, detail: String },
    #[error("{path}:{line}: {problem}")]
    Scenario {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("--rate must be a positive number of events per second, got {0}")]
    BadRate(f64),
}

fn type_list() -> String {
    EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fills in what the caller left out with values a real event could carry,
/// then validates against the contract. Fields whose value says something
/// (a status update's `status`, a message's `content`) are never invented.
pub fn complete_payload(
    kind: EventType,
    mut payload: Map<String, Value>,
) -> Result<Value, EmitError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for field in kind.uuid_fields() {
        payload
            .entry(field)
            .or_insert_with(|| json!(Uuid::new_v4()));
    }
    for field in kind.time_fields() {
        payload.entry(field).or_insert_with(|| json!(now));
    }
    let defaults: &[(&str, Value)] = match kind {
        EventType::DocumentCreated => &[
            ("filename", json!("emitted.txt")),
            ("mime_type", json!("text/plain")),
            ("size_bytes", json!(0)),
            // A document is always `uploaded` when it is created.
            ("status", json!(DocumentStatus::Uploaded)),
        ],
        EventType::DocumentStatusUpdated => &[("error_message", Value::Null)],
        EventType::JobStatusUpdated => &[
            ("kind", json!(JobKind::Parse)),
            ("retry_count", json!(0)),
            ("error_message", Value::Null),
        ],
        EventType::MessageCreated => &[
            ("role", json!(MessageRole::User)),
            ("status", json!(MessageStatus::Pending)),
        ],
        EventType::MessageStatusUpdated => &[],
    };
    for (field, value) in defaults {
        payload.entry(*field).or_insert_with(|| value.clone());
    }
    let missing: Vec<String> = kind
        .field_names()
        .filter(|f| !payload.contains_key(*f))
        .map(|f| match kind.allowed_values(f) {
            Some(values) => format!("{f} (one of {})", values.join(", ")),
            None => f.to_string(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(EmitError::MissingFields {
            kind,
            fields: missing.join(", "),
        });
    }
    let payload = Value::Object(payload);
    validate_payload(kind, &payload).map_err(|e| EmitError::Invalid {
        kind,
        detail: e.to_string(),
    })?;
    Ok(payload)
}

/// Keys that are not fields of `kind`: allowed by the contract (it may
/// grow), but usually a typo.
fn unknown_keys(kind: EventType, payload: &Map<String, Value>) -> Vec<String> {
    payload
        .keys()
        .filter(|k| !kind.field_names().any(|f| f == k.as_str()))
        .cloned()
        .collect()
}

/// What one step sends.
enum Item {
    Event(Envelope),
    Raw(String),
}

/// One step of a replay, with the pause before it. Events are completed
/// when they are sent, so that their timestamps are the send time.
struct Step {
    delay: Duration,
    item: StepItem,
}

enum StepItem {
    Event(EventType, Map<String, Value>),
    Raw(String),
}

impl StepItem {
    fn build(self, user: Uuid, origin: &str) -> Item {
        match self {
            StepItem::Raw(raw) => Item::Raw(raw),
            StepItem::Event(kind, payload) => {
                let payload = complete_payload(kind, payload).expect("validated at load time");
                Item::Event(Envelope::new(user, kind, payload, origin))
            }
        }
    }
}

/// A parsed `emit TYPE` invocation: rebuilt for every event so that the
/// defaults (ids, timestamps) are fresh each time.
struct Template {
    kind: EventType,
    base: Map<String, Value>,
}

impl Template {
    fn from_args(
        kind: &str,
        payload: Option<&str>,
        sets: &[String],
    ) -> Result<Template, EmitError> {
        let kind =
            EventType::parse(kind).ok_or_else(|| EmitError::UnknownType(kind.to_string()))?;
        let mut base = match payload {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                Ok(other) => return Err(EmitError::BadPayload(format!("got {other}"))),
                Err(e) => return Err(EmitError::BadPayload(e.to_string())),
            },
        };
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| EmitError::BadSet(set.clone()))?;
            base.insert(key.trim().to_string(), loose_json(value));
        }
        // Build one now so that bad input fails before anything is sent.
        complete_payload(kind, base.clone())?;
        Ok(Template { kind, base })
    }

    fn build(&self, user: Uuid, origin: &str) -> Envelope {
        let payload =
            complete_payload(self.kind, self.base.clone()).expect("validated at parse time");
        Envelope::new(user, self.kind, payload, origin)
    }
}

/// A scenario file, kept as text: placeholders are substituted per replay.
struct Scenario {
    path: String,
    lines: Vec<(usize, String)>,
}

impl Scenario {
    fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim().to_string()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
            .collect::<Vec<_>>();
        if lines.is_empty() {
            anyhow::bail!("{} has no events", path.display());
        }
        Ok(Scenario {
            path: path.display().to_string(),
            lines,
        })
    }

    /// One replay: `$USER` becomes `user`, every other `$NAME` a UUID fresh
    /// to this replay (the same one each time it appears in it).
    fn steps(&self, user: Uuid) -> Result<Vec<Step>, EmitError> {
        let mut ids: HashMap<String, Uuid> = HashMap::new();
        ids.insert("USER".into(), user);
        self.lines
            .iter()
            .map(|(n, line)| {
                let err = |problem: String| EmitError::Scenario {
                    path: self.path.clone(),
                    line: *n,
                    problem,
                };
                let text = substitute(line, &mut ids);
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| err(format!("not a JSON object: {e}")))?;
                let Value::Object(mut obj) = value else {
                    return Err(err("not a JSON object".into()));
                };
                let delay = match obj.remove("delay_ms") {
                    None => Duration::ZERO,
                    Some(v) => Duration::from_millis(
                        v.as_u64()
                            .ok_or_else(|| err("delay_ms must be a non-negative integer".into()))?,
                    ),
                };
                if let Some(raw) = obj.remove("raw") {
                    let Value::String(raw) = raw else {
                        return Err(err("raw must be a string".into()));
                    };
                    return Ok(Step {
                        delay,
                        item: StepItem::Raw(raw),
                    });
                }
                let kind = obj
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err("needs \"type\" (or \"raw\")".into()))?;
                let kind = EventType::parse(kind)
                    .ok_or_else(|| err(EmitError::UnknownType(kind.into()).to_string()))?;
                let payload = match obj.remove("payload") {
                    None => Map::new(),
                    Some(Value::Object(m)) => m,
                    Some(_) => return Err(err("payload must be an object".into())),
                };
                obj.remove("type");
                if let Some(key) = obj.keys().find(|k| k.as_str() != "comment") {
                    return Err(err(format!(
                        "unknown key {key:?} (a line has type, payload, delay_ms, comment, or raw)"
                    )));
                }
                complete_payload(kind, payload.clone()).map_err(|e| err(e.to_string()))?;
                Ok(Step {
                    delay,
                    item: StepItem::Event(kind, payload),
                })
            })
            .collect()
    }
}

/// Replaces `$NAME` (uppercase letters, digits, `_`) with the UUID for NAME.
fn substitute(line: &str, ids: &mut HashMap<String, Uuid>) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..len];
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            let id = ids.entry(name.to_string()).or_insert_with(Uuid::new_v4);
            out.push_str(&id.to_string());
        } else {
            out.push('$');
            out.push_str(name);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Spaces events `1/rate` apart on a fixed schedule, so that the average
/// rate holds even when single publishes are slow; after a long stall it
/// restarts the schedule instead of bursting to catch up.
struct Pacer {
    period: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Result<Pacer, EmitError> {
        let period = match rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => Some(Duration::from_secs_f64(1.0 / r)),
            Some(r) => return Err(EmitError::BadRate(r)),
        };
        Ok(Pacer {
            period,
            next: Instant::now(),
        })
    }

    async fn wait(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        if now > self.next + Duration::from_secs(1) {
            self.next = now;
        }
        tokio::time::sleep_until(self.next.into()).await;
        self.next += period;
    }
}

/// Sends notifications: events through the library's publisher, raw
/// strings with a bare pg_notify.
struct Sender {
    pool: Pool,
    publisher: Publisher,
    channel: String,
    format: EmitFormat,
    sent: u64,
    bytes: u64,
}

impl Sender {
    async fn send(&mut self, item: &Item) -> anyhow::Result<()> {
        let (bytes, notifications) = match item {
            Item::Event(env) => {
                let bytes = serde_json::to_string(env).map(|s| s.len()).unwrap_or(0);
                let notifications = encode_notifications(env).map(|n| n.len()).unwrap_or(0);
                self.publisher
                    .publish(env.clone())
                    .await
                    .with_context(|| format!("publishing {} {} failed", env.kind, env.id))?;
                (bytes, notifications)
            }
            Item::Raw(text) => {
                let client = self
                    .pool
                    .get()
                    .await
                    .context("no database connection for pg_notify")?;
                client
                    .execute("SELECT pg_notify($1, $2)", &[&self.channel, text])
                    .await
                    .map_err(|e| {
                        let hint = if text.len() > MAX_NOTIFY_BYTES {
                            format!(
                                " ({} bytes; a NOTIFY payload must be under 8000)",
                                text.len()
                            )
                        } else {
                            String::new()
                        };
                        anyhow::anyhow!(
                            "pg_notify of the raw payload failed: {}{hint}",
                            crate::db::error_text(&e)
                        )
                    })?;
                (text.len(), 1)
            }
        };
        self.sent += 1;
        self.bytes += bytes as u64;
        self.report(item, bytes, notifications)
    }

    fn report(&self, item: &Item, bytes: usize, notifications: usize) -> anyhow::Result<()> {
        match self.format {
            EmitFormat::Json => {
                let line = match item {
                    Item::Event(env) => {
                        json!({"envelope": env, "bytes": bytes, "notifications": notifications})
                    }
                    Item::Raw(text) => json!({"raw": text, "bytes": bytes, "notifications": 1}),
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
            }
            EmitFormat::Text => eprintln!("{}", describe(item, bytes, notifications)),
        }
        Ok(())
    }
}

/// One concise line: type, user, the payload's ids and status, size.
fn describe(item: &Item, bytes: usize, notifications: usize) -> String {
    match item {
        Item::Raw(text) => {
            let snippet: String = text.chars().take(60).collect();
            let more = if snippet.len() < text.len() {
                "…"
            } else {
                ""
            };
            format!("sent raw {bytes} B: {snippet}{more}")
        }
        Item::Event(env) => {
            let mut parts = vec![format!("sent {} user={}", env.kind, env.user_id)];
            // In contract order, so every line of a type reads the same.
            for key in env.kind.field_names() {
                let show = key.ends_with("_id")
                    || matches!(key, "status" | "kind" | "retry_count" | "role");
                if let (true, Some(value)) = (show, env.payload.get(key)) {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string);
                    parts.push(format!("{key}={text}"));
                }
            }
            let frags = if notifications > 1 {
                format!(", {notifications} fragments")
            } else {
                String::new()
            };
            parts.push(format!("({bytes} B{frags})"));
            parts.join(" ")
        }
    }
}

pub async fn run(connect: ConnectOpts, args: EmitArgs) -> anyhow::Result<ExitCode> {
    // Everything the arguments can get wrong fails here, before connecting.
    let mut pacer = Pacer::new(args.rate)?;
    let template = match &args.kind {
        Some(kind) => Some(Template::from_args(
            kind,
            args.payload.as_deref(),
            &args.set,
        )?),
        None => None,
    };
    if let Some(t) = &template {
        let extra = unknown_keys(t.kind, &t.base);
        if !extra.is_empty() {
            eprintln!(
                "note: {} {} not a field of {} (fields: {}); sending anyway",
                extra.join(", "),
                if extra.len() == 1 { "is" } else { "are" },
                t.kind,
                t.kind.field_names().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let scenario = args.file.as_deref().map(Scenario::load).transpose()?;
    let user = args.user.unwrap_or_default();
    if let Some(s) = &scenario {
        s.steps(user)?;
    }

    let url = connect.database_url()?;
    let channel = connect.channel()?;
    let pool = crate::db::pool(&url, 2, "ragctl-emit").await?;
    let publisher = Publisher::new(pool.clone(), &channel, &args.origin, args.publish_timeout);
    let mut sender = Sender {
        pool,
        publisher,
        channel,
        format: args.format,
        sent: 0,
        bytes: 0,
    };

    let started = Instant::now();
    for _ in 0..args.count {
        if let Some(raw) = &args.raw {
            pacer.wait().await;
            sender.send(&Item::Raw(raw.clone())).await?;
        } else if let Some(t) = &template {
            pacer.wait().await;
            sender
                .send(&Item::Event(t.build(user, &args.origin)))
                .await?;
        } else if let Some(s) = &scenario {
            for step in s.steps(user)? {
                tokio::time::sleep(step.delay).await;
                pacer.wait().await;
                sender.send(&step.item.build(user, &args.origin)).await?;
            }
        }
    }
    if sender.sent > 1 {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "emitted {} events, {} bytes, in {:.2}s ({:.0}/s) on channel {}",
            sender.sent,
            sender.bytes,
            secs,
            sender.sent as f64 / secs.max(1e-9),
            sender.channel
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_defaults_and_requires_status() {
        let p = complete_payload(EventType::JobStatusUpdated, Map::new()).unwrap_err();
        assert!(
            p.to_string()
                .contains("status (one of queued, running, success, failed)"),
            "{p}"
        );
        let mut m = Map::new();
        m.insert("status".into(), json!("failed"));
        m.insert("retry_count".into(), loose_json("3"));
        let p = complete_payload(EventType::JobStatusUpdated, m).unwrap();
        assert_eq!(p["retry_count"], json!(3));
        assert_eq!(p["kind"], json!("parse"));
        assert!(p["error_message"].is_null());
        assert!(Uuid::parse_str(p["job_id"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn bad_status_lists_allowed_values() {
        let t = Template::from_args("document.status_updated", None, &["status=done".into()]);
        let e = t.err().unwrap().to_string();
        assert!(
            e.contains("must be one of uploaded, parsing, parsed"),
            "{e}"
        );
        let e = Template::from_args("document.deleted", None, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("valid types: document.created"), "{e}");
    }

    #[test]
    fn loose_values() {
        assert_eq!(loose_json("3"), json!(3));
        assert_eq!(loose_json("null"), Value::Null);
        assert_eq!(loose_json("parsed"), json!("parsed"));
        assert_eq!(loose_json("\"3\""), json!("3"));
    }

    #[test]
    fn placeholders_are_stable_within_a_replay() {
        let user = Uuid::new_v4();
        let mut ids = HashMap::from([("USER".to_string(), user)]);
        let out = substitute("$USER $DOC $DOC $JOB $INGEST_JOB $lower $", &mut ids);
        let words: Vec<&str> = out.split(' ').collect();
        assert_eq!(words[0], user.to_string());
        assert_eq!(words[1], words[2]);
        assert_ne!(words[1], words[3]);
        assert_ne!(words[3], words[4]);
        assert_eq!(&words[5..], ["$lower", "$"]);
    }
}
