//! Sentence embeddings: a local model (`local`, all-MiniLM-L6-v2 through
//! candle) or an OpenAI-compatible `/v1/embeddings` endpoint; vectors are
//! L2-normalised, so a dot product is the cosine.

mod error;
pub mod local;

pub use error::EmbedError;
