//! Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): each
//! ranking gives a chunk `1 / (RRF_K + rank)` (rank from 1), summed over
//! the rankings. Only ranks count, so BM25 scores and cosines, which live on
//! unrelated scales, need no normalising.

use std::collections::HashMap;

use uuid::Uuid;

use super::hit::Hit;

/// The paper's constant: large enough that the first few ranks of one list
/// do not drown agreement between lists (rank 1 alone is worth 1/61; rank 3
/// in both lists, 2/63, beats it).
pub const RRF_K: f64 = 60.0;

/// Fuses rankings (each best first) into one, best first. A chunk keeps the
/// first list's copy, with `score` replaced by its fused score, and takes
/// `cosine` from whichever list has one and the largest `coverage` seen.
/// Ties (equal fused score) go to the smaller `chunk_id`, so the order is
/// stable whatever the input order of equal chunks. A chunk listed twice in
/// one ranking counts once, at its better rank.
pub fn rrf(rankings: &[&[Hit]]) -> Vec<Hit> {
    let mut fused: Vec<(f64, Hit)> = Vec::new();
    let mut slot: HashMap<Uuid, usize> = HashMap::new();
    for ranking in rankings {
        let mut seen = std::collections::HashSet::new();
        for (i, hit) in ranking.iter().enumerate() {
            if !seen.insert(hit.chunk_id) {
                continue;
            }
            let gain = 1.0 / (RRF_K + (i + 1) as f64);
            match slot.get(&hit.chunk_id) {
                Some(&at) => merge(&mut fused[at], gain, hit),
                None => {
                    slot.insert(hit.chunk_id, fused.len());
                    fused.push((gain, hit.clone()));
                }
            }
        }
    }
    fused.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.chunk_id.cmp(&b.1.chunk_id))
    });
    fused
        .into_iter()
        .map(|(score, mut hit)| {
            hit.score = score as f32;
            hit
        })
        .collect()
}

fn merge(into: &mut (f64, Hit), gain: f64, other: &Hit) {
    into.0 += gain;
    let hit = &mut into.1;
    if hit.cosine.is_none() {
        hit.cosine = other.cosine;
    }
    hit.coverage = hit.coverage.max(other.coverage);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hit whose chunk id is `n` (so ties order by `n`).
    pub(crate) fn hit(n: u128, content: &str) -> Hit {
        Hit {
            chunk_id: Uuid::from_u128(n),
            document_id: Uuid::from_u128(1000 + n),
            filename: format!("doc{n}.md"),
            chunk_index: n as i32,
            content: content.into(),
            score: 0.0,
            coverage: 0.0,
            cosine: None,
        }
    }

    fn ids(hits: &[Hit]) -> Vec<u128> {
        hits.iter().map(|h| h.chunk_id.as_u128()).collect()
    }

    #[test]
    fn agreement_between_lists_beats_one_list_s_top() {
        let lexical: Vec<Hit> = [1, 2, 3].iter().map(|&n| hit(n, "")).collect();
        let dense: Vec<Hit> = [4, 5, 3].iter().map(|&n| hit(n, "")).collect();
        let fused = rrf(&[&lexical, &dense]);
        // 3 is third in both (2/63) and beats 1 and 4 (1/61 each); 1 and 4
        // tie, as do 2 and 5: the smaller id first.
        assert_eq!(ids(&fused), vec![3, 1, 4, 2, 5]);
        let expect = 2.0 / 63.0;
        assert!((f64::from(fused[0].score) - expect).abs() < 1e-6);
        assert!(fused[0].score > fused[1].score);
        assert_eq!(fused[1].score, fused[2].score);
    }

    #[test]
    fn ties_do_not_depend_on_input_order() {
        let a: Vec<Hit> = [7, 9].iter().map(|&n| hit(n, "")).collect();
        let b: Vec<Hit> = [9, 7].iter().map(|&n| hit(n, "")).collect();
        assert_eq!(ids(&rrf(&[&a, &b])), vec![7, 9]);
        assert_eq!(ids(&rrf(&[&b, &a])), vec![7, 9]);
    }

    #[test]
    fn one_list_empty_keeps_the_other_s_order() {
        let lexical: Vec<Hit> = [5, 2, 8].iter().map(|&n| hit(n, "")).collect();
        assert_eq!(ids(&rrf(&[&lexical, &[]])), vec![5, 2, 8]);
        assert_eq!(ids(&rrf(&[&[], &lexical])), vec![5, 2, 8]);
        assert!(rrf(&[&[], &[]]).is_empty());
        assert!(rrf(&[]).is_empty());
    }

    #[test]
    fn cosine_and_coverage_come_from_whichever_list_had_them() {
        let mut l = hit(1, "text");
        l.coverage = 0.75;
        l.score = 12.5; // BM25, replaced by the fused score
        let mut d = hit(1, "text");
        d.cosine = Some(0.62);
        d.coverage = 0.0;
        let fused = rrf(&[&[l], &[d]]);
        assert_eq!(fused.len(), 1);
        assert_eq!(fused[0].cosine, Some(0.62));
        assert_eq!(fused[0].coverage, 0.75);
        assert!((f64::from(fused[0].score) - 2.0 / 61.0).abs() < 1e-6);
    }

    #[test]
    fn a_chunk_repeated_in_one_list_counts_once() {
        let twice = vec![hit(1, ""), hit(1, ""), hit(2, "")];
        let fused = rrf(&[&twice]);
        assert_eq!(ids(&fused), vec![1, 2]);
        assert!((f64::from(fused[0].score) - 1.0 / 61.0).abs() < 1e-6);
        // 2 keeps its place in the list (rank 3), duplicates do not shift it.
        assert!((f64::from(fused[1].score) - 1.0 / 63.0).abs() < 1e-6);
    }
}
