//! The per-user BM25 statistics (`bm25_users`, `bm25_terms`), kept exact
//! by whoever changes chunks, in the same transaction: the change is read
//! as a signed [`Delta`] of the document's chunks and applied with
//! `INSERT … ON CONFLICT DO UPDATE`, so concurrent writers add up.
//!
//! Lock order (no deadlocks): the job row (the worker's `succeed`, or all
//! of a document's jobs on delete), then the document row, then the user's
//! `bm25_users` row, then `bm25_terms` rows in byte order of the lexeme. The
//! user row comes first, so one user's statistics writers queue on it.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::db::DbError;

/// A signed change of a user's statistics.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Delta {
    pub chunks: i64,
    pub tokens: i64,
    /// Lexeme → change of its document frequency, in byte order.
    pub terms: BTreeMap<String, i32>,
}

impl Delta {
    /// Adds `other` times `sign` (+1 or -1).
    pub fn add(&mut self, other: &Delta, sign: i32) {
        self.chunks += i64::from(sign) * other.chunks;
        self.tokens += i64::from(sign) * other.tokens;
        for (lexeme, n) in &other.terms {
            *self.terms.entry(lexeme.clone()).or_default() += sign * n;
        }
        self.terms.retain(|_, n| *n != 0);
    }

    fn is_empty(&self) -> bool {
        self.chunks == 0 && self.tokens == 0 && self.terms.is_empty()
    }
}

/// What the document's current chunks contribute to its owner's statistics.
pub(crate) async fn of_document(
    tx: &impl GenericClient,
    document_id: Uuid,
) -> Result<Delta, DbError> {
    let totals = tx
        .query_one(
            "SELECT count(*), coalesce(sum(tokens), 0)::bigint FROM chunks WHERE document_id = $1",
            &[&document_id],
        )
        .await?;
    let rows = tx
        .query(
            "SELECT l.lexeme, count(*)::int
             FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS l(lexeme)
             WHERE c.document_id = $1 GROUP BY l.lexeme",
            &[&document_id],
        )
        .await?;
    Ok(Delta {
        chunks: totals.get(0),
        tokens: totals.get(1),
        terms: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// Applies `delta` to `user_id`'s statistics; rows that reach 0 go.
pub(crate) async fn apply(
    tx: &impl GenericClient,
    user_id: Uuid,
    delta: &Delta,
) -> Result<(), DbError> {
    if delta.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO bm25_users (user_id, chunks, total_tokens) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET
            chunks = bm25_users.chunks + EXCLUDED.chunks,
            total_tokens = bm25_users.total_tokens + EXCLUDED.total_tokens",
        &[&user_id, &delta.chunks, &delta.tokens],
    )
    .await?;
    let lexemes: Vec<&str> = delta.terms.keys().map(String::as_str).collect();
    let dfs: Vec<i32> = delta.terms.values().copied().collect();
    tx.execute(
        "INSERT INTO bm25_terms (user_id, lexeme, df)
         SELECT $1, t.lexeme, t.df FROM unnest($2::text[], $3::int[]) AS t(lexeme, df)
         ORDER BY t.lexeme COLLATE \"C\"
         ON CONFLICT (user_id, lexeme) DO UPDATE SET df = bm25_terms.df + EXCLUDED.df",
        &[&user_id, &lexemes, &dfs],
    )
    .await?;
    tx.execute(
        "DELETE FROM bm25_terms WHERE user_id = $1 AND lexeme = ANY($2) AND df <= 0",
        &[&user_id, &lexemes],
    )
    .await?;
    tx.execute(
        "DELETE FROM bm25_users WHERE user_id = $1 AND chunks <= 0",
        &[&user_id],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Delta;

    fn delta(chunks: i64, tokens: i64, terms: &[(&str, i32)]) -> Delta {
        Delta {
            chunks,
            tokens,
            terms: terms.iter().map(|(l, n)| (l.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn deltas_net_out_and_drop_zero_terms() {
        let mut d = delta(2, 10, &[("a", 2), ("b", 1)]);
        d.add(&delta(1, 4, &[("a", 1), ("c", 1)]), -1);
        assert_eq!(d, delta(1, 6, &[("a", 1), ("b", 1), ("c", -1)]));
        d.add(&d.clone(), -1);
        assert!(d.is_empty());
    }
}
