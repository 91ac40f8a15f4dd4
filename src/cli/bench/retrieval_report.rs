//! The report of `bench --retrieval`: one column per mode, and the issue's
//! targets (judged only on what ran).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::queue_stats::percentile;
use super::report::TargetCheck;
use super::retrieval_set::{QaSet, Quality};

/// Chat request latency (`POST /conversations/{id}/messages`), ms.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    pub(super) fn of(d: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return Latency {
                p50_ms: 0.0,
                p99_ms: 0.0,
            };
        }
        Latency {
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
        }
    }
}

/// The `--scale` phase of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    /// Chunks of the big user.
    pub chunks: u64,
    pub latency: Latency,
}

/// One mode's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRun {
    pub mode: String,
    pub chunks: u64,
    /// First upload → every corpus document `ingested`.
    pub ingest_secs: f64,
    pub chunks_per_sec: f64,
    pub quality: Quality,
    pub latency: Latency,
    pub scale: Option<Scale>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub set: String,
    pub documents: usize,
    pub chunk_size: Option<String>,
    pub chunk_overlap: Option<String>,
    pub embed_model: bool,
    pub runs: Vec<ModeRun>,
    pub targets: Vec<TargetCheck>,
}

impl RetrievalReport {
    pub(super) fn new(set: &QaSet, path: &Path, embed_model: bool, runs: Vec<ModeRun>) -> Self {
        let targets = judge(&runs);
        RetrievalReport {
            set: path.display().to_string(),
            documents: set.corpus.len(),
            chunk_size: std::env::var("RAG_CHUNK_SIZE").ok(),
            chunk_overlap: std::env::var("RAG_CHUNK_OVERLAP").ok(),
            embed_model,
            runs,
            targets,
        }
    }
}

fn check(
    key: &'static str,
    name: &str,
    target: &str,
    measured: Option<(String, bool)>,
) -> TargetCheck {
    TargetCheck {
        key,
        name: name.to_string(),
        target: target.to_string(),
        measured: measured.as_ref().map_or("not run".into(), |m| m.0.clone()),
        met: measured.map(|m| m.1),
    }
}

/// The targets, on the modes that ran.
fn judge(runs: &[ModeRun]) -> Vec<TargetCheck> {
    let get = |m: &str| runs.iter().find(|r| r.mode == m);
    let (bm25, dense, hybrid) = (get("bm25"), get("dense"), get("hybrid"));
    // The default mode: hybrid with a model, else bm25.
    let default = hybrid.or(bm25);
    let f = |v: f64| format!("{v:.2}");
    vec![
        check(
            "recall1",
            "hybrid recall@1",
            "≥ 0.80",
            hybrid.map(|h| (f(h.quality.recall_at_1), h.quality.recall_at_1 >= 0.8)),
        ),
        check(
            "mrr",
            "hybrid MRR − bm25 MRR",
            "≥ 0.10",
            hybrid.zip(bm25).map(|(h, b)| {
                let d = h.quality.mrr - b.quality.mrr;
                (f(d), d >= 0.1 - 1e-9)
            }),
        ),
        check(
            "no_answer",
            "default mode: unanswerable with no sources",
            "1.00",
            default.map(|d| {
                (
                    f(d.quality.no_answer_accuracy),
                    d.quality.no_answer_accuracy >= 1.0,
                )
            }),
        ),
        check(
            "recall5",
            "default mode: recall@5",
            "≥ 0.95",
            default.map(|d| (f(d.quality.recall_at_5), d.quality.recall_at_5 >= 0.95)),
        ),
        check(
            "search_p99",
            "default mode at --scale: chat request p99",
            "≤ 50 ms",
            default.and_then(|d| d.scale.as_ref()).map(|s| {
                (
                    format!("{:.1} ms ({} chunks)", s.latency.p99_ms, s.chunks),
                    s.latency.p99_ms <= 50.0,
                )
            }),
        ),
        check(
            "ingest",
            "dense: ingest (parse + chunk + embed)",
            "≥ 100 chunks/s",
            dense.map(|d| {
                (
                    format!("{:.0} chunks/s", d.chunks_per_sec),
                    d.chunks_per_sec >= 100.0,
                )
            }),
        ),
    ]
}

