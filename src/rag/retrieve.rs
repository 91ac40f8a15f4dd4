//! The chat pipeline's decision, after the rankers have run: fuse the
//! rankings the mode asks for, keep the best `k`, and apply the relevance
//! floor. Pure: the caller runs `db::lexical::search`, the dense ranker
//! and `db::lexical::coverage` (for dense-only hits) first.

use serde::Serialize;

use super::fuse;
use super::hit::{Hit, Lexical, QueryTerm};
use super::relevance::{self, Floor, Signals};

/// Which rankings answer (`--retrieval`, resolved: `auto` is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Dense,
    Hybrid,
}

impl Mode {
    /// The metrics label and the flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Dense => "dense",
            Mode::Hybrid => "hybrid",
        }
    }

    /// Whether the pipeline needs the dense ranker.
    pub fn wants_dense(self) -> bool {
        self != Mode::Bm25
    }
}

/// The retrieval settings of the API (`--retrieval`, `--min-relevance`,
/// `--min-cosine`, `--passages`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    pub mode: Mode,
    pub min_relevance: f32,
    pub min_cosine: f32,
    /// Passages an answer draws on (and cites).
    pub k: usize,
}

impl Retrieval {
    fn floor(&self) -> Floor {
        Floor {
            min_relevance: self.min_relevance,
            min_cosine: self.min_cosine,
        }
    }
}

/// What to answer from, and whether to answer at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The question's terms (empty: only stop words).
    pub terms: Vec<QueryTerm>,
    /// The best `k` passages, best first (kept when not answerable, for
    /// logs and the bench; the answer then cites none).
    pub hits: Vec<Hit>,
    pub answerable: bool,
    /// Why (not) answerable, for logs.
    pub why: &'static str,
    /// The mode that ran: `Bm25` when the dense ranker failed.
    pub mode: Mode,
    /// The dense ranker was asked for and failed: BM25 alone answered.
    pub fell_back: bool,
    pub signals: Signals,
}

pub const ANSWERABLE: &str = "the passages clear the relevance floor";
pub const NO_TERMS: &str = "the question has no informative terms (only stop words)";
pub const NO_HITS: &str = "no passage matched the question";

