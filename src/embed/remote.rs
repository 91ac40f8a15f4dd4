//! An OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Ollama, TEI,
//! vLLM): batched requests with a timeout and an optional bearer key; the
//! answer is checked (count, dimensions, finite) and L2-normalised.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::error::EmbedError;

/// Texts per request: endpoints cap their batch (OpenAI 2048, TEI 32 by
/// default); small batches also keep one request short.
pub const BATCH: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    name: String,
    key: Option<String>,
    id: String,
    /// 0 until the first answer (or `--embed-dims`) fixes it.
    dims: Arc<AtomicUsize>,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl Client {
    /// Checks the URL (http or https, with a host); does not connect: the
    /// endpoint may be down at start, which is a runtime condition.
    pub fn new(
        url: &str,
        name: &str,
        key: Option<String>,
        dims: Option<usize>,
    ) -> Result<Client, EmbedError> {
        let bad = |reason: String| EmbedError::Config {
            flag: "--embed-url",
            var: "RAG_EMBED_URL",
            reason,
        };
        let url = reqwest::Url::parse(url.trim())
            .map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("{url}: the scheme must be http or https")));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad(format!("{url}: no host")))?;
        let id = match url.port() {
            Some(p) => format!("{host}:{p}/{name}"),
            None => format!("{host}/{name}"),
        };
        // reqwest is built without a default TLS provider; `main` installs
        // ring, a library user (tests) may not have: install it if unset.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Client {
            http,
            url,
            name: name.to_string(),
            key,
            id,
            dims: Arc::new(AtomicUsize::new(dims.unwrap_or(0))),
        })
    }

    /// `host[:port]/name`: vectors of another endpoint or model never mix.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Known once the endpoint answered (or set by `--embed-dims`).
    pub fn dims(&self) -> Option<usize> {
        Some(self.dims.load(Ordering::Relaxed)).filter(|&d| d > 0)
    }

    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            out.extend(self.embed_batch(batch).await?);
        }
        Ok(out)
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let remote = |m: String| EmbedError::Remote(format!("{}: {m}", self.url));
        let mut req = self
            .http
            .post(self.url.clone())
            .json(&json!({"model": self.name, "input": texts}));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| remote(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(remote(format!("HTTP {status}: {body}")));
        }
        let answer: Answer = resp
            .json()
            .await
            .map_err(|e| remote(format!("not an embeddings answer: {e}")))?;
        self.check(texts.len(), answer).map_err(remote)
    }

    /// In input order (by `index` when given), each normalised.
    fn check(&self, wanted: usize, mut answer: Answer) -> Result<Vec<Vec<f32>>, String> {
        if answer.data.len() != wanted {
            return Err(format!("{} vectors for {wanted} texts", answer.data.len()));
        }
        answer.data.sort_by_key(|i| i.index.unwrap_or(0));
        let mut out = Vec::with_capacity(wanted);
        for item in answer.data {
            let mut v = item.embedding;
            self.check_dims(v.len())?;
            if !normalise(&mut v) {
                return Err("a vector is zero or not finite".into());
            }
            out.push(v);
        }
        Ok(out)
    }

    fn check_dims(&self, got: usize) -> Result<(), String> {
        if got == 0 {
            return Err("an empty vector".into());
        }
        match self
            .dims
            .compare_exchange(0, got, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Ok(()),
            Err(known) if known == got => Ok(()),
            Err(known) => Err(format!("a vector of {got} dimensions, expected {known}")),
        }
    }
}

/// L2-normalises `v` in place; `false` if it cannot be (zero, NaN, inf).
pub fn normalise(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_named() {
        for bad in ["not a url", "ftp://host/v1/embeddings", "unix:/tmp/sock"] {
            let e = Client::new(bad, "m", None, None)
                .err()
                .expect(bad)
                .to_string();
            assert!(e.contains("--embed-url / RAG_EMBED_URL"), "{e}");
        }
        let c = Client::new("http://127.0.0.1:8080/v1/embeddings", "mini", None, None).unwrap();
        assert_eq!(c.id(), "127.0.0.1:8080/mini");
        assert_eq!(c.dims(), None);
    }

    #[test]
    fn answers_are_checked_ordered_and_normalised() {
        let c = Client::new("http://h/v1/embeddings", "m", None, None).unwrap();
        let item = |index, embedding| Item {
            index: Some(index),
            embedding,
        };
        let two = Answer {
            data: vec![item(1, vec![0.0, 2.0]), item(0, vec![3.0, 4.0])],
        };
        let out = c.check(2, two).unwrap();
        assert_eq!(out, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert_eq!(c.dims(), Some(2));
        let short = Answer {
            data: vec![item(0, vec![1.0, 0.0])],
        };
        assert!(c.check(2, short).unwrap_err().contains("1 vectors for 2"));
        let wide = Answer {
            data: vec![item(0, vec![1.0, 0.0, 0.0])],
        };
        assert!(c.check(1, wide).unwrap_err().contains("expected 2"));
        let zero = Answer {
            data: vec![item(0, vec![0.0, 0.0])],
        };
        assert!(c.check(1, zero).is_err());
    }
}
