//! The parsed text of each document (`document_texts`). Keyed by document
//! id only: written and read by workers, which act on a job they hold.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// Stores (or replaces) a document's parsed text.
pub async fn put(tx: &impl GenericClient, document_id: Uuid, text: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO document_texts (document_id, content) VALUES ($1, $2)
         ON CONFLICT (document_id) DO UPDATE SET content = EXCLUDED.content, created_at = now()",
        &[&document_id, &text],
    )
    .await?;
    Ok(())
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<String>, DbError> {
    let row = client
        .query_opt(
            "SELECT content FROM document_texts WHERE document_id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
