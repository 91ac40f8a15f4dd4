//! An upload: the document, its bytes and its parse job, in one
//! transaction. The one place a document is created with its job.

use bytes::Bytes;
use uuid::Uuid;

use super::DbError;
use super::blobs;
use super::documents::{self, Document};
use super::jobs::{self, Job, JobKind};

pub struct NewDocument<'a> {
    pub user_id: Uuid,
    pub filename: &'a str,
    pub mime_type: &'a str,
    /// Owned so that it reaches the socket in slices, never copied whole.
    pub content: Bytes,
    pub max_retries: i32,
    /// See [`jobs::enqueue`].
    pub embargo: std::time::Duration,
}

/// Stores an upload and queues its parse job, in one transaction.
pub async fn create_with_parse_job(
    client: &mut deadpool_postgres::Object,
    new: NewDocument<'_>,
) -> Result<(Document, Job), DbError> {
    let tx = client.transaction().await?;
    let size = new.content.len() as i64;
    let doc = documents::insert(&tx, new.user_id, new.filename, new.mime_type, size).await?;
    blobs::write(&tx, doc.id, new.content).await?;
    let job = jobs::enqueue(
        &tx,
        doc.id,
        doc.user_id,
        JobKind::Parse,
        new.max_retries,
        new.embargo,
    )
    .await?;
    tx.commit().await?;
    Ok((doc, job))
}
