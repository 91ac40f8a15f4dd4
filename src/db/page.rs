//! Keyset pages over `(created_at, id)`: a list resumes strictly after the
//! last row it returned, so rows inserted meanwhile are neither skipped nor
//! repeated, and no page costs more than its own rows (no OFFSET). A leaf:
//! the table modules use it, it knows no table.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// One page of a list ordered by `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyset {
    /// The last row of the previous page; `None` for the first page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub newest_first: bool,
    /// Rows to read; callers ask one more than they show, to know whether
    /// another page follows.
    pub limit: i64,
}

impl Keyset {
    /// `AND (created_at, id) > ($n, $n+1)` (`<` newest first) when there is
    /// a position, then the order and `LIMIT`; `next` is the number of the
    /// first parameter it may use.
    pub(crate) fn clause(&self, next: usize) -> String {
        let (cmp, dir) = if self.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let (after, limit) = match self.after {
            Some(_) => (
                format!("AND (created_at, id) {cmp} (${next}, ${})", next + 1),
                next + 2,
            ),
            None => (String::new(), next),
        };
        format!("{after} ORDER BY created_at {dir}, id {dir} LIMIT ${limit}")
    }

    /// The parameters of [`Keyset::clause`], after the query's own.
    pub(crate) fn params<'a>(
        &'a self,
        mut params: Vec<&'a (dyn ToSql + Sync)>,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        if let Some((at, id)) = &self.after {
            params.push(at);
            params.push(id);
        }
        params.push(&self.limit);
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clause_numbers_its_parameters_after_the_query_s() {
        let mut k = Keyset {
            after: None,
            newest_first: true,
            limit: 51,
        };
        assert_eq!(k.clause(2), " ORDER BY created_at DESC, id DESC LIMIT $2");
        assert_eq!(k.params(vec![]).len(), 1);
        k.after = Some((Utc::now(), Uuid::nil()));
        k.newest_first = false;
        assert_eq!(
            k.clause(3),
            "AND (created_at, id) > ($3, $4) ORDER BY created_at ASC, id ASC LIMIT $5"
        );
        assert_eq!(k.params(vec![&1i32]).len(), 4);
    }
}
