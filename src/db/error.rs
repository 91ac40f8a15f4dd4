//! The database error type and the server's message for a PostgreSQL
//! error. A leaf: everything that talks to PostgreSQL (db, events, the CLI
//! tools) uses it, and it imports nothing from the crate.

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect {
        target: String,
        detail: String,
        /// Waiting may mend it (`connect_is_transient`).
        transient: bool,
    },
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    /// The migrations' connection was lost while they ran (a restart):
    /// refinery commits each migration with its history row, so trying
    /// again resumes where it stopped.
    #[error("migration interrupted, its connection lost: {0}")]
    MigrateLost(String),
    /// The query failed; the error keeps its SQLSTATE ([`DbError::code`]),
    /// which the API maps to a status.
    #[error("database error: {}", error_text(.0))]
    Query(#[source] tokio_postgres::Error),
    /// The statement ran longer than the connection's `statement_timeout`.
    #[error("query timed out: {}", error_text(.0))]
    Timeout(#[source] tokio_postgres::Error),
    /// A value the database cannot take, refused before it is sent.
    #[error("{0}")]
    Input(String),
}

impl DbError {
    /// The SQLSTATE of a failed query, if the server sent one.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Query(e) | DbError::Timeout(e) => e.code(),
            _ => None,
        }
    }
}

impl DbError {
    /// Whether waiting can mend it: PostgreSQL unreachable, starting up or
    /// restarting, the database not created yet, a connection lost. Not a
    /// bad URL, refused credentials (SQLSTATE class 28: a wrong password
    /// stays wrong) nor a failed migration or query.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Connect { transient, .. } => *transient,
            DbError::Pool(_) | DbError::MigrateLost(_) => true,
            DbError::Query(e) => connection_lost(e),
            _ => false,
        }
    }
}

/// Whether a failed connect may succeed later: not when the server
/// refused the credentials (SQLSTATE class 28: a wrong password stays
/// wrong) nor when TLS was refused (a certificate that does not verify, a
/// server without TLS under `sslmode=require`); yes when the server is
/// unreachable, starting up, or has no such database yet.
pub(super) fn connect_is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return !code.code().starts_with("28");
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        let io_inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        let rustls = io_inner.is_some_and(|i| i.is::<rustls::Error>());
        if rustls || c.is::<rustls::Error>() || c.to_string() == "server does not support TLS" {
            return false;
        }
        cause = c.source();
    }
    true
}

/// A refinery failure as a `DbError`: `MigrateLost` when its database
/// error is a lost connection, else `Migrate`.
pub(super) fn migrate_error(e: refinery::Error) -> DbError {
    let lost = match e.kind() {
        refinery::error::Kind::Connection(_, source) => source
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(connection_lost),
        _ => false,
    };
    match lost {
        true => DbError::MigrateLost(e.to_string()),
        false => DbError::Migrate(e.to_string()),
    }
}

/// A query that failed because its connection did: closed, I/O, or the
/// server's connection-exception and shutdown codes (08xxx, 57P01-57P03).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        // 57014 is also a cancel request; only the timeout says so.
        if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
            && error_text(&e).contains("statement timeout")
        {
            DbError::Timeout(e)
        } else {
            DbError::Query(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Pool(e.to_string())
    }
}

/// The server's message for a database error, which the Display of
/// `tokio_postgres::Error` hides behind "db error".
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// `connect_is_transient` for a pool's failure to connect (a timeout is).
pub(super) fn pool_error_is_transient(e: &deadpool_postgres::PoolError) -> bool {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => connect_is_transient(pg),
        _ => true,
    }
}

pub(super) fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => error_text(pg),
        other => other.to_string(),
    }
}
