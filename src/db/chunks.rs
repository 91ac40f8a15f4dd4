//! A document's chunks (`chunks`), written by the ingest worker; searched
//! per user in [`super::chat::search`].

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// Replaces a document's chunks with `chunks`, numbered from 0.
pub async fn replace(
    tx: &impl GenericClient,
    document_id: Uuid,
    user_id: Uuid,
    chunks: &[String],
) -> Result<(), DbError> {
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
    Ok(())
}
