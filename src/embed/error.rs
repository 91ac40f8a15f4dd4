//! Why an embedding could not be made.

/// `Config` names the flag and its variable; it is raised at start.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{flag} / {var}: {reason}")]
    Config {
        flag: &'static str,
        var: &'static str,
        reason: String,
    },
    #[error("the embedding model failed: {0}")]
    Model(String),
    #[error("the embeddings endpoint failed: {0}")]
    Remote(String),
}