/// A row of the table: its name, and its cell for one mode.
type Row = (&'static str, fn(&ModeRun) -> String);

const ROWS: [Row; 12] = [
    ("questions (answerable + not)", |m| {
        format!("{} + {}", m.quality.answerable, m.quality.unanswerable)
    }),
    ("recall@1", |m| format!("{:.2}", m.quality.recall_at_1)),
    ("recall@5", |m| format!("{:.2}", m.quality.recall_at_5)),
    ("MRR", |m| format!("{:.3}", m.quality.mrr)),
    ("no-answer accuracy", |m| {
        format!("{:.2}", m.quality.no_answer_accuracy)
    }),
    ("answerable with sources", |m| {
        format!("{:.2}", m.quality.with_sources)
    }),
    ("answer text states the fact", |m| {
        format!("{:.2}", m.quality.stated)
    }),
    ("chat p50 / p99 (ms)", |m| {
        format!("{:.1} / {:.1}", m.latency.p50_ms, m.latency.p99_ms)
    }),
    ("chunks", |m| m.chunks.to_string()),
    ("ingest (s)", |m| format!("{:.2}", m.ingest_secs)),
    ("ingest chunks/s", |m| format!("{:.0}", m.chunks_per_sec)),
    ("at --scale: chunks, p50 / p99 (ms)", |m| {
        m.scale.as_ref().map_or("-".into(), |s| {
            format!(
                "{}, {:.1} / {:.1}",
                s.chunks, s.latency.p50_ms, s.latency.p99_ms
            )
        })
    }),
];

/// The side-by-side Markdown table, then the targets.
pub(super) fn render(r: &RetrievalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "retrieval on {} ({} documents; RAG_CHUNK_SIZE {}, RAG_CHUNK_OVERLAP {})\n",
        r.set,
        r.documents,
        r.chunk_size.as_deref().unwrap_or("default"),
        r.chunk_overlap.as_deref().unwrap_or("default"),
    );
    if !r.embed_model {
        let _ = writeln!(s, "no --embed-model: dense and hybrid did not run\n");
    }
    let _ = write!(s, "| |");
    for run in &r.runs {
        let _ = write!(s, " {} |", run.mode);
    }
    let _ = writeln!(s, "\n|---|{}", "---:|".repeat(r.runs.len()));
    for (name, cell) in ROWS {
        let _ = write!(s, "| {name} |");
        for run in &r.runs {
            let _ = write!(s, " {} |", cell(run));
        }
        let _ = writeln!(s);
    }
    super::render::target_lines(&mut s, &r.targets, &[]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: &str, r1: f64, mrr: f64) -> ModeRun {
        ModeRun {
            mode: mode.into(),
            chunks: 10,
            ingest_secs: 1.0,
            chunks_per_sec: 10.0,
            quality: Quality {
                answerable: 4,
                unanswerable: 2,
                recall_at_1: r1,
                recall_at_5: 1.0,
                mrr,
                no_answer_accuracy: 1.0,
                with_sources: 1.0,
                stated: 0.5,
            },
            latency: Latency::of(&[Duration::from_millis(10), Duration::from_millis(30)]),
            scale: None,
        }
    }

    #[test]
    fn targets_of_modes_that_did_not_run_are_not_judged() {
        let t = judge(&[run("bm25", 0.5, 0.6)]);
        let met = |k: &str| t.iter().find(|c| c.key == k).unwrap().met;
        assert_eq!(met("recall1"), None);
        assert_eq!(met("mrr"), None);
        assert_eq!(met("ingest"), None);
        assert_eq!(met("search_p99"), None);
        assert_eq!(met("no_answer"), Some(true));
        assert_eq!(met("recall5"), Some(true));
    }

    #[test]
    fn hybrid_is_judged_against_bm25() {
        let t = judge(&[run("bm25", 0.5, 0.6), run("hybrid", 0.8, 0.7)]);
        let met = |k: &str| t.iter().find(|c| c.key == k).unwrap().met;
        assert_eq!(met("recall1"), Some(true));
        assert_eq!(met("mrr"), Some(true));
        let t = judge(&[run("bm25", 0.5, 0.65), run("hybrid", 0.79, 0.7)]);
        let met = |k: &str| t.iter().find(|c| c.key == k).unwrap().met;
        assert_eq!(met("recall1"), Some(false));
        assert_eq!(met("mrr"), Some(false));
        let l = Latency::of(&[Duration::from_millis(10), Duration::from_millis(30)]);
        assert_eq!((l.p50_ms, l.p99_ms), (10.0, 30.0));
    }
}
