//! What retrieval hands to answering: ranked chunks (`Hit`) and the
//! question's informative terms (`QueryTerm`). Rankers (lexical BM25 in
//! `db::lexical`, dense in `embed`) produce hits; `rag` fuses, filters by
//! relevance and answers from them.

use serde::Serialize;
use uuid::Uuid;

/// One retrieved chunk with where it came from and why it ranked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub filename: String,
    pub chunk_index: i32,
    pub content: String,
    /// The ranker's own score (BM25, cosine or fused RRF): comparable only
    /// within one ranking.
    pub score: f32,
    /// Share of the question's IDF mass whose terms occur in this chunk,
    /// in 0..=1; 0 when unknown.
    pub coverage: f32,
    /// Cosine similarity to the question, when a model ranked this chunk.
    pub cosine: Option<f32>,
}

/// A question term as the index sees it (a PostgreSQL `english` lexeme)
/// with its inverse document frequency over the asking user's chunks.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryTerm {
    pub lexeme: String,
    pub idf: f32,
}

/// A lexical ranking: the question's terms as the index sees them (empty
/// when every word is a stop word), and the best chunks, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lexical {
    pub terms: Vec<QueryTerm>,
    pub hits: Vec<Hit>,
}
