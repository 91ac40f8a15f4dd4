//! A scratch database: created under a fresh name on a server, dropped
//! (connections included) when done.

use super::hex::random_hex;
use crate::db::listener::quote_ident;

/// `url` with its database name replaced by `db` (query string kept).
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let mut out = match base[scheme_end..].find('/') {
        Some(i) => format!("{}/{db}", &base[..scheme_end + i]),
        None => format!("{base}/{db}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database created for one run. Call [`ScratchDb::drop_now`] to drop
/// it; the type has no async `Drop`.
#[derive(Debug, Clone)]
pub struct ScratchDb {
    pub name: String,
    pub url: String,
    pub admin_url: String,
}

impl ScratchDb {
    /// Creates `{prefix}_{random}` on the server of `admin_url`, owned by
    /// `owner` if given.
    pub async fn create(
        admin_url: &str,
        prefix: &str,
        owner: Option<&str>,
    ) -> anyhow::Result<ScratchDb> {
        let name = format!("{prefix}_{}", random_hex(8));
        let owner = owner
            .map(|r| format!(" OWNER {}", quote_ident(r)))
            .unwrap_or_default();
        let sql = format!("CREATE DATABASE {}{owner}", quote_ident(&name));
        admin_sql(admin_url, &sql).await?;
        Ok(ScratchDb {
            url: with_db(admin_url, &name),
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// Drops the database, closing its connections.
    pub async fn drop_now(&self) -> anyhow::Result<()> {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        );
        admin_sql(&self.admin_url, &sql).await
    }
}

/// Runs `sql` on a connection of its own to `url`.
pub async fn admin_sql(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, conn) = crate::db::connect(url, "ragctl-admin").await?;
    let task = tokio::spawn(conn);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| anyhow::anyhow!(crate::db::error_text(&e)));
    drop(client);
    let _ = task.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_db("postgres://u@h:5432/postgres?sslmode=disable", "bench_1"),
            "postgres://u@h:5432/bench_1?sslmode=disable"
        );
        assert_eq!(with_db("postgres://u@h", "b"), "postgres://u@h/b");
        assert_eq!(with_db("postgres://u@h/", "b"), "postgres://u@h/b");
    }
}
