//! Database access: connection URLs and TLS, the pool, migrations, the
//! embedded local cluster, the LISTEN connection, and the queries of each
//! domain table.

pub mod blobs;
pub mod changes;
pub mod chat;
pub mod chunks;
pub mod documents;
pub mod embedded;
mod error;
mod gap;
pub mod jobs;
pub mod lexical;
pub mod listener;
pub mod open;
pub mod page;
pub mod queue;
mod queue_sql;
pub mod status;
pub mod texts;
mod tls;
pub mod uploads;
pub mod vectors;

pub use error::{DbError, error_text};
use error::{connect_is_transient, pool_error_is_transient, pool_error_text};
pub use tls::TlsConnector;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};

/// Every row of `sql`, each mapped by `from_row`: the shape of the list
/// queries of each table.
pub(crate) async fn query_all<T>(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    from_row: fn(&tokio_postgres::Row) -> T,
) -> Result<Vec<T>, DbError> {
    let rows = client.query(sql, params).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// A read-only REPEATABLE READ transaction: every query in it reads one
/// snapshot, so numbers read one after another agree.
pub(crate) async fn read_snapshot(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, DbError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    Ok(tx)
}

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// Session-level advisory lock key that serialises concurrent migrators
/// (serve and its workers start at the same moment).
const MIGRATION_LOCK: i64 = 0x7261_6763_746c; // "ragctl"

pub type Connection =
    tokio_postgres::Connection<Socket, <TlsConnector as MakeTlsConnect<Socket>>::Stream>;

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

/// One dedicated connection (not from the pool). The caller drives the
/// returned `Connection`.
pub async fn connect(url: &str, application_name: &str) -> Result<(Client, Connection), DbError> {
    let t = target(url, application_name)?;
    t.config.connect(t.tls).await.map_err(|e| DbError::Connect {
        target: t.display.clone(),
        detail: error_text(&e),
        transient: connect_is_transient(&e),
    })
}

/// Builds the pool and checks that one connection can be made, so that a
/// wrong URL fails at start-up with a clear message.
pub async fn pool(url: &str, size: usize, application_name: &str) -> Result<Pool, DbError> {
    pool_with_timeout(url, size, application_name, Duration::ZERO).await
}

/// Like [`pool`], with `statement_timeout` set on every connection it opens
/// (zero: the server's default). The API's pool uses it so that no request
/// query can hold a connection for long.
pub async fn pool_with_timeout(
    url: &str,
    size: usize,
    application_name: &str,
    statement_timeout: Duration,
) -> Result<Pool, DbError> {
    let t = target(url, application_name)?;
    let display = t.display.clone();
    let mgr = Manager::from_config(
        t.config,
        t.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1);
    if !statement_timeout.is_zero() {
        // A SET rather than a startup option: poolers (PgBouncer) refuse
        // unknown startup parameters.
        let set = format!("SET statement_timeout = {}", statement_timeout.as_millis());
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            let set = set.clone();
            Box::pin(async move { client.batch_execute(&set).await.map_err(HookError::Backend) })
        }));
    }
    let pool = builder.build().map_err(|e| DbError::Pool(e.to_string()))?;
    let _probe = pool.get().await.map_err(|e| DbError::Connect {
        target: display,
        detail: pool_error_text(&e),
        transient: pool_error_is_transient(&e),
    })?;
    Ok(pool)
}

/// Sends cancel requests for queries of the API's pool, over the same TLS
/// as its connections.
#[derive(Clone)]
pub struct Canceller {
    tls: TlsConnector,
}

/// What to do with the connection once an abandoned query is cancelled.
pub type Aftermath = Box<
    dyn FnOnce(&deadpool_postgres::Object) -> futures_util::future::BoxFuture<'_, ()>
        + Send
        + 'static,
>;

impl Canceller {
    pub fn new(url: &str) -> Result<Canceller, DbError> {
        Ok(Canceller {
            tls: target(url, "ragctl-cancel")?.tls,
        })
    }

    /// Holds `client` while a query runs; if the guard is dropped before
    /// [`CancelOnDrop::finish`] (the request was abandoned), the query is
    /// cancelled on the server: dropping a tokio-postgres future does not
    /// stop the backend, which would go on holding the connection.
    pub fn guard(&self, client: deadpool_postgres::Object) -> CancelOnDrop {
        CancelOnDrop {
            client: Some(client),
            tls: self.tls.clone(),
            aftermath: None,
        }
    }
}

pub struct CancelOnDrop {
    client: Option<deadpool_postgres::Object>,
    tls: TlsConnector,
    aftermath: Option<Aftermath>,
}

impl CancelOnDrop {
    /// Runs after the cancel, on the same connection, if the guard is dropped.
    pub fn on_abandon(&mut self, f: Aftermath) {
        self.aftermath = Some(f);
    }

    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("present until finish or drop")
    }

    /// The query is over: the connection back, nothing cancelled.
    pub fn finish(mut self) -> deadpool_postgres::Object {
        self.client.take().expect("present until finish or drop")
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        metrics::counter!("ragctl_queries_cancelled_total").increment(1);
        let (tls, aftermath) = (self.tls.clone(), self.aftermath.take());
        rt.spawn(async move {
            if let Err(e) = client.cancel_token().cancel_query(tls).await {
                tracing::warn!(error = %error_text(&e), "could not cancel an abandoned query");
            }
            // Queued behind the cancelled query: once it answers, the
            // connection is idle and the cancel can no longer hit a later
            // query. If anything is off, the connection is not reused.
            if client.simple_query("SELECT 1").await.is_err() {
                let _ = deadpool_postgres::Object::take(client);
                return;
            }
            if let Some(f) = aftermath {
                f(&client).await;
            }
        });
    }
}

/// Runs the embedded migrations under an advisory lock.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    let mut obj = pool.get().await?;
    let client: &mut Client = &mut obj;
    // The API's pool has a statement_timeout; waiting for another migrator
    // or migrating a big table must not be cut short by it.
    let timeout: String = client
        .query_one("SHOW statement_timeout", &[])
        .await?
        .get(0);
    client.batch_execute("SET statement_timeout = 0").await?;
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
    client
        .execute(
            "SELECT set_config('statement_timeout', $1, false)",
            &[&timeout],
        )
        .await?;
    let report = result.map_err(error::migrate_error)?;
    Ok(report.applied_migrations().len())
}
