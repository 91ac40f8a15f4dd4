//! BM25 over a user's chunks, in PostgreSQL with its own indexes: the
//! question's lexemes (`english`, as the `chunks.tsv` index), their
//! document frequencies from `bm25_terms` (primary key `(user_id, lexeme)`),
//! candidates from the GIN index on `tsv`, and each candidate's term
//! positions, cut down to the query's lexemes in the database
//! (`ts_filter(setweight(tsv, 'A', lexemes), '{a}')`: `chunks.tsv` is
//! `to_tsvector`'s output, whose weights are all D) and scored here
//! ([`score`]).
//!
//! Candidate generation takes the rarest terms while their document
//! frequencies add up to at most [`CANDIDATE_POSTINGS`] (always at least the
//! rarest one), and at most [`MAX_CANDIDATES`] chunks ([`COMMON_CANDIDATES`]
//! when even the rarest term is in most chunks): a term in most chunks
//! (idf near 0) then costs nothing, yet still counts in the score and the
//! coverage of the chunks found through the rarer terms. On a small corpus
//! every term generates candidates and the ranking is exact.

mod score;
pub(crate) mod stats;

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use crate::rag::hit::{Hit, Lexical, QueryTerm};
use score::{Collection, Occurrence};

/// At most this many question terms are used, the rarest first.
pub const MAX_TERMS: usize = 64;
/// Postings (sum of document frequencies) the candidate terms may cover.
pub const CANDIDATE_POSTINGS: i64 = 1_000;
/// Chunks scored per question, at most.
pub const MAX_CANDIDATES: i64 = 1_000;
/// Chunks scored when even the rarest term is in over half of the user's
/// chunks (idf < ln 2): BM25 cannot tell those matches apart much, so
/// scoring more of them buys nothing but time.
pub const COMMON_CANDIDATES: i64 = 250;

/// The user's `ingested` chunks that best match `question`, best first
/// (at most `k`), with the question's terms and their idf. A question of
/// stop words only has no terms and no hits.
pub async fn search(
    client: &impl GenericClient,
    user_id: Uuid,
    question: &str,
    k: i64,
) -> Result<Lexical, DbError> {
    if k < 1 {
        return Err(DbError::Input(format!("k must be at least 1, got {k}")));
    }
    let (coll, terms, dfs) = query_terms(client, user_id, question).await?;
    let seeds = candidate_terms(&terms, &dfs);
    if seeds.is_empty() {
        return Ok(Lexical {
            terms,
            hits: vec![],
        });
    }
    let cap = candidate_cap(coll, dfs[seeds[0]]);
    let mut ranked = rank(client, user_id, coll, &terms, &seeds, cap).await?;
    ranked.truncate(k as usize);
    let hits = fetch(client, user_id, &ranked).await?;
    Ok(Lexical { terms, hits })
}

/// The coverage of each of `chunk_ids` (same order; 0 for a chunk that is
/// not the user's): the share of `terms`' idf mass present in the chunk.
pub async fn coverage(
    client: &impl GenericClient,
    user_id: Uuid,
    terms: &[QueryTerm],
    chunk_ids: &[Uuid],
) -> Result<Vec<f32>, DbError> {
    if terms.is_empty() || chunk_ids.is_empty() {
        return Ok(vec![0.0; chunk_ids.len()]);
    }
    let lexemes: Vec<&str> = terms.iter().map(|t| t.lexeme.as_str()).collect();
    let rows = client
        .query(
            "SELECT c.id, f.lexeme
             FROM chunks c, unnest(ts_filter(setweight(c.tsv, 'A', $3), '{a}')) AS f
             WHERE c.user_id = $1 AND c.id = ANY($2)",
            &[&user_id, &chunk_ids, &lexemes],
        )
        .await?;
    let index = term_index(&lexemes);
    let mut present: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for r in &rows {
        if let Some(&t) = index.get(r.get::<_, &str>(1)) {
            present.entry(r.get(0)).or_default().push(t);
        }
    }
    let idfs: Vec<f32> = terms.iter().map(|t| t.idf).collect();
    Ok(chunk_ids
        .iter()
        .map(|id| {
            let got = present.get(id).map(Vec::as_slice).unwrap_or(&[]);
            score::coverage(&idfs, got.iter().copied())
        })
        .collect())
}

