//! [`Embedder`]: the local model or a remote endpoint behind one `embed`,
//! with the permits that bound the local model's CPU work.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::error::EmbedError;
use super::{local, remote};

/// Texts per blocking call of the local model: short enough that a
/// question waiting for a permit gets one between two batches.
const LOCAL_BATCH: usize = 16;

/// A configured embedder; cheap to clone.
#[derive(Clone)]
pub enum Embedder {
    Local(Local),
    Remote(remote::Client),
}

/// The local model and the permits that bound its concurrent CPU work.
#[derive(Clone)]
pub struct Local {
    model: Arc<local::LocalModel>,
    permits: Arc<Semaphore>,
}

impl Embedder {
    /// The local model, run at most `cpus` batches at once (tokio's
    /// semaphore is fair: waiters are served in order).
    pub fn local(model: local::LocalModel, cpus: usize) -> Embedder {
        Embedder::Local(Local {
            model: Arc::new(model),
            permits: Arc::new(Semaphore::new(cpus.max(1))),
        })
    }

    /// The model id stored beside each vector: vectors of two models never
    /// mix.
    pub fn id(&self) -> &str {
        match self {
            Embedder::Local(l) => l.model.id(),
            Embedder::Remote(r) => r.id(),
        }
    }

    /// Vector length; a remote endpoint's is known after its first answer.
    pub fn dims(&self) -> Option<usize> {
        match self {
            Embedder::Local(l) => Some(l.model.dims()),
            Embedder::Remote(r) => r.dims(),
        }
    }

    /// One normalised vector per text, in order.
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let started = std::time::Instant::now();
        let out = match self {
            Embedder::Remote(r) => r.embed(texts).await,
            Embedder::Local(l) => l.embed(texts).await,
        };
        let kind = match self {
            Embedder::Local(_) => "local",
            Embedder::Remote(_) => "remote",
        };
        metrics::histogram!("ragctl_embed_seconds", "embedder" => kind)
            .record(started.elapsed().as_secs_f64());
        out
    }
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedder({})", self.id())
    }
}

impl Local {
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(LOCAL_BATCH) {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| EmbedError::Model(e.to_string()))?;
            let model = self.model.clone();
            let owned: Vec<String> = batch.iter().map(|s| s.to_string()).collect();
            let vecs = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                model.embed(&refs)
            })
            .await
            .map_err(|e| EmbedError::Model(e.to_string()))??;
            out.extend(vecs);
        }
        Ok(out)
    }
}
