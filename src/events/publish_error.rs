//! Why a publish failed, with stable metric labels: `wire` (too large)
//! and `publish` (pool, notify, timeout) both return it. A leaf.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("envelope is {0} bytes, over the 1 MiB limit")]
    TooLarge(usize),
    #[error("no database connection for publishing: {0}")]
    Pool(String),
    #[error("pg_notify failed: {0}")]
    Notify(String),
    #[error("publish timed out after {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    pub fn label(&self) -> &'static str {
        match self {
            PublishError::TooLarge(_) => "too_large",
            PublishError::Pool(_) => "pool",
            PublishError::Notify(_) => "notify",
            PublishError::Timeout(_) => "timeout",
        }
    }
}