/// Recounts `users`' statistics from their chunks, for rows written
/// behind `chunks::replace`'s back (bulk seeding in `ragctl bench`). Not for
/// users whose documents are being ingested or deleted meanwhile.
pub async fn recount(client: &tokio_postgres::Client, users: &[Uuid]) -> Result<(), DbError> {
    for sql in [
        "DELETE FROM bm25_terms WHERE user_id = ANY($1)",
        "DELETE FROM bm25_users WHERE user_id = ANY($1)",
        "INSERT INTO bm25_users (user_id, chunks, total_tokens)
         SELECT user_id, count(*), sum(tokens) FROM chunks WHERE user_id = ANY($1) GROUP BY 1",
        "INSERT INTO bm25_terms (user_id, lexeme, df)
         SELECT c.user_id, l, count(*) FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS l
         WHERE c.user_id = ANY($1) GROUP BY 1, 2",
    ] {
        client.execute(sql, &[&users]).await?;
    }
    Ok(())
}

/// Lexemes of how people ask, not of what they ask about ("how *many* days
/// do I *get*", "*tell* me", "I *need* to *know*"): PostgreSQL's stop list
/// keeps them, and being absent from the documents they would carry the
/// highest idf and pull an answerable question under the relevance floor.
const QUESTION_FILLER: &[&str] = &[
    "mani", "much", "get", "tell", "know", "need", "want", "explain", "describ", "pleas", "someth",
    "anyth", "thing", "way", "kind", "sort",
];

/// The user's collection, and the question's distinct lexemes with their
/// idf (rarest first, at most [`MAX_TERMS`]) and document frequency.
async fn query_terms(
    client: &impl GenericClient,
    user_id: Uuid,
    question: &str,
) -> Result<(Collection, Vec<QueryTerm>, Vec<i64>), DbError> {
    // Prepared once per connection (key lookups: a generic plan is fine);
    // the candidate query is not, so each run is planned for its terms.
    let stmt = client
        .prepare_cached(
            "WITH q AS (SELECT DISTINCT l FROM unnest(tsvector_to_array(to_tsvector('english', $2))) AS l
                        WHERE l <> ALL($3))
             SELECT q.l, coalesce(t.df, 0)::bigint, u.chunks, u.total_tokens
             FROM q LEFT JOIN bm25_terms t ON t.user_id = $1 AND t.lexeme = q.l
                    LEFT JOIN bm25_users u ON u.user_id = $1
             ORDER BY 2, 1",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&user_id, &question, &QUESTION_FILLER])
        .await?;
    let (chunks, tokens) = rows.first().map_or((0, 0), |r| {
        let chunks: Option<i64> = r.get(2);
        let tokens: Option<i64> = r.get(3);
        (chunks.unwrap_or(0), tokens.unwrap_or(0))
    });
    let coll = Collection {
        chunks,
        avg_tokens: if chunks > 0 {
            tokens as f32 / chunks as f32
        } else {
            1.0
        },
    };
    if rows.len() > MAX_TERMS {
        metrics::counter!("ragctl_bm25_terms_dropped_total")
            .increment((rows.len() - MAX_TERMS) as u64);
    }
    let (terms, dfs) = rows
        .iter()
        .take(MAX_TERMS)
        .map(|r| {
            let df: i64 = r.get(1);
            let lexeme: String = r.get(0);
            (
                QueryTerm {
                    lexeme,
                    idf: score::idf(coll, df),
                },
                df,
            )
        })
        .unzip();
    Ok((coll, terms, dfs))
}

