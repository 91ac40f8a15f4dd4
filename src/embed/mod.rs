//! Sentence embeddings: a local model (`local`, all-MiniLM-L6-v2 through
//! candle) or an OpenAI-compatible `/v1/embeddings` endpoint (`remote`);
//! vectors are L2-normalised, so a dot product is the cosine.
//!
//! [`Embedder`] is what the ingest worker (chunks, backfill) and the API
//! (questions) hold; `cache` and `dense` score a user's stored vectors.

pub mod cache;
pub mod dense;
mod embedder;
mod error;
pub mod local;
mod opts;
pub mod remote;

pub use cache::VectorCache;
pub use embedder::{Embedder, Local};
pub use error::EmbedError;
pub use opts::EmbedOpts;
