//! all-MiniLM-L6-v2 on the CPU through candle (placeholder: the contract
//! the model helper fills in).

use std::path::Path;

use super::EmbedError;

/// A loaded sentence-transformers model directory.
pub struct LocalModel {
    _private: (),
}

impl LocalModel {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `dir`; a missing or corrupt file is a `Config` error naming
    /// `--embed-model / RAG_EMBED_MODEL`.
    pub fn load(dir: &Path) -> Result<LocalModel, EmbedError> {
        Err(EmbedError::Config {
            flag: "--embed-model",
            var: "RAG_EMBED_MODEL",
            reason: format!("{}: the local model is not built yet", dir.display()),
        })
    }

    /// Identifies the model and its weights; stored beside each vector.
    pub fn id(&self) -> &str {
        unreachable!("load never succeeds in the placeholder")
    }

    /// Vector length (384 for all-MiniLM-L6-v2).
    pub fn dims(&self) -> usize {
        unreachable!("load never succeeds in the placeholder")
    }

    /// Mean-pooled, L2-normalised vectors, one per text, in order. Blocking
    /// (CPU-bound): call from `spawn_blocking`.
    pub fn embed(&self, _texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        unreachable!("load never succeeds in the placeholder")
    }
}
