//! Database access: connection URLs and TLS, the pool, migrations, the
//! embedded local cluster, the LISTEN connection, and the queries of each
//! domain table.

pub mod chat;
pub mod documents;
pub mod embedded;
pub mod jobs;
pub mod listener;
mod tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// Session-level advisory lock key that serialises concurrent migrators
/// (serve and its workers start at the same moment).
const MIGRATION_LOCK: i64 = 0x7261_6763_746c; // "ragctl"

pub type TlsConnector = tokio_postgres_rustls::MakeRustlsConnect;
pub type Connection =
    tokio_postgres::Connection<Socket, <TlsConnector as MakeTlsConnect<Socket>>::Stream>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Query(error_text(&e))
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Pool(e.to_string())
    }
}

/// A parsed URL with the TLS connector it asks for.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: TlsConnector,
    /// host:port/db, with no credentials, for messages.
    pub display: String,
}

/// Parses a PostgreSQL URL. `sslmode=verify-full`/`verify-ca`, which
/// tokio-postgres does not know, are handled here with rustls.
pub fn target(url: &str, application_name: &str) -> Result<Target, DbError> {
    let (url, mode) = tls::strip_sslmode(url).map_err(DbError::Url)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
    config.ssl_mode(mode.ssl_mode());
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    config.connect_timeout(Duration::from_secs(10));
    // Dead peers are found by the kernel even when no query is running.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    let display = describe(&config);
    Ok(Target {
        config,
        tls: tls::connector(mode),
        display,
    })
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
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

/// One dedicated connection (not from the pool). The caller drives the
/// returned `Connection`.
pub async fn connect(url: &str, application_name: &str) -> Result<(Client, Connection), DbError> {
    let t = target(url, application_name)?;
    t.config.connect(t.tls).await.map_err(|e| DbError::Connect {
        target: t.display.clone(),
        detail: error_text(&e),
    })
}

/// Builds the pool and checks that one connection can be made, so that a
/// wrong URL fails at start-up with a clear message.
pub async fn pool(url: &str, size: usize, application_name: &str) -> Result<Pool, DbError> {
    let t = target(url, application_name)?;
    let display = t.display.clone();
    let mgr = Manager::from_config(
        t.config,
        t.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))?;
    let _probe = pool.get().await.map_err(|e| DbError::Connect {
        target: display,
        detail: pool_error_text(&e),
    })?;
    Ok(pool)
}

fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => error_text(pg),
        other => other.to_string(),
    }
}

/// Runs the embedded migrations under an advisory lock.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    let mut obj = pool.get().await?;
    let client: &mut Client = &mut obj;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded_migrations::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = result.map_err(|e| DbError::Migrate(e.to_string()))?;
    Ok(report.applied_migrations().len())
}
