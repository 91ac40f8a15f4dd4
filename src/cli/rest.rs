//! `ragctl upload` and `ragctl docs`: the REST side of the API from the
//! terminal, authenticated with a token minted for `--user`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use uuid::Uuid;

use super::failure::Failure;
use super::text::{error_detail, value_text};
use crate::config::{ConnectOpts, parse_duration};
use crate::db::status::DocumentStatus;

/// How long a minted token lives; a command never runs that long.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
const POLL_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The API answered with an error body: `404 not_found: document not found`.
    #[error("{status} {detail}")]
    Api { status: u16, detail: String },
    #[error(
        "cannot reach the API at {url}: {detail} (is `ragctl serve` running? --url / RAG_API_URL)"
    )]
    Unreachable { url: String, detail: String },
    #[error("unexpected response from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Who the requests are for.
#[derive(clap::Args, Debug, Clone)]
pub struct Identity {
    /// Act as this user (a token is minted with the configured JWT secret).
    #[arg(long, required_unless_present = "token")]
    pub user: Option<Uuid>,
    /// Use this JWT instead of minting one.
    #[arg(long, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ragctl upload fixtures/documents/handbook.md --user $U
  ragctl upload report.pdf --user $U --wait ingested --timeout 2m")]
pub struct UploadArgs {
    /// The file to upload (sent as the multipart field `file`).
    pub file: PathBuf,
    #[command(flatten)]
    pub identity: Identity,
    /// Poll until the document has this status (or is past it); exit 1 on
    /// timeout or if it ends in `error` instead.
    #[arg(long, value_name = "STATUS", value_parser = document_status)]
    pub wait: Option<String>,
    /// How long --wait may take.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ragctl docs --user $U
  ragctl docs --user $U --id $DOC --jobs
  ragctl docs --user $U --format json | jq -r .status")]
pub struct DocsArgs {
    #[command(flatten)]
    pub identity: Identity,
    /// Show one document.
    #[arg(long, value_name = "DOC")]
    pub id: Option<String>,
    /// List the document's jobs (needs --id).
    #[arg(long, requires = "id")]
    pub jobs: bool,
    /// `table` (default on a terminal) or `json` (one object per line).
    #[arg(long, value_enum)]
    pub format: Option<DocsFormat>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocsFormat {
    Table,
    Json,
}

fn document_status(s: &str) -> Result<String, String> {
    let all = DocumentStatus::NAMES;
    if all.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a document status; one of {}",
            all.join(", ")
        ))
    }
}

/// Whether a document in `current` has got to `target`: the statuses run
/// uploaded → parsing → parsed → ingesting → ingested, so waiting for
/// `parsed` is also done once it is `ingested`. `error` is only itself.
fn reached(current: &str, target: &str) -> bool {
    let rank = |s: &str| DocumentStatus::NAMES.iter().position(|x| *x == s);
    let error = DocumentStatus::Error.as_str();
    if current == target {
        return true;
    }
    if current == error || target == error {
        return false;
    }
    matches!((rank(current), rank(target)), (Some(c), Some(t)) if c > t)
}

