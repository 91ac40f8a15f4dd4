//! A document's chunks (`chunks`), written by the ingest worker; searched
//! per user in [`super::lexical::search`].

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use super::lexical::stats;

/// Replaces a document's chunks with `chunks`, numbered from 0, and moves
/// the owner's BM25 statistics from the old chunks to the new ones, in the
/// caller's transaction. The document row is locked first; if the document
/// is gone (deleted while its ingest ran) nothing is written.
pub async fn replace(
    tx: &impl GenericClient,
    document_id: Uuid,
    user_id: Uuid,
    chunks: &[String],
) -> Result<(), DbError> {
    let locked = tx
        .query_opt(
            "SELECT 1 FROM documents WHERE id = $1 FOR NO KEY UPDATE",
            &[&document_id],
        )
        .await?;
    if locked.is_none() {
        return Ok(());
    }
    let old = stats::of_document(tx, document_id).await?;
    tx.execute("DELETE FROM chunks WHERE document_id = $1", &[&document_id])
        .await?;
    let ids: Vec<Uuid> = chunks.iter().map(|_| Uuid::new_v4()).collect();
    let idx: Vec<i32> = (0..chunks.len() as i32).collect();
    tx.execute(
        "INSERT INTO chunks (id, document_id, user_id, chunk_index, content)
         SELECT id, $2, $3, i, c FROM unnest($1::uuid[], $4::int[], $5::text[]) AS t(id, i, c)",
        &[&ids, &document_id, &user_id, &idx, &chunks],
    )
    .await?;
    let mut delta = stats::of_document(tx, document_id).await?;
    delta.add(&old, -1);
    stats::apply(tx, user_id, &delta).await
}
