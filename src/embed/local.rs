//! all-MiniLM-L6-v2 (or another sentence-transformers BERT with mean
//! pooling) on the CPU through candle: `files` reads and checks the model
//! directory, `pool` runs a batch and pools it.

mod files;
mod pool;

use std::path::Path;

use tokenizers::Encoding;

use super::error::EmbedError;

/// Texts per forward pass. One: on this CPU backend a batch gains nothing
/// from sharing matrix products and pays for padding, so batch 1 measured
/// fastest (17.6 chunks/s against 14.8 for 32, two threads; docs/benchmarks.md
/// "Embedding (#19)"). Texts are still sorted by token count, for larger
/// batches.
pub const BATCH: usize = 1;

/// A loaded sentence-transformers model directory.
pub struct LocalModel {
    model: candle_transformers::models::bert::BertModel,
    tokenizer: tokenizers::Tokenizer,
    dims: usize,
    max_seq: usize,
    id: String,
}

impl LocalModel {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `dir` (and honours `sentence_bert_config.json`'s `max_seq_length`);
    /// a missing or corrupt file is a `Config` error naming
    /// `--embed-model / RAG_EMBED_MODEL` and the file.
    pub fn load(dir: &Path) -> Result<LocalModel, EmbedError> {
        let loaded = files::load(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(LocalModel {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            dims: loaded.dims,
            max_seq: loaded.max_seq,
            id: format!("{name}:{}", loaded.weights_hash),
        })
    }

    /// Identifies the model and its weights; stored beside each vector.
    /// `<directory name>:<first 12 hex digits of sha256(model.safetensors)>`,
    /// e.g. `all-MiniLM-L6-v2:53aa51172d14`: other weights, another id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Vector length (384 for all-MiniLM-L6-v2).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Tokens per text; longer texts are truncated (256 for all-MiniLM-L6-v2).
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Mean-pooled, L2-normalised vectors, one per text, in order. Blocking
    /// (CPU-bound): call from `spawn_blocking`.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Model(format!("tokenizer: {e}")))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut vectors = vec![Vec::new(); encodings.len()];
        for slice in order.chunks(BATCH) {
            let batch: Vec<&Encoding> = slice.iter().map(|&i| &encodings[i]).collect();
            let out = pool::embed_batch(&self.model, &batch)
                .map_err(|e| EmbedError::Model(e.to_string()))?;
            for (&i, v) in slice.iter().zip(out) {
                vectors[i] = v;
            }
        }
        Ok(vectors)
    }
}
