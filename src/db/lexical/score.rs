//! BM25 with a proximity bonus, over what the index says of one chunk: its
//! length in tokens and the positions of each query term in it. Pure, so
//! the ranking is tested without a database.

/// Term-frequency saturation.
pub const K1: f32 = 1.2;
/// Length normalisation (0 = none, 1 = full).
pub const B: f32 = 0.75;
/// Two query terms at most this many words apart earn a bonus.
pub const WINDOW: i32 = 5;
/// The bonus of a pair of adjacent query terms, as a share of the smaller
/// idf of the two; it falls linearly to 0 at `WINDOW + 1` words apart.
pub const PROXIMITY: f32 = 0.25;

/// The collection a score is relative to (one user's chunks).
#[derive(Debug, Clone, Copy)]
pub struct Collection {
    pub chunks: i64,
    pub avg_tokens: f32,
}

/// BM25+ style idf, never negative: a term in every chunk weighs ~0.
pub fn idf(c: Collection, df: i64) -> f32 {
    let (n, df) = (c.chunks as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
}

/// One query term's occurrences in a chunk: its index in the query's
/// terms and its positions (ascending, as the tsvector stores them).
#[derive(Debug, Clone)]
pub struct Occurrence {
    pub term: usize,
    pub positions: Vec<i32>,
}

/// The chunk's score for a query with the terms' `idfs`.
pub fn score(c: Collection, idfs: &[f32], tokens: i32, occ: &[Occurrence]) -> f32 {
    let norm = K1 * (1.0 - B + B * tokens.max(1) as f32 / c.avg_tokens.max(1.0));
    let bm25: f32 = occ
        .iter()
        .map(|o| {
            let tf = o.positions.len() as f32;
            idfs[o.term] * tf * (K1 + 1.0) / (tf + norm)
        })
        .sum();
    bm25 + proximity(idfs, occ)
}

/// For each pair of distinct query terms in the chunk, the closest their
/// occurrences come: `PROXIMITY * min(idf) * (WINDOW + 1 - gap) / WINDOW`
/// when `gap <= WINDOW`. Rewards "pressure valve" over the two words
/// pages apart, weighted so that two common words earn little.
fn proximity(idfs: &[f32], occ: &[Occurrence]) -> f32 {
    let mut bonus = 0.0;
    for (i, a) in occ.iter().enumerate() {
        for b in &occ[i + 1..] {
            let gap = min_gap(&a.positions, &b.positions);
            if gap <= WINDOW {
                let near = (WINDOW + 1 - gap) as f32 / WINDOW as f32;
                bonus += PROXIMITY * idfs[a.term].min(idfs[b.term]) * near;
            }
        }
    }
    bonus
}

/// The smallest distance between a position in `a` and one in `b`, both
/// ascending (two pointers).
fn min_gap(a: &[i32], b: &[i32]) -> i32 {
    let (mut i, mut j, mut best) = (0, 0, i32::MAX);
    while i < a.len() && j < b.len() {
        best = best.min((a[i] - b[j]).abs());
        if a[i] < b[j] {
            i += 1;
        } else {
            j += 1;
        }
    }
    best
}

/// Share of the query's idf mass whose terms occur in the chunk.
pub fn coverage(idfs: &[f32], present: impl Iterator<Item = usize>) -> f32 {
    let total: f32 = idfs.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut seen = vec![false; idfs.len()];
    let mut got = 0.0;
    for t in present {
        if !std::mem::replace(&mut seen[t], true) {
            got += idfs[t];
        }
    }
    (got / total).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Collection = Collection {
        chunks: 100,
        avg_tokens: 50.0,
    };

    fn occ(term: usize, positions: &[i32]) -> Occurrence {
        Occurrence {
            term,
            positions: positions.to_vec(),
        }
    }

    #[test]
    fn idf_is_high_for_rare_terms_and_near_zero_for_ubiquitous_ones() {
        assert!(idf(C, 1) > 4.0);
        assert!(idf(C, 100) < 0.01);
        assert!(idf(C, 100) >= 0.0);
        assert!(idf(C, 10) > idf(C, 50));
    }

    #[test]
    fn one_rare_term_beats_many_common_ones() {
        let idfs = [idf(C, 2), idf(C, 90)];
        let rare = score(C, &idfs, 50, &[occ(0, &[3])]);
        let common = score(C, &idfs, 50, &[occ(1, &[1, 5, 9, 13, 17, 21])]);
        assert!(rare > common, "{rare} <= {common}");
    }

    #[test]
    fn long_chunks_are_normalised_and_tf_saturates() {
        let idfs = [idf(C, 10)];
        let short = score(C, &idfs, 20, &[occ(0, &[1])]);
        let long = score(C, &idfs, 200, &[occ(0, &[1])]);
        assert!(short > long);
        let many: Vec<i32> = (1..=100).collect();
        assert!(score(C, &idfs, 50, &[occ(0, &many)]) < idfs[0] * (K1 + 1.0));
    }

    #[test]
    fn nearby_terms_earn_a_bonus_that_fades_with_distance() {
        let idfs = [idf(C, 10), idf(C, 10)];
        let adjacent = score(C, &idfs, 50, &[occ(0, &[10]), occ(1, &[11])]);
        let near = score(C, &idfs, 50, &[occ(0, &[10]), occ(1, &[14])]);
        let far = score(C, &idfs, 50, &[occ(0, &[10]), occ(1, &[40])]);
        assert!(adjacent > near && near > far, "{adjacent} {near} {far}");
        assert_eq!(min_gap(&[1, 20, 40], &[25, 38]), 2);
    }

    #[test]
    fn coverage_is_the_share_of_idf_mass_present() {
        assert_eq!(coverage(&[3.0, 1.0], [0].into_iter()), 0.75);
        assert_eq!(coverage(&[3.0, 1.0], [0, 1, 0].into_iter()), 1.0);
        assert_eq!(coverage(&[], [].into_iter()), 0.0);
    }
}
