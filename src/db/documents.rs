//! Documents and their uploaded bytes. Every query is scoped by `user_id`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use futures_util::SinkExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use super::jobs::{Job, JobKind};
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

    pub fn created_payload(&self) -> Value {
        json!({
            "document_id": self.id,
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "created_at": self.created_at,
        })
    }

    pub fn status_payload(&self) -> Value {
        json!({
            "document_id": self.id,
            "status": self.status,
            "error_message": self.error_message,
            "updated_at": self.updated_at,
        })
    }
}

pub struct NewDocument<'a> {
    pub user_id: Uuid,
    pub filename: &'a str,
    pub mime_type: &'a str,
    /// Owned so that it reaches the socket in slices, never copied whole.
    pub content: Bytes,
    pub max_retries: i32,
    /// See [`super::jobs::enqueue`].
    pub embargo: std::time::Duration,
}

/// Stores an upload and queues its parse job, in one transaction.
pub async fn create_with_parse_job(
    client: &mut deadpool_postgres::Object,
    new: NewDocument<'_>,
) -> Result<(Document, Job), DbError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
                 VALUES ($1, $2, $3, $4, $5, 'uploaded') RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &new.user_id,
                &new.filename,
                &new.mime_type,
                &(new.content.len() as i64),
            ],
        )
        .await?;
    let doc = Document::from_row(&row);
    copy_blob(&tx, doc.id, new.content).await?;
    let job = super::jobs::enqueue(&tx, &doc, JobKind::Parse, new.max_retries, new.embargo).await?;
    tx.commit().await?;
    Ok((doc, job))
}

/// Bytes per CopyData message: what the connection buffers at a time.
const COPY_SLICE: usize = 64 * 1024;

/// Writes the blob with `COPY ... (FORMAT binary)` in slices of the one
/// buffer. A bytea parameter would be copied whole into the Bind message and
/// again into the connection's write buffer, which keeps that capacity.
async fn copy_blob(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    content: Bytes,
) -> Result<(), DbError> {
    let len = i32::try_from(content.len())
        .map_err(|_| DbError::Query("a blob cannot exceed 2 GiB".into()))?;
    // Signature, flags, header extension; one tuple of two fields.
    let mut head = BytesMut::with_capacity(48);
    head.put_slice(b"PGCOPY\n\xff\r\n\0");
    head.put_i32(0);
    head.put_i32(0);
    head.put_i16(2);
    head.put_i32(16);
    head.put_slice(id.as_bytes());
    head.put_i32(len);
    let sink = tx
        .copy_in::<_, Bytes>(
            "COPY document_blobs (document_id, content) FROM STDIN (FORMAT binary)",
        )
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(head.freeze()).await?;
    let mut at = 0;
    while at < content.len() {
        let end = (at + COPY_SLICE).min(content.len());
        sink.send(content.slice(at..end)).await?;
        at = end;
    }
    // The trailer: a tuple of -1 fields.
    sink.send(Bytes::from_static(&[0xff, 0xff])).await?;
    sink.finish().await?;
    Ok(())
}

pub async fn list(client: &impl GenericClient, user_id: Uuid) -> Result<Vec<Document>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM documents WHERE user_id = $1 ORDER BY created_at DESC, id"
            ),
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(Document::from_row).collect())
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

pub async fn blob(client: &impl GenericClient, id: Uuid) -> Result<Option<Vec<u8>>, DbError> {
    let row = client
        .query_opt(
            "SELECT content FROM document_blobs WHERE document_id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn text(client: &impl GenericClient, id: Uuid) -> Result<Option<String>, DbError> {
    let row = client
        .query_opt(
            "SELECT content FROM document_texts WHERE document_id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn chunk_count(client: &impl GenericClient, id: Uuid) -> Result<i64, DbError> {
    let row = client
        .query_one("SELECT count(*) FROM chunks WHERE document_id = $1", &[&id])
        .await?;
    Ok(row.get(0))
}
