//! The relevance floor: whether the retrieved passages can answer at all.
//! Below it the answer is "I could not find that in your documents."
//!
//! Two signals, each the best over the passages that would be cited:
//! - **coverage**: the share of the question's IDF mass whose terms occur
//!   in a passage. Rare terms weigh most, so "How often must the pressure
//!   valve be inspected?" over documents that know neither "pressure" nor
//!   "valve" stays under half however often "must" and "inspected" occur
//!   (the two missing terms are the rarest, about 57% of the mass), while a
//!   question whose terms all occur in one passage has coverage 1.
//! - **cosine** (with a model): all-MiniLM-L6-v2 puts unrelated text at
//!   about 0.0–0.2 and related text at 0.4 and above.
//!
//! Hybrid accepts when **either** signal clears its floor **and neither is
//! very weak**. Either: a paraphrase shares few words with its passage
//! (that is why dense retrieval exists), and a question of rare exact terms
//! (an error code, a name) may embed poorly, so one strong signal must be
//! enough. Neither very weak: a cosine under half its floor is in the
//! unrelated band, so a lexical match on its own words is a coincidence
//! ("must", "inspected" in a licence); a coverage under a quarter of its
//! floor means hardly any informative term of the question occurs in any
//! passage, so the closeness is topical, not an answer. The lexical veto is
//! lenient on purpose: a paraphrase legitimately matches few words.
//!
//! The floors are flags (`--min-relevance`, `--min-cosine`); the defaults
//! are provisional until calibrated on the QA set (`ragctl bench`).

use super::hit::Hit;

/// Default `--min-relevance`: half the question's IDF mass.
pub const DEFAULT_MIN_RELEVANCE: f32 = 0.5;
/// Default `--min-cosine`: above the unrelated band, below related text.
pub const DEFAULT_MIN_COSINE: f32 = 0.35;
/// In hybrid, a cosine under this share of `--min-cosine` vetoes.
pub const WEAK_COSINE_SHARE: f32 = 0.5;
/// In hybrid, a coverage under this share of `--min-relevance` vetoes.
pub const WEAK_COVERAGE_SHARE: f32 = 0.25;

/// The floors (`--min-relevance`, `--min-cosine`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    pub min_relevance: f32,
    pub min_cosine: f32,
}

/// The best of each signal over the passages that would be cited.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Signals {
    pub coverage: f32,
    /// `None` when no passage was scored by a model.
    pub cosine: Option<f32>,
}

impl Signals {
    pub fn of(hits: &[Hit]) -> Signals {
        Signals {
            coverage: hits.iter().map(|h| h.coverage).fold(0.0, f32::max),
            cosine: hits.iter().filter_map(|h| h.cosine).reduce(f32::max),
        }
    }
}

/// Why an answer is refused; the text goes to logs and the bench.
pub const LOW_COVERAGE: &str = "the passages cover too little of the question's informative terms";
pub const LOW_COSINE: &str = "no passage is close enough to the question (cosine)";
pub const NO_COSINE: &str = "no passage was scored by the model";
pub const WEAK_COSINE: &str =
    "the lexical match is a coincidence: the passages are unrelated by meaning (cosine)";
pub const WEAK_COVERAGE: &str =
    "hardly any informative term of the question occurs in the passages";

/// BM25 alone: coverage must clear the floor.
pub fn lexical(floor: Floor, s: Signals) -> Result<(), &'static str> {
    if s.coverage >= floor.min_relevance {
        Ok(())
    } else {
        Err(LOW_COVERAGE)
    }
}

/// Dense alone: the best cosine must clear the floor.
pub fn dense(floor: Floor, s: Signals) -> Result<(), &'static str> {
    match s.cosine {
        Some(c) if c >= floor.min_cosine => Ok(()),
        Some(_) => Err(LOW_COSINE),
        None => Err(NO_COSINE),
    }
}

