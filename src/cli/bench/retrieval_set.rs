//! The QA set of `ragctl bench --retrieval` (format: fixtures/qa/README.md)
//! and the retrieval metrics computed from each question's ranked sources.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// One line of the set file.
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub id: String,
    /// File of the corpus the answer comes from; `None` when unanswerable.
    pub file: Option<String>,
    pub question: String,
    /// Short exact phrase of the answering passage; `None`: unanswerable.
    pub answer: Option<String>,
}

/// A set and its corpus (the set file's sibling `corpus/` directory).
#[derive(Debug)]
pub struct QaSet {
    pub questions: Vec<Question>,
    pub corpus: Vec<PathBuf>,
}

impl QaSet {
    pub fn load(set: &Path) -> anyhow::Result<QaSet> {
        let text = std::fs::read_to_string(set)
            .with_context(|| format!("--retrieval: cannot read {}", set.display()))?;
        let mut questions = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let q: Question = serde_json::from_str(line)
                .with_context(|| format!("--retrieval: {} line {}", set.display(), n + 1))?;
            if q.answer.is_some() != q.file.is_some() {
                bail!(
                    "--retrieval: {} line {}: `file` and `answer` go together",
                    set.display(),
                    n + 1
                );
            }
            questions.push(q);
        }
        let dir = set.parent().unwrap_or(Path::new(".")).join("corpus");
        let mut corpus: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("--retrieval: corpus directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        corpus.sort();
        if questions.is_empty() || corpus.is_empty() {
            bail!(
                "--retrieval: {} has no questions or no corpus",
                set.display()
            );
        }
        Ok(QaSet { questions, corpus })
    }
}

/// Whitespace runs become one space, ends trimmed: chunk boundaries and
/// extraction may rewrap lines.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` contains `phrase` once whitespace is normalised.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    normalize_ws(text).contains(&normalize_ws(phrase))
}

/// What one question got: for answerable ones, the 1-based rank of the
/// first source holding the phrase (None: not in the sources).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Answerable {
        rank: Option<usize>,
        sources: usize,
        stated: bool,
    },
    Unanswerable {
        sources: usize,
    },
}

/// Quality numbers of one mode.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Quality {
    pub answerable: usize,
    pub unanswerable: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub mrr: f64,
    /// Unanswerable questions answered with no sources.
    pub no_answer_accuracy: f64,
    /// Answerable questions answered with at least one source.
    pub with_sources: f64,
    /// Answerable questions whose answer text contains the phrase.
    pub stated: f64,
}

pub fn quality(outcomes: &[Outcome]) -> Quality {
    let mut q = Quality::default();
    let (mut r1, mut r5, mut rr, mut none, mut with, mut stated) = (0, 0, 0.0, 0, 0, 0);
    for o in outcomes {
        match *o {
            Outcome::Answerable {
                rank,
                sources,
                stated: s,
            } => {
                q.answerable += 1;
                r1 += usize::from(rank == Some(1));
                r5 += usize::from(rank.is_some_and(|r| r <= 5));
                rr += rank.map_or(0.0, |r| 1.0 / r as f64);
                with += usize::from(sources > 0);
                stated += usize::from(s);
            }
            Outcome::Unanswerable { sources } => {
                q.unanswerable += 1;
                none += usize::from(sources == 0);
            }
        }
    }
    let per = |n: f64, d: usize| if d == 0 { 0.0 } else { n / d as f64 };
    q.recall_at_1 = per(r1 as f64, q.answerable);
    q.recall_at_5 = per(r5 as f64, q.answerable);
    q.mrr = per(rr, q.answerable);
    q.with_sources = per(with as f64, q.answerable);
    q.stated = per(stated as f64, q.answerable);
    q.no_answer_accuracy = per(none as f64, q.unanswerable);
    q
}

/// 1-based rank of the first of `sources` (chunk texts, best first) that
/// contains `phrase`.
pub fn rank_of(sources: &[String], phrase: &str) -> Option<usize> {
    let phrase = normalize_ws(phrase);
    sources
        .iter()
        .position(|s| normalize_ws(s).contains(&phrase))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::extract::{detect_mime, extract_text};

    #[test]
    fn metrics_on_a_hand_made_example() {
        let src = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rank_of(&src(&["x", "the  big\ncat", "big cat"]), "big cat"),
            Some(2)
        );
        assert_eq!(rank_of(&src(&["x"]), "cat"), None);
        let outcomes = [
            Outcome::Answerable {
                rank: Some(1),
                sources: 3,
                stated: true,
            },
            Outcome::Answerable {
                rank: Some(2),
                sources: 3,
                stated: false,
            },
            Outcome::Answerable {
                rank: Some(5),
                sources: 5,
                stated: false,
            },
            Outcome::Answerable {
                rank: None,
                sources: 0,
                stated: false,
            },
            Outcome::Unanswerable { sources: 0 },
            Outcome::Unanswerable { sources: 2 },
        ];
        let q = quality(&outcomes);
        assert_eq!((q.answerable, q.unanswerable), (4, 2));
        assert_eq!(q.recall_at_1, 0.25);
        assert_eq!(q.recall_at_5, 0.75);
        assert!((q.mrr - (1.0 + 0.5 + 0.2) / 4.0).abs() < 1e-12);
        assert_eq!(q.no_answer_accuracy, 0.5);
        assert_eq!(q.with_sources, 0.75);
        assert_eq!(q.stated, 0.25);
    }

    #[test]
    fn shipped_qa_set_is_complete_and_every_phrase_is_in_its_file() {
        let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qa/set.jsonl");
        let qa = QaSet::load(&set).unwrap();
        let answerable = qa.questions.iter().filter(|q| q.answer.is_some()).count();
        let unanswerable = qa.questions.len() - answerable;
        assert!(answerable >= 40, "{answerable} answerable");
        assert!(unanswerable >= 8, "{unanswerable} unanswerable");
        let dir = set.parent().unwrap().join("corpus");
        for q in &qa.questions {
            let (Some(file), Some(answer)) = (&q.file, &q.answer) else {
                continue;
            };
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let mime = detect_mime(file, None, &bytes).unwrap();
            let text = extract_text(&bytes, mime).unwrap();
            assert!(
                contains_phrase(&text, answer),
                "{}: {answer:?} not in {file}",
                q.id
            );
        }
    }
}
