//! Embedding in the ingest worker: a document's chunks at ingest (a
//! failure leaves them for an `embed` job: the document still ingests and
//! BM25 finds it), and the chunks an `embed` job fills in (backfill).

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::failure::JobError;
use super::finish::{Outcome, Vectors};
use crate::db::vectors;
use crate::embed::Embedder;

/// The chunks' vectors, or why there are none.
pub(super) async fn at_ingest(embedder: Option<&Embedder>, chunks: &[String]) -> Vectors {
    let Some(embedder) = embedder else {
        return Vectors::NoEmbedder;
    };
    let texts: Vec<&str> = chunks.iter().map(String::as_str).collect();
    match embedder.embed(&texts).await {
        Ok(vecs) => {
            metrics::counter!("ragctl_embed_chunks_total").increment(vecs.len() as u64);
            Vectors::Made {
                model: embedder.id().to_string(),
                vecs,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot embed the chunks; ingesting without vectors, an embed job will retry");
            metrics::counter!("ragctl_embed_failures_total", "stage" => "ingest").increment(1);
            Vectors::Failed
        }
    }
}

/// An embed job: vectors for the document's chunks that lack one for the
/// embedder's model (none left: nothing to do).
pub(super) async fn missing(
    client: &impl GenericClient,
    embedder: &Embedder,
    document_id: Uuid,
) -> Result<Outcome, JobError> {
    let model = embedder.id().to_string();
    let chunks = vectors::missing(client, document_id, &model).await?;
    let texts: Vec<&str> = chunks.iter().map(|(_, c)| c.as_str()).collect();
    let vecs = if texts.is_empty() {
        vec![]
    } else {
        embedder.embed(&texts).await.inspect_err(|_| {
            metrics::counter!("ragctl_embed_failures_total", "stage" => "backfill").increment(1)
        })?
    };
    metrics::counter!("ragctl_embed_chunks_total").increment(vecs.len() as u64);
    let ids = chunks.into_iter().map(|(id, _)| id).collect();
    Ok(Outcome::Embedded { model, ids, vecs })
}