/// Hybrid: either signal clears its floor, neither is very weak (see the
/// module comment). Without any cosine (the dense ranking was empty, e.g.
/// nothing embedded yet) it is BM25's rule.
pub fn hybrid(floor: Floor, s: Signals) -> Result<(), &'static str> {
    let Some(cosine) = s.cosine else {
        return lexical(floor, s);
    };
    if cosine < floor.min_cosine * WEAK_COSINE_SHARE {
        return Err(WEAK_COSINE);
    }
    if s.coverage < floor.min_relevance * WEAK_COVERAGE_SHARE {
        return Err(WEAK_COVERAGE);
    }
    if s.coverage >= floor.min_relevance || cosine >= floor.min_cosine {
        Ok(())
    } else {
        Err(LOW_COVERAGE)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rag::hit::QueryTerm;

    pub(crate) const FLOOR: Floor = Floor {
        min_relevance: DEFAULT_MIN_RELEVANCE,
        min_cosine: DEFAULT_MIN_COSINE,
    };

    /// BM25's IDF over 157 chunks (the corpus) for a lexeme in
    /// `df` of them.
    pub(crate) fn term(lexeme: &str, df: f32) -> QueryTerm {
        let n = 157.0_f32;
        QueryTerm {
            lexeme: lexeme.into(),
            idf: (1.0 + (n - df + 0.5) / (df + 0.5)).ln(),
        }
    }

    /// Coverage as `db::lexical` defines it: the IDF mass of the terms
    /// present over the question's whole mass.
    pub(crate) fn coverage(terms: &[QueryTerm], present: &[&str]) -> f32 {
        let total: f32 = terms.iter().map(|t| t.idf).sum();
        let got: f32 = terms
            .iter()
            .filter(|t| present.contains(&t.lexeme.as_str()))
            .map(|t| t.idf)
            .sum();
        got / total
    }

    /// "How often must the pressure valve be inspected?" as PostgreSQL
    /// sees it, over documents without pressure or valves.
    pub(crate) fn pressure_valve() -> Vec<QueryTerm> {
        vec![
            term("often", 5.0),
            term("must", 30.0),
            term("pressur", 0.0),
            term("valv", 0.0),
            term("inspect", 3.0),
        ]
    }

    fn signals(coverage: f32, cosine: Option<f32>) -> Signals {
        Signals { coverage, cosine }
    }

    #[test]
    fn the_pressure_valve_question_fails_on_a_licence() {
        let terms = pressure_valve();
        let best = coverage(&terms, &["often", "must", "inspect"]);
        assert!(best < 0.45, "{best}");
        assert_eq!(lexical(FLOOR, signals(best, None)), Err(LOW_COVERAGE));
        // With a model the licence's sentences are unrelated by meaning.
        assert_eq!(hybrid(FLOOR, signals(best, Some(0.12))), Err(WEAK_COSINE));
        assert_eq!(dense(FLOOR, signals(best, Some(0.12))), Err(LOW_COSINE));
    }

    #[test]
    fn a_question_whose_terms_all_match_passes() {
        let terms = pressure_valve();
        let all: Vec<&str> = terms.iter().map(|t| t.lexeme.as_str()).collect();
        let best = coverage(&terms, &all);
        assert!((best - 1.0).abs() < 1e-6);
        assert_eq!(lexical(FLOOR, signals(best, None)), Ok(()));
        assert_eq!(hybrid(FLOOR, signals(best, Some(0.3))), Ok(()));
        // Both rare terms present, only "often" missing: still answerable.
        let most = coverage(&terms, &["must", "pressur", "valv", "inspect"]);
        assert_eq!(lexical(FLOOR, signals(most, None)), Ok(()));
    }

    #[test]
    fn hybrid_takes_one_strong_signal_unless_the_other_is_very_weak() {
        // A paraphrase: few shared words, close in meaning.
        assert_eq!(hybrid(FLOOR, signals(0.2, Some(0.55))), Ok(()));
        // Rare exact terms that embed poorly.
        assert_eq!(hybrid(FLOOR, signals(0.9, Some(0.25))), Ok(()));
        // Neither strong.
        assert_eq!(hybrid(FLOOR, signals(0.4, Some(0.3))), Err(LOW_COVERAGE));
        // Strong coverage, unrelated meaning.
        assert_eq!(hybrid(FLOOR, signals(0.9, Some(0.1))), Err(WEAK_COSINE));
        // Strong cosine, no informative term anywhere.
        assert_eq!(hybrid(FLOOR, signals(0.05, Some(0.6))), Err(WEAK_COVERAGE));
        // No cosine at all: BM25's rule.
        assert_eq!(hybrid(FLOOR, signals(0.6, None)), Ok(()));
        assert_eq!(hybrid(FLOOR, signals(0.4, None)), Err(LOW_COVERAGE));
    }

    #[test]
    fn dense_needs_a_cosine_over_the_floor() {
        assert_eq!(dense(FLOOR, signals(0.0, Some(0.5))), Ok(()));
        assert_eq!(dense(FLOOR, signals(1.0, None)), Err(NO_COSINE));
    }

    #[test]
    fn signals_are_the_best_over_the_hits() {
        use crate::rag::fuse::tests::hit;
        let mut a = hit(1, "");
        a.coverage = 0.3;
        let mut b = hit(2, "");
        b.coverage = 0.7;
        b.cosine = Some(0.2);
        let mut c = hit(3, "");
        c.cosine = Some(0.5);
        let s = Signals::of(&[a, b, c]);
        assert_eq!(s, signals(0.7, Some(0.5)));
        assert_eq!(Signals::of(&[]), signals(0.0, None));
    }
}