/// All the chained `source()`s, since reqwest's own message is terse.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// An authenticated client for one API.
struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    fn new(connect: &ConnectOpts, identity: &Identity) -> anyhow::Result<Api> {
        let base = connect.api_url()?;
        let token = match (&identity.token, identity.user) {
            (Some(t), _) => t.clone(),
            (None, Some(user)) => crate::auth::mint(&connect.jwt_secret()?, user, TOKEN_TTL)?,
            (None, None) => anyhow::bail!("pass --user to mint a token, or --token"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Api {
            http,
            base,
            auth: format!("Bearer {token}"),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value, RestError> {
        let resp = req
            .header(AUTHORIZATION, &self.auth)
            .send()
            .await
            .map_err(|e| RestError::Unreachable {
                url: self.base.clone(),
                detail: error_chain(&e),
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| RestError::BadResponse {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(RestError::Api {
                status: status.as_u16(),
                detail: error_detail(status.canonical_reason().unwrap_or(""), &body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| RestError::BadResponse {
            url: url.to_string(),
            detail: format!("not JSON: {e}"),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, RestError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// Every row of a paginated list (docs/api.md, "Pages"): follows
    /// `next_cursor` from the first page to the last, at the largest page.
    async fn get_all(&self, path: &str, key: &str) -> Result<Value, RestError> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => self.get(&format!("{path}?limit=200&cursor={c}")).await?,
                None => self.get(&format!("{path}?limit=200")).await?,
            };
            if let Some(items) = page.get(key).and_then(Value::as_array) {
                rows.extend(items.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(serde_json::json!({ key: rows })),
            }
        }
    }

    /// A multipart body with the one `file` field the API reads, built by
    /// hand: it is a few lines, and spares a dependency feature.
    async fn upload(&self, filename: &str, content: Vec<u8>) -> Result<Value, RestError> {
        let boundary = format!("ragctl-{}", Uuid::new_v4().simple());
        // Quotes and line breaks in a filename are percent-encoded, as
        // browsers do, so they cannot break out of the header.
        let safe_name = filename
            .replace('"', "%22")
            .replace('\r', "%0D")
            .replace('\n', "%0A");
        let mut body = Vec::with_capacity(content.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/documents", self.base);
        let req = self
            .http
            .post(&url)
            .header(
                CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.send(req, &url).await
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        writeln!(out, "{value}")?;
    }
    Ok(())
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub async fn upload(connect: ConnectOpts, args: UploadArgs) -> anyhow::Result<ExitCode> {
    let content = std::fs::read(&args.file).map_err(|source| RestError::Read {
        path: args.file.display().to_string(),
        source,
    })?;
    let filename = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into());
    let api = Api::new(&connect, &args.identity)?;
    let doc = api.upload(&filename, content).await?;
    print_json(&doc)?;
    let Some(target) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };

    let id = str_field(&doc, "id").to_string();
    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut last = str_field(&doc, "status").to_string();
    let mut last_error: Option<String> = None;
    eprintln!("waiting up to {:?} for {target}: {last}", args.timeout);
    loop {
        if reached(&last, &target) {
            eprintln!(
                "document {id} is {last} after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if last == DocumentStatus::Error.as_str() {
            return Err(Failure::check(anyhow::anyhow!(
                "document {id} ended in error instead of {target}: {}",
                last_error.as_deref().unwrap_or("(no message)")
            ))
            .into());
        }
        if Instant::now() >= deadline {
            return Err(Failure::check(anyhow::anyhow!(
                "document {id} is still {last} after {:?} (waited for {target})",
                args.timeout
            ))
            .into());
        }
        tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let now = api.get(&format!("/documents/{id}")).await?;
        let status = str_field(&now, "status").to_string();
        last_error = now
            .get("error_message")
            .and_then(Value::as_str)
            .map(str::to_string);
        if status != last {
            eprintln!("  {status} ({:.1}s)", started.elapsed().as_secs_f64());
            last = status;
        }
    }
}

/// Left-aligned columns sized to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.chars().take(60).collect::<String>().replace('\n', " "),
        Some(other) => other.to_string(),
    }
}

/// `2026-11-28T10:00:00.123456Z` as local `2026-11-28 11:00:00`.
fn when(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

pub async fn docs(connect: ConnectOpts, args: DocsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&connect, &args.identity)?;
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        DocsFormat::Table
    } else {
        DocsFormat::Json
    });
    let mut out = std::io::stdout().lock();
    match (&args.id, args.jobs) {
        (None, _) => {
            let body = api.get_all("/documents", "documents").await?;
            let headers = ["ID", "STATUS", "BYTES", "UPDATED", "FILENAME", "ERROR"];
            print_list(&mut out, &body, "documents", format, &headers, |d| {
                vec![
                    cell(d, "id"),
                    cell(d, "status"),
                    cell(d, "size_bytes"),
                    when(d, "updated_at"),
                    cell(d, "filename"),
                    cell(d, "error_message"),
                ]
            })?;
        }
        (Some(id), false) => {
            let doc = api.get(&format!("/documents/{id}")).await?;
            if format == DocsFormat::Json {
                writeln!(out, "{doc}")?;
            } else if let Some(map) = doc.as_object() {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    writeln!(out, "{k:<width$}  {}", value_text(v))?;
                }
            }
        }
        (Some(id), true) => {
            let body = api.get(&format!("/documents/{id}/jobs")).await?;
            let headers = ["JOB", "KIND", "STATUS", "RETRIES", "UPDATED", "ERROR"];
            print_list(&mut out, &body, "jobs", format, &headers, |j| {
                vec![
                    cell(j, "id"),
                    cell(j, "kind"),
                    cell(j, "status"),
                    format!("{}/{}", cell(j, "retry_count"), cell(j, "max_retries")),
                    when(j, "updated_at"),
                    cell(j, "error_message"),
                ]
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the array under `key` of a list response: one JSON object per
/// line, or a table.
fn print_list(
    out: &mut impl Write,
    body: &Value,
    key: &str,
    format: DocsFormat,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> std::io::Result<()> {
    let items = body
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if format == DocsFormat::Json {
        for item in &items {
            writeln!(out, "{item}")?;
        }
    } else if items.is_empty() {
        eprintln!("no {key}");
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        writeln!(out, "{}", table(headers, &rows))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_order() {
        assert!(reached("ingested", "parsed"));
        assert!(reached("parsed", "parsed"));
        assert!(!reached("parsing", "parsed"));
        assert!(!reached("error", "ingested"));
        assert!(!reached("ingested", "error"));
        assert!(reached("error", "error"));
        assert!(
            document_status("done")
                .unwrap_err()
                .contains("one of uploaded")
        );
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
