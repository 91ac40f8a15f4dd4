//! Documents. What a request reads (`list`, `get`) is scoped by `user_id`,
//! and `insert` takes the owner. `set_status` acts by document id: only
//! workers call it, for the document of a job they hold the lease of (the
//! job row carries the owner), so no user's input reaches it. `delete` is
//! scoped by `user_id` and keeps the BM25 statistics exact.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use super::lexical::stats::{self, Delta};
use super::page::Keyset;
use super::status::DocumentStatus;

#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub filename: String,
    pub mime_type: String,
    pub size_bytes: i64,
    pub status: DocumentStatus,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str =
    "id, user_id, filename, mime_type, size_bytes, status, error_message, created_at, updated_at";

impl Document {
    pub(crate) fn from_row(r: &Row) -> Document {
        Document {
            id: r.get("id"),
            user_id: r.get("user_id"),
            filename: r.get("filename"),
            mime_type: r.get("mime_type"),
            size_bytes: r.get("size_bytes"),
            status: r.get("status"),
            error_message: r.get("error_message"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// Inserts a new document, `uploaded`; its bytes and parse job go in the
/// same transaction ([`super::uploads::create_with_parse_job`]).
pub(crate) async fn insert(
    tx: &impl GenericClient,
    user_id: Uuid,
    filename: &str,
    mime_type: &str,
    size_bytes: i64,
) -> Result<Document, DbError> {
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &user_id,
                &filename,
                &mime_type,
                &size_bytes,
                &DocumentStatus::Uploaded,
            ],
        )
        .await?;
    Ok(Document::from_row(&row))
}

/// One page of the user's documents, newest first unless `page` says
/// otherwise.
pub async fn list(
    client: &impl GenericClient,
    user_id: Uuid,
    page: &Keyset,
) -> Result<Vec<Document>, DbError> {
    super::query_all(
        client,
        &format!(
            "SELECT {COLUMNS} FROM documents WHERE user_id = $1 {}",
            page.clause(2)
        ),
        &page.params(vec![&user_id]),
        Document::from_row,
    )
    .await
}

pub async fn get(
    client: &impl GenericClient,
    user_id: Uuid,
    id: Uuid,
) -> Result<Option<Document>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM documents WHERE id = $1 AND user_id = $2"),
            &[&id, &user_id],
        )
        .await?;
    Ok(row.as_ref().map(Document::from_row))
}

/// Sets a document's status. Returns the row and whether anything changed
/// (`None` if the document is gone).
pub async fn set_status(
    client: &impl GenericClient,
    id: Uuid,
    status: DocumentStatus,
    error_message: Option<&str>,
) -> Result<Option<(Document, bool)>, DbError> {
    let cols = COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let row = client
        .query_opt(
            &format!(
                "WITH old AS (SELECT status, error_message FROM documents WHERE id = $1 FOR UPDATE)
                 UPDATE documents d SET status = $2, error_message = $3, updated_at = clock_timestamp()
                 FROM old WHERE d.id = $1
                 RETURNING {cols},
                    (old.status IS DISTINCT FROM $2 OR old.error_message IS DISTINCT FROM $3) AS changed"
            ),
            &[&id, &status, &error_message],
        )
        .await?;
    Ok(row.map(|r| (Document::from_row(&r), r.get("changed"))))
}

/// Deletes the user's document with its blob, text, jobs and chunks, and
/// takes its chunks out of the user's BM25 statistics, in one transaction.
/// `false` if the user has no such document.
///
/// Locks the document's jobs, then the document (the order a finishing
/// worker takes them: its job, then the document), so an ingest that
/// commits first is undone here, and one that commits after finds its job
/// gone and writes nothing.
pub async fn delete(
    client: &mut deadpool_postgres::Object,
    user_id: Uuid,
    id: Uuid,
) -> Result<bool, DbError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT 1 FROM jobs WHERE document_id = $1 AND user_id = $2 ORDER BY id FOR UPDATE",
        &[&id, &user_id],
    )
    .await?;
    let owned = tx
        .query_opt(
            "SELECT 1 FROM documents WHERE id = $1 AND user_id = $2 FOR UPDATE",
            &[&id, &user_id],
        )
        .await?;
    if owned.is_none() {
        return Ok(false);
    }
    let mut delta = Delta::default();
    delta.add(&stats::of_document(&tx, id).await?, -1);
    tx.execute("DELETE FROM documents WHERE id = $1", &[&id])
        .await?;
    stats::apply(&tx, user_id, &delta).await?;
    tx.commit().await?;
    Ok(true)
}
