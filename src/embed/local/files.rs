//! Reading a sentence-transformers model directory: every file is checked
//! at load, so a missing or corrupt one fails at start, naming the flag and
//! the file, instead of at the first chunk an ingest worker embeds.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationParams};

use crate::embed::error::EmbedError;

/// sentence-transformers' own default when `sentence_bert_config.json`
/// does not say (all-MiniLM-L6-v2 says 256, less than the 512 positions).
const DEFAULT_MAX_SEQ: usize = 256;
/// Below this, truncation leaves no room for text after [CLS] and [SEP].
const MIN_MAX_SEQ: usize = 8;

/// What `load` builds from the directory.
pub(super) struct Loaded {
    pub model: BertModel,
    pub tokenizer: Tokenizer,
    pub dims: usize,
    pub max_seq: usize,
    /// First 12 hex digits of the sha256 of `model.safetensors`.
    pub weights_hash: String,
}

pub(super) fn config_error(reason: String) -> EmbedError {
    EmbedError::Config {
        flag: "--embed-model",
        var: "RAG_EMBED_MODEL",
        reason,
    }
}

/// `dir/name`, or an error naming it when it is not a readable file.
fn file(dir: &Path, name: &str) -> Result<PathBuf, EmbedError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(config_error(format!("{}: missing file", path.display())))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|e| config_error(format!("{}: {e}", path.display())))
}

fn json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EmbedError> {
    serde_json::from_slice(&read(path)?)
        .map_err(|e| config_error(format!("{}: not a valid model file: {e}", path.display())))
}

pub(super) fn load(dir: &Path) -> Result<Loaded, EmbedError> {
    if !dir.is_dir() {
        return Err(config_error(format!(
            "{}: no such model directory",
            dir.display()
        )));
    }
    let config: Config = json(&file(dir, "config.json")?)?;
    check_pooling(dir)?;
    let max_seq = max_seq_length(dir, &config)?;
    let tokenizer = tokenizer(&file(dir, "tokenizer.json")?, max_seq, &config)?;
    let weights_path = file(dir, "model.safetensors")?;
    let weights = read(&weights_path)?;
    let weights_hash = hex12(&Sha256::digest(&weights));
    let model = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
        .and_then(|vb| BertModel::load(vb, &config))
        .map_err(|e| {
            config_error(format!(
                "{}: corrupt weights or not the model config.json describes: {e}",
                weights_path.display()
            ))
        })?;
    Ok(Loaded {
        model,
        tokenizer,
        dims: config.hidden_size,
        max_seq,
        weights_hash,
    })
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// `sentence_bert_config.json`'s `max_seq_length` (optional file), bounded
/// by the positions the model has.
fn max_seq_length(dir: &Path, config: &Config) -> Result<usize, EmbedError> {
    let path = dir.join("sentence_bert_config.json");
    let wanted = if path.is_file() {
        json::<SentenceBertConfig>(&path)?
            .max_seq_length
            .unwrap_or(DEFAULT_MAX_SEQ)
    } else {
        DEFAULT_MAX_SEQ
    };
    if wanted < MIN_MAX_SEQ {
        return Err(config_error(format!(
            "{}: max_seq_length {wanted} is below {MIN_MAX_SEQ}",
            path.display()
        )));
    }
    Ok(wanted.min(config.max_position_embeddings))
}

#[derive(Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
}

/// Only mean pooling is implemented; a model that asks for another would
/// give vectors its authors did not intend.
fn check_pooling(dir: &Path) -> Result<(), EmbedError> {
    let path = dir.join("1_Pooling/config.json");
    if path.is_file() && !json::<PoolingConfig>(&path)?.pooling_mode_mean_tokens {
        return Err(config_error(format!(
            "{}: only mean pooling (pooling_mode_mean_tokens) is supported",
            path.display()
        )));
    }
    Ok(())
}

/// The tokenizer with sentence-transformers' truncation and no padding of
/// its own (tokenizer.json asks for a fixed 128; batches pad to their
/// longest text instead).
fn tokenizer(path: &Path, max_seq: usize, config: &Config) -> Result<Tokenizer, EmbedError> {
    let bad = |e: &dyn std::fmt::Display| {
        config_error(format!("{}: not a valid tokenizer: {e}", path.display()))
    };
    let mut tokenizer = Tokenizer::from_bytes(read(path)?).map_err(|e| bad(&e))?;
    let truncation = TruncationParams {
        max_length: max_seq,
        ..Default::default()
    };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(|e| bad(&e))?;
    tokenizer.with_padding(None);
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > config.vocab_size {
        return Err(bad(&format!(
            "{vocab} tokens, but config.json's vocab_size is {}",
            config.vocab_size
        )));
    }
    Ok(tokenizer)
}

fn hex12(digest: &[u8]) -> String {
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
