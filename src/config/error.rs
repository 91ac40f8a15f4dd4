//! Why a setting could not be resolved; names both the flag and the
//! variable. A leaf but for the state file's error.

use super::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no database configured: pass --database-url or set DATABASE_URL (or run `ragctl serve` here first, which starts an embedded database and records it in {state})"
    )]
    NoDatabase { state: String },
    #[error(
        "no JWT secret configured: pass --jwt-secret or set RAG_JWT_SECRET (or SUPABASE_JWT_SECRET), or run `ragctl serve` here first"
    )]
    NoJwtSecret,
    #[error("invalid {flag} / {var}: {problem}")]
    Invalid {
        flag: &'static str,
        var: &'static str,
        problem: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}
