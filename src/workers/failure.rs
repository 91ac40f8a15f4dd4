//! Why a job attempt failed, and the one place that decides whether
//! another attempt could end differently. A deterministic failure (the
//! file is refused, hit a parser limit, has no text) fails the job at once;
//! a transient one (the database, a lapsed lease, a parser process killed
//! from outside) goes through the retries with backoff.

use crate::db::DbError;
use crate::rag::extract::ExtractError;
use crate::rag::sandbox::SandboxError;

/// The error recorded for an attempt whose lease ran out.
pub const LEASE_LAPSED: &str =
    "the worker running this attempt stopped before finishing (its lease expired)";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database unavailable: {0}")]
    Database(#[from] DbError),
    /// The attempt's worker stopped before finishing (its lease expired).
    #[error("{}", LEASE_LAPSED)]
    LeaseLapsed,
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Parser(#[from] SandboxError),
    /// The document's own state makes the job impossible (deleted, no text).
    #[error("{0}")]
    Document(String),
    /// The chunker panicked on this text.
    #[error("chunker crashed: {0}")]
    Chunker(String),
    /// The embedder failed (endpoint down, model error): worth a retry.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
}

impl JobError {
    /// Whether a retry could change the outcome.
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::Database(_) | JobError::LeaseLapsed | JobError::Embed(_) => true,
            JobError::Parser(p) => matches!(
                p,
                SandboxError::Spawn(_) | SandboxError::Killed(_) | SandboxError::Unexpected(_)
            ),
            JobError::Extract(_) | JobError::Document(_) | JobError::Chunker(_) => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for JobError {
    fn from(e: deadpool_postgres::PoolError) -> JobError {
        JobError::Database(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_and_limit_failures_are_final() {
        let final_ones = [
            JobError::Extract(ExtractError::InvalidUtf8 { offset: 3 }),
            JobError::Extract(ExtractError::Empty("document contains no text".into())),
            JobError::Extract(ExtractError::Corrupt("bad xref".into())),
            JobError::Extract(ExtractError::Unsupported("x".into())),
            JobError::Parser(SandboxError::Refused("corrupt PDF: bad xref".into())),
            JobError::Parser(SandboxError::Memory(512 << 20)),
            JobError::Parser(SandboxError::Cpu(2, "1.1 KB PDF".into())),
            JobError::Parser(SandboxError::Wall(10, "1.1 KB PDF".into())),
            JobError::Parser(SandboxError::PdfRecursion),
            JobError::Parser(SandboxError::TextTooLarge(32 << 20)),
            JobError::Parser(SandboxError::Crashed("SIGSEGV".into())),
            JobError::Document("document no longer exists".into()),
            JobError::Chunker("boom".into()),
        ];
        for e in final_ones {
            assert!(!e.is_transient(), "{e:?} should not be retried");
        }
    }

    #[test]
    fn infrastructure_failures_are_retried() {
        let transient = [
            JobError::Database(DbError::Pool("connection refused".into())),
            JobError::LeaseLapsed,
            JobError::Parser(SandboxError::Spawn(std::io::Error::other("EAGAIN"))),
            JobError::Parser(SandboxError::Killed("SIGKILL".into())),
            JobError::Parser(SandboxError::Unexpected("exit code 2".into())),
        ];
        for e in transient {
            assert!(e.is_transient(), "{e:?} should be retried");
        }
        assert_eq!(JobError::LeaseLapsed.to_string(), super::LEASE_LAPSED);
    }
}