/// The candidates (the user's ingested chunks matching the seed terms `$2`,
/// at most `$4`) with the positions of the query's lexemes `$3` in each.
/// `m` is MATERIALIZED so that it is planned for all of its rows: with the
/// LIMIT in view the planner may pick a sequential scan that stops early,
/// which reads every other user's chunks first when the user's come last
/// in the table. A CTE scan still reads `m` lazily, only `$4` rows.
const CANDIDATES: &str = "WITH m AS MATERIALIZED (
        SELECT c.id, c.document_id, c.chunk_index, c.tokens, c.tsv
        FROM chunks c JOIN documents d ON d.id = c.document_id
        WHERE c.user_id = $1 AND d.user_id = $1 AND d.status = 'ingested'
          AND c.tsv @@ $2::text::tsquery),
     cand AS (SELECT * FROM m LIMIT $4)
     SELECT cand.id, cand.document_id, cand.chunk_index, cand.tokens, f.lexeme, f.positions::int[]
     FROM cand, unnest(ts_filter(setweight(cand.tsv, 'A', $3), '{a}')) AS f";

/// `EXPLAIN (ANALYZE, BUFFERS)` of the candidate query [`search`] runs for
/// `question`, one plan line per item (empty when nothing would run): for
/// tests and operators checking that it stays on the indexes.
pub async fn explain(
    client: &impl GenericClient,
    user_id: Uuid,
    question: &str,
) -> Result<Vec<String>, DbError> {
    let (coll, terms, dfs) = query_terms(client, user_id, question).await?;
    let seeds = candidate_terms(&terms, &dfs);
    if seeds.is_empty() {
        return Ok(vec![]);
    }
    let lexemes: Vec<&str> = terms.iter().map(|t| t.lexeme.as_str()).collect();
    let rows = client
        .query(
            &format!("EXPLAIN (ANALYZE, BUFFERS) {CANDIDATES}"),
            &[
                &user_id,
                &seed_query(&lexemes, &seeds),
                &lexemes,
                &(candidate_cap(coll, dfs[seeds[0]]) + 1),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How many chunks to score, given the rarest seed term's `df`.
fn candidate_cap(coll: Collection, df: i64) -> i64 {
    if df * 2 > coll.chunks {
        COMMON_CANDIDATES
    } else {
        MAX_CANDIDATES
    }
}

/// The seed terms as a tsquery (OR).
fn seed_query(lexemes: &[&str], seeds: &[usize]) -> String {
    seeds
        .iter()
        .map(|&i| quote_lexeme(lexemes[i]))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The terms that generate candidates (indexes into `terms`, rarest first).
fn candidate_terms(terms: &[QueryTerm], dfs: &[i64]) -> Vec<usize> {
    let mut seeds = vec![];
    let mut postings = 0;
    for (i, &df) in dfs.iter().enumerate().filter(|(_, df)| **df > 0) {
        if !seeds.is_empty() && postings + df > CANDIDATE_POSTINGS {
            break;
        }
        postings += df;
        seeds.push(i);
    }
    debug_assert!(seeds.iter().all(|&i| i < terms.len()));
    seeds
}

/// A scored candidate.
struct Ranked {
    chunk_id: Uuid,
    document_id: Uuid,
    chunk_index: i32,
    score: f32,
    coverage: f32,
}

/// Scores the candidates, best first; ties by document and chunk index.
async fn rank(
    client: &impl GenericClient,
    user_id: Uuid,
    coll: Collection,
    terms: &[QueryTerm],
    seeds: &[usize],
    cap: i64,
) -> Result<Vec<Ranked>, DbError> {
    let lexemes: Vec<&str> = terms.iter().map(|t| t.lexeme.as_str()).collect();
    let tsquery = seed_query(&lexemes, seeds);
    let rows = client
        .query(CANDIDATES, &[&user_id, &tsquery, &lexemes, &(cap + 1)])
        .await?;
    let index = term_index(&lexemes);
    let mut by_chunk: HashMap<Uuid, (Uuid, i32, i32, Vec<Occurrence>)> = HashMap::new();
    for r in &rows {
        let Some(&term) = index.get(r.get::<_, &str>(4)) else {
            continue;
        };
        let entry = by_chunk
            .entry(r.get(0))
            .or_insert_with(|| (r.get(1), r.get(2), r.get(3), vec![]));
        entry.3.push(Occurrence {
            term,
            positions: r.get(5),
        });
    }
    if by_chunk.len() as i64 > cap {
        metrics::counter!("ragctl_bm25_candidates_capped_total").increment(1);
    }
    let idfs: Vec<f32> = terms.iter().map(|t| t.idf).collect();
    let mut ranked: Vec<Ranked> = by_chunk
        .into_iter()
        .map(
            |(chunk_id, (document_id, chunk_index, tokens, occ))| Ranked {
                chunk_id,
                document_id,
                chunk_index,
                score: score::score(coll, &idfs, tokens, &occ),
                coverage: score::coverage(&idfs, occ.iter().map(|o| o.term)),
            },
        )
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.document_id.cmp(&b.document_id))
            .then(a.chunk_index.cmp(&b.chunk_index))
    });
    Ok(ranked)
}

/// The hits for `ranked`, in its order.
async fn fetch(
    client: &impl GenericClient,
    user_id: Uuid,
    ranked: &[Ranked],
) -> Result<Vec<Hit>, DbError> {
    let ids: Vec<Uuid> = ranked.iter().map(|r| r.chunk_id).collect();
    let stmt = client
        .prepare_cached(
            "SELECT c.id, d.filename, c.content
             FROM chunks c JOIN documents d ON d.id = c.document_id
             WHERE c.user_id = $1 AND c.id = ANY($2)",
        )
        .await?;
    let rows = client.query(&stmt, &[&user_id, &ids]).await?;
    let mut found: HashMap<Uuid, (String, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok(ranked
        .iter()
        .filter_map(|r| {
            let (filename, content) = found.remove(&r.chunk_id)?;
            Some(Hit {
                chunk_id: r.chunk_id,
                document_id: r.document_id,
                filename,
                chunk_index: r.chunk_index,
                content,
                score: r.score,
                coverage: r.coverage,
                cosine: None,
            })
        })
        .collect())
}

fn term_index<'a>(lexemes: &[&'a str]) -> HashMap<&'a str, usize> {
    lexemes.iter().enumerate().map(|(i, l)| (*l, i)).collect()
}

/// A lexeme as a tsquery operand: quoted, so that no character of it is
/// read as an operator, and not normalised again.
fn quote_lexeme(lexeme: &str) -> String {
    format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(n: usize) -> Vec<QueryTerm> {
        (0..n)
            .map(|i| QueryTerm {
                lexeme: format!("t{i}"),
                idf: 1.0,
            })
            .collect()
    }

    #[test]
    fn candidate_terms_stay_within_the_postings_budget() {
        assert_eq!(candidate_terms(&terms(3), &[0, 5, 10]), vec![1, 2]);
        assert_eq!(candidate_terms(&terms(3), &[100, 800, 5_000]), vec![0, 1]);
        // The rarest matching term always counts, however common.
        assert_eq!(candidate_terms(&terms(2), &[9_000, 9_500]), vec![0]);
        assert!(candidate_terms(&terms(2), &[0, 0]).is_empty());
    }

    #[test]
    fn lexemes_are_quoted_for_tsquery() {
        assert_eq!(quote_lexeme("it's"), "'it''s'");
        assert_eq!(quote_lexeme("a\\b"), "'a\\\\b'");
        assert_eq!(quote_lexeme("x:y | z"), "'x:y | z'");
    }
}
