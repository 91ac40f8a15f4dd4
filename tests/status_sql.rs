//! The status enums of `db::status` against the real schema: each value
//! round-trips through a TEXT column, an unknown one is refused with its
//! name, and each enum lists exactly the values of its column's CHECK.

mod common;

use std::collections::BTreeSet;

use common::*;
use ragctl::db::status::{DocumentStatus, JobKind, JobStatus, MessageRole, MessageStatus};
use tokio_postgres::types::{FromSql, ToSql};

async fn client(db: &TestDb) -> tokio_postgres::Client {
    let (client, conn) = ragctl::db::connect(&db.url, "ragctl-test").await.unwrap();
    tokio::spawn(conn);
    client
}

async fn round_trip<T>(c: &tokio_postgres::Client, all: &[T])
where
    T: ToSql + Sync + for<'a> FromSql<'a> + PartialEq + std::fmt::Debug,
{
    for v in all {
        let back: T = c.query_one("SELECT $1::text", &[v]).await.unwrap().get(0);
        assert_eq!(&back, v);
    }
}

/// The values a CHECK (col IN (...)) of `table` allows.
async fn check_values(c: &tokio_postgres::Client, table: &str, column: &str) -> BTreeSet<String> {
    let rows = c
        .query(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1::text::regclass AND contype = 'c'",
            &[&table],
        )
        .await
        .unwrap();
    let def: String = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .find(|d| d.contains(&format!("({column} = ANY")))
        .unwrap_or_else(|| panic!("no CHECK on {table}.{column}"));
    // CHECK ((status = ANY (ARRAY['uploaded'::text, ...]))): the quoted parts.
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn names(n: &[&str]) -> BTreeSet<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn status_enums_match_the_schema() {
    let db = TestDb::new();
    let pool = ragctl::db::pool(&db.url, 1, "ragctl-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    let c = client(&db).await;
    round_trip(&c, DocumentStatus::ALL).await;
    round_trip(&c, JobStatus::ALL).await;
    round_trip(&c, JobKind::ALL).await;
    round_trip(&c, MessageStatus::ALL).await;
    round_trip(&c, MessageRole::ALL).await;

    let cases: [(&str, &str, &[&str]); 5] = [
        ("documents", "status", DocumentStatus::NAMES),
        ("jobs", "status", JobStatus::NAMES),
        ("jobs", "kind", JobKind::NAMES),
        ("messages", "status", MessageStatus::NAMES),
        ("messages", "role", MessageRole::NAMES),
    ];
    for (table, column, values) in cases {
        assert_eq!(
            check_values(&c, table, column).await,
            names(values),
            "{table}.{column}"
        );
    }

    let row = c.query_one("SELECT 'done'::text", &[]).await.unwrap();
    let err = row.try_get::<_, JobStatus>(0).unwrap_err();
    let text = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        text.contains("unknown job status \"done\""),
        "{err}: {text}"
    );
}
