//! Chat's retrieval: the rankers the mode asks for (BM25 in
//! `db::lexical`, dense in `embed::dense`), then `rag::retrieve::decide`.
//! A failing embedder never fails the question: BM25 answers alone and
//! `ragctl_dense_fallback_total` says so.

use std::time::Instant;

use uuid::Uuid;

use super::state::AppState;
use crate::db::{DbError, lexical};
use crate::embed::dense::{self, DenseError};
use crate::embed::{EmbedError, Embedder};
use crate::rag::hit::{Hit, QueryTerm};
use crate::rag::retrieve::{self, Decision};

/// Each ranker's list for the fusion: deeper than the answer's passages,
/// so a chunk second in one list and absent from the other's top 5 still
/// counts.
const FUSION_DEPTH: usize = 20;

/// Ranks the caller's chunks and decides whether they answer.
pub(super) async fn retrieve(
    state: &AppState,
    client: &deadpool_postgres::Object,
    uid: Uuid,
    question: &str,
) -> Result<Decision, DbError> {
    let cfg = state.retrieval;
    let started = Instant::now();
    let depth = if cfg.mode.wants_dense() {
        cfg.k.max(FUSION_DEPTH)
    } else {
        cfg.k
    };
    let lexical = lexical::search(client, uid, question, depth as i64).await?;
    let dense = match (&state.embedder, cfg.mode.wants_dense()) {
        (Some(e), true) => {
            dense_hits(state, e, client, uid, question, &lexical.terms, depth).await?
        }
        _ => None,
    };
    let decision = retrieve::decide(&cfg, lexical, dense);
    metrics::histogram!("ragctl_retrieval_seconds", "mode" => decision.mode.as_str())
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        why = decision.why,
        mode = decision.mode.as_str(),
        "retrieved"
    );
    Ok(decision)
}

/// The dense ranking with each hit's coverage, or `None` when the embedder
/// failed (counted, logged); a database error is the question's error.
async fn dense_hits(
    state: &AppState,
    embedder: &Embedder,
    client: &deadpool_postgres::Object,
    uid: Uuid,
    question: &str,
    terms: &[QueryTerm],
    k: usize,
) -> Result<Option<Vec<Hit>>, DbError> {
    let mut hits = match dense::search(client, &state.vectors, embedder, uid, question, k).await {
        Ok(hits) => hits,
        Err(DenseError::Db(e)) => return Err(e),
        Err(DenseError::Embed(e)) => {
            fell_back(&e);
            return Ok(None);
        }
    };
    let ids: Vec<Uuid> = hits.iter().map(|h| h.chunk_id).collect();
    let coverage = lexical::coverage(client, uid, terms, &ids).await?;
    for (h, c) in hits.iter_mut().zip(coverage) {
        h.coverage = c;
    }
    Ok(Some(hits))
}

fn fell_back(e: &EmbedError) {
    let reason = match e {
        EmbedError::Remote(_) => "endpoint",
        EmbedError::Model(_) => "model",
        EmbedError::Config { .. } => "config",
    };
    metrics::counter!("ragctl_dense_fallback_total", "reason" => reason).increment(1);
    tracing::warn!(error = %e, "the embedder failed: BM25 answers alone");
}
