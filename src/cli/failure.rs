//! The error the edge turns into an exit code. A leaf.

/// An error with the exit code it should produce.
#[derive(Debug, thiserror::Error)]
#[error("{source:#}")]
pub struct Failure {
    pub code: u8,
    #[source]
    pub source: anyhow::Error,
}

impl Failure {
    pub fn check(source: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 1,
            source: source.into(),
        }
    }
}