/// Fuses the rankings `cfg.mode` asks for, keeps the best `cfg.k`, and
/// decides. `dense` is `None` when the dense ranker failed (or was not
/// run): then BM25 alone answers, with BM25's floor. Coverage must be
/// filled for every hit, dense-only ones included.
pub fn decide(cfg: &Retrieval, lexical: Lexical, dense: Option<Vec<Hit>>) -> Decision {
    let fell_back = cfg.mode.wants_dense() && dense.is_none();
    let (mode, mut hits) = match (cfg.mode, dense) {
        (Mode::Dense, Some(d)) => (Mode::Dense, d),
        (Mode::Hybrid, Some(d)) => (Mode::Hybrid, fuse::rrf(&[&lexical.hits, &d])),
        _ => (Mode::Bm25, lexical.hits),
    };
    hits.truncate(cfg.k);
    let signals = Signals::of(&hits);
    let verdict = if lexical.terms.is_empty() {
        Err(NO_TERMS)
    } else if hits.is_empty() {
        Err(NO_HITS)
    } else {
        match mode {
            Mode::Bm25 => relevance::lexical(cfg.floor(), signals),
            Mode::Dense => relevance::dense(cfg.floor(), signals),
            Mode::Hybrid => relevance::hybrid(cfg.floor(), signals),
        }
    };
    Decision {
        terms: lexical.terms,
        hits,
        answerable: verdict.is_ok(),
        why: verdict.err().unwrap_or(ANSWERABLE),
        mode,
        fell_back,
        signals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::fuse::tests::hit;
    use crate::rag::relevance::tests::{coverage, pressure_valve, term};

    fn cfg(mode: Mode, k: usize) -> Retrieval {
        Retrieval {
            mode,
            min_relevance: relevance::DEFAULT_MIN_RELEVANCE,
            min_cosine: relevance::DEFAULT_MIN_COSINE,
            k,
        }
    }

    fn covered(n: u128, coverage: f32, cosine: Option<f32>) -> Hit {
        let mut h = hit(n, "text");
        h.coverage = coverage;
        h.cosine = cosine;
        h
    }

    fn ids(d: &Decision) -> Vec<u128> {
        d.hits.iter().map(|h| h.chunk_id.as_u128()).collect()
    }

    #[test]
    fn bm25_keeps_the_lexical_order_and_k() {
        let lexical = Lexical {
            terms: vec![term("refund", 2.0)],
            hits: vec![
                covered(3, 1.0, None),
                covered(1, 1.0, None),
                covered(2, 1.0, None),
            ],
        };
        let d = decide(&cfg(Mode::Bm25, 2), lexical, None);
        assert_eq!(ids(&d), vec![3, 1]);
        assert!(d.answerable, "{}", d.why);
        assert_eq!((d.mode, d.fell_back), (Mode::Bm25, false));
    }

    #[test]
    fn hybrid_fuses_and_falls_back_to_bm25_when_dense_failed() {
        let terms = vec![term("refund", 2.0)];
        let lexical = Lexical {
            terms: terms.clone(),
            hits: vec![covered(1, 0.2, None), covered(2, 0.2, None)],
        };
        let dense = vec![covered(2, 0.2, Some(0.6)), covered(3, 0.0, Some(0.5))];
        let d = decide(&cfg(Mode::Hybrid, 5), lexical.clone(), Some(dense));
        assert_eq!(ids(&d), vec![2, 1, 3]);
        assert_eq!(d.mode, Mode::Hybrid);
        // A paraphrase: low coverage, strong cosine.
        assert!(d.answerable, "{}", d.why);

        let d = decide(&cfg(Mode::Hybrid, 5), lexical.clone(), None);
        assert_eq!(ids(&d), vec![1, 2]);
        assert_eq!((d.mode, d.fell_back), (Mode::Bm25, true));
        // BM25's floor: 0.2 coverage is not enough.
        assert!(!d.answerable);
        assert_eq!(d.why, relevance::LOW_COVERAGE);

        let d = decide(&cfg(Mode::Dense, 5), lexical, None);
        assert_eq!((d.mode, d.fell_back), (Mode::Bm25, true));
    }

    #[test]
    fn stop_words_only_is_not_answerable() {
        let lexical = Lexical {
            terms: vec![],
            hits: vec![],
        };
        let dense = vec![covered(1, 0.0, Some(0.9))];
        for mode in [Mode::Bm25, Mode::Dense, Mode::Hybrid] {
            let d = decide(&cfg(mode, 5), lexical.clone(), Some(dense.clone()));
            assert!(!d.answerable, "{mode:?}");
            assert_eq!(d.why, NO_TERMS);
        }
    }

    #[test]
    fn the_pressure_valve_question_is_refused_and_a_matching_one_answered() {
        let terms = pressure_valve();
        let licence = coverage(&terms, &["often", "must", "inspect"]);
        let lexical = Lexical {
            terms: terms.clone(),
            hits: vec![covered(1, licence, None), covered(2, 0.1, None)],
        };
        let d = decide(&cfg(Mode::Bm25, 5), lexical, None);
        assert!(!d.answerable);
        assert_eq!(d.why, relevance::LOW_COVERAGE);
        assert_eq!(d.hits.len(), 2, "kept for logs");

        let manual = coverage(&terms, &["often", "must", "pressur", "valv", "inspect"]);
        let lexical = Lexical {
            terms,
            hits: vec![covered(1, licence, None), covered(2, manual, None)],
        };
        let d = decide(&cfg(Mode::Bm25, 5), lexical, None);
        assert!(d.answerable, "{}", d.why);
        assert_eq!(d.why, ANSWERABLE);
    }

    #[test]
    fn no_hits_is_not_answerable() {
        let lexical = Lexical {
            terms: vec![term("zebra", 0.0)],
            hits: vec![],
        };
        let d = decide(&cfg(Mode::Hybrid, 5), lexical, Some(vec![]));
        assert!(!d.answerable);
        assert_eq!(d.why, NO_HITS);
    }
}
