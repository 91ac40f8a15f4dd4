//! The REST calls of `bench --retrieval`: upload, wait for ingestion, ask.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

/// A request not answered in this long fails the run.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Tries of a request refused with 429 or 503, after the first.
const RETRIES: usize = 20;
/// How long a document may take to be ingested.
const INGEST_LIMIT: Duration = Duration::from_secs(3600);

/// One user's view of the API.
pub(super) struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

/// One source of an answer.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub document_id: Uuid,
    pub chunk_index: i32,
}

/// The assistant's reply to one question.
#[derive(Debug)]
pub(super) struct Reply {
    pub content: String,
    pub sources: Vec<Source>,
    pub latency: Duration,
}

impl Client {
    pub(super) fn new(api: &str, token: &str) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            api: api.to_string(),
            token: token.to_string(),
        })
    }

    /// `POST /documents`; the new document's id.
    pub(super) async fn upload(&self, name: &str, bytes: &[u8]) -> anyhow::Result<Uuid> {
        let v = self
            .send(|| {
                let part =
                    reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
                self.http
                    .post(format!("{}/documents", self.api))
                    .multipart(reqwest::multipart::Form::new().part("file", part))
            })
            .await
            .with_context(|| format!("uploading {name}"))?;
        id_of(&v)
    }

    /// Waits (polling `GET /documents/{id}`) until every document is
    /// `ingested`; an `error` document fails the run.
    pub(super) async fn wait_ingested(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        let deadline = Instant::now() + INGEST_LIMIT;
        for id in ids {
            loop {
                let v = self
                    .send(|| self.http.get(format!("{}/documents/{id}", self.api)))
                    .await?;
                match v["status"].as_str() {
                    Some("ingested") => break,
                    Some("error") => bail!("document {id} failed: {}", v["error_message"]),
                    _ if Instant::now() > deadline => bail!("document {id} not ingested in time"),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    /// A new conversation, then the question in it; the latency is the
    /// question's request alone.
    pub(super) async fn ask(&self, question: &str) -> anyhow::Result<Reply> {
        let conv = self
            .send(|| {
                self.http
                    .post(format!("{}/conversations", self.api))
                    .json(&json!({}))
            })
            .await?;
        let conv = id_of(&conv)?;
        let url = format!("{}/conversations/{conv}/messages", self.api);
        let started = Instant::now();
        let v = self
            .send(|| self.http.post(&url).json(&json!({ "content": question })))
            .await?;
        let latency = started.elapsed();
        let msg = &v["assistant_message"];
        if msg["status"] != "completed" {
            bail!(
                "question {question:?}: assistant message {}: {}",
                msg["status"],
                msg["error_message"]
            );
        }
        let sources = msg["sources"]
            .as_array()
            .map(|a| a.iter().filter_map(source).collect())
            .unwrap_or_default();
        Ok(Reply {
            content: msg["content"].as_str().unwrap_or_default().to_string(),
            sources,
            latency,
        })
    }

    /// Sends the request built by `make` (again after a 429 or 503); the
    /// JSON body of a 2xx answer.
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder) -> anyhow::Result<Value> {
        for _ in 0..RETRIES {
            let r = make().bearer_auth(&self.token).send().await?;
            let status = r.status();
            if status.is_success() {
                return Ok(r.json().await?);
            }
            if !matches!(status.as_u16(), 429 | 503) {
                bail!("status {status}: {}", r.text().await.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("still refused (429/503) after {RETRIES} tries")
    }
}

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no id in {v}"))
}

fn source(v: &Value) -> Option<Source> {
    Some(Source {
        document_id: v["document_id"].as_str()?.parse().ok()?,
        chunk_index: i32::try_from(v["chunk_index"].as_i64()?).ok()?,
    })
}
