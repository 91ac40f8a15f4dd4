//! Dense retrieval: the question's vector against the user's stored
//! vectors for the embedder's model id, top-k by cosine, only chunks of
//! `ingested` documents.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::cache::VectorCache;
use super::embedder::Embedder;
use super::error::EmbedError;
use crate::db::{DbError, vectors};
use crate::rag::hit::Hit;

#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Candidates scored beyond `k`: a few may belong to documents no longer
/// `ingested` (re-ingest in progress), which are dropped.
const SPARE: usize = 8;

/// How long a question waits for its vector: an endpoint that hangs must
/// cost the asker this much at most before BM25 answers alone (the
/// batch timeout of ingest is much longer).
const QUESTION_EMBED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

fn slow() -> EmbedError {
    EmbedError::Remote(format!(
        "no vector for the question within {} s",
        QUESTION_EMBED_TIMEOUT.as_secs()
    ))
}

/// The `k` chunks closest to `question`, best first; `cosine` and `score`
/// are the cosine, `coverage` 0 (the pipeline fills it).
pub async fn search(
    client: &impl GenericClient,
    cache: &VectorCache,
    embedder: &Embedder,
    user_id: Uuid,
    question: &str,
    k: usize,
) -> Result<Vec<Hit>, DenseError> {
    let q = tokio::time::timeout(QUESTION_EMBED_TIMEOUT, embedder.embed(&[question]))
        .await
        .map_err(|_| slow())??
        .pop()
        .ok_or_else(|| EmbedError::Model("no vector for the question".into()))?;
    let stored = cache.get(client, user_id, embedder.id(), q.len()).await?;
    let top = stored.top(&q, k + SPARE);
    if top.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = top.iter().map(|&(i, _)| stored.ids[i]).collect();
    let mut found = vectors::hits(client, user_id, &ids).await?;
    let mut hits = Vec::with_capacity(k);
    for (&(_, cosine), id) in top.iter().zip(&ids) {
        if let Some(pos) = found.iter().position(|h| h.chunk_id == *id) {
            let mut h = found.swap_remove(pos);
            (h.score, h.cosine) = (cosine, Some(cosine));
            hits.push(h);
        }
        if hits.len() == k {
            break;
        }
    }
    Ok(hits)
}
