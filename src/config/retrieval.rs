//! The API's retrieval flags (`serve` only: workers never answer).

use super::error::ConfigError;
use crate::rag::relevance::{DEFAULT_MIN_COSINE, DEFAULT_MIN_RELEVANCE};
use crate::rag::retrieve::{Mode, Retrieval};

/// Most passages an answer may draw on (`--passages`).
pub const MAX_PASSAGES: usize = 20;

/// `--retrieval`: which rankings answer.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetrievalChoice {
    /// Hybrid when an embedding model or endpoint is configured, else BM25.
    #[default]
    Auto,
    /// BM25 alone.
    Bm25,
    /// The embedding model alone (needs --embed-model or --embed-url).
    Dense,
    /// Reciprocal rank fusion of BM25 and dense (needs a model).
    Hybrid,
}

impl RetrievalChoice {
    fn parse(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| {
            format!("{s:?}: expected auto, bm25, dense or hybrid (--retrieval / RAG_RETRIEVAL)")
        })
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RetrievalOpts {
    /// Which rankings answer chat: auto, bm25, dense or hybrid (auto =
    /// hybrid when an embedding model is configured, else bm25).
    #[arg(long = "retrieval", env = "RAG_RETRIEVAL", default_value = "auto",
          value_parser = RetrievalChoice::parse)]
    pub retrieval: RetrievalChoice,
    /// The relevance floor: the best passage must hold this share (0 to 1)
    /// of the question's IDF mass, else the answer is "I could not find
    /// that in your documents."
    #[arg(long, env = "RAG_MIN_RELEVANCE", default_value_t = DEFAULT_MIN_RELEVANCE,
          value_parser = parse_min_relevance)]
    pub min_relevance: f32,
    /// With a model: the cosine similarity (0 to 1) the best passage must
    /// reach (all-MiniLM-L6-v2: unrelated text about 0.0-0.2).
    #[arg(long, env = "RAG_MIN_COSINE", default_value_t = DEFAULT_MIN_COSINE,
          value_parser = parse_min_cosine)]
    pub min_cosine: f32,
    /// Passages an answer draws on and cites (1 to 20).
    #[arg(long, env = "RAG_PASSAGES", default_value_t = 5, value_parser = parse_passages)]
    pub passages: usize,
    /// Memory for users' vectors kept for dense scoring, in MiB (least
    /// recently asked users go first; 0 reads them from PostgreSQL for
    /// every question).
    #[arg(long, env = "RAG_VECTOR_CACHE_MIB", default_value_t = 256)]
    pub vector_cache_mib: usize,
}

fn unit(s: &str, names: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected a number from 0 to 1 ({names})")),
    }
}

fn parse_min_relevance(s: &str) -> Result<f32, String> {
    unit(s, "--min-relevance / RAG_MIN_RELEVANCE")
}

fn parse_min_cosine(s: &str) -> Result<f32, String> {
    unit(s, "--min-cosine / RAG_MIN_COSINE")
}

fn parse_passages(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_PASSAGES).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: expected a whole number from 1 to {MAX_PASSAGES} (--passages / RAG_PASSAGES)"
        )),
    }
}

impl RetrievalOpts {
    pub fn vector_cache_bytes(&self) -> usize {
        self.vector_cache_mib.saturating_mul(1 << 20)
    }

    /// The settings the API runs with. `embedder`: whether an embedding
    /// model or endpoint is configured (`--embed-model`, `--embed-url`);
    /// `auto` becomes hybrid with one and BM25 without, and `dense` or
    /// `hybrid` without one is an error.
    pub fn resolve(&self, embedder: bool) -> Result<Retrieval, ConfigError> {
        let mode = match (self.retrieval, embedder) {
            (RetrievalChoice::Auto, true) | (RetrievalChoice::Hybrid, true) => Mode::Hybrid,
            (RetrievalChoice::Auto, false) | (RetrievalChoice::Bm25, _) => Mode::Bm25,
            (RetrievalChoice::Dense, true) => Mode::Dense,
            (RetrievalChoice::Dense | RetrievalChoice::Hybrid, false) => {
                return Err(ConfigError::Invalid {
                    flag: "--retrieval",
                    var: "RAG_RETRIEVAL",
                    problem: "dense and hybrid need an embedding model: pass --embed-model \
                              (RAG_EMBED_MODEL) or --embed-url (RAG_EMBED_URL), or use \
                              --retrieval bm25"
                        .into(),
                });
            }
        };
        Ok(Retrieval {
            mode,
            min_relevance: self.min_relevance,
            min_cosine: self.min_cosine,
            k: self.passages,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        opts: RetrievalOpts,
    }

    fn parse(args: &[&str]) -> Result<RetrievalOpts, String> {
        let argv = std::iter::once("ragctl").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| c.opts)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn auto_is_hybrid_with_a_model_and_bm25_without() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.retrieval, RetrievalChoice::Auto);
        assert_eq!(d.resolve(true).unwrap().mode, Mode::Hybrid);
        assert_eq!(d.resolve(false).unwrap().mode, Mode::Bm25);
        let r = d.resolve(false).unwrap();
        assert_eq!((r.k, r.min_relevance, r.min_cosine), (5, 0.5, 0.35));
        let bm25 = parse(&["--retrieval", "BM25"]).unwrap();
        assert_eq!(bm25.resolve(true).unwrap().mode, Mode::Bm25);
        let dense = parse(&["--retrieval=dense"]).unwrap();
        assert_eq!(dense.resolve(true).unwrap().mode, Mode::Dense);
    }

    #[test]
    fn dense_or_hybrid_without_a_model_is_a_start_error_naming_the_flags() {
        for mode in ["dense", "hybrid"] {
            let e = parse(&["--retrieval", mode]).unwrap().resolve(false);
            let e = e.unwrap_err().to_string();
            assert!(e.contains("--retrieval / RAG_RETRIEVAL"), "{e}");
            assert!(
                e.contains("--embed-model") && e.contains("--embed-url"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_flag_and_the_variable() {
        for (args, names) in [
            (
                &["--retrieval", "vector"][..],
                "--retrieval / RAG_RETRIEVAL",
            ),
            (
                &["--min-relevance", "1.5"],
                "--min-relevance / RAG_MIN_RELEVANCE",
            ),
            (
                &["--min-relevance=-0.1"],
                "--min-relevance / RAG_MIN_RELEVANCE",
            ),
            (
                &["--min-relevance", "half"],
                "--min-relevance / RAG_MIN_RELEVANCE",
            ),
            (&["--min-cosine", "2"], "--min-cosine / RAG_MIN_COSINE"),
            (&["--passages", "0"], "--passages / RAG_PASSAGES"),
            (&["--passages", "21"], "--passages / RAG_PASSAGES"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(names), "{args:?}: {e}");
        }
        let ok = parse(&[
            "--min-relevance",
            "0",
            "--min-cosine",
            "1",
            "--passages",
            "20",
        ])
        .unwrap();
        let r = ok.resolve(false).unwrap();
        assert_eq!((r.min_relevance, r.min_cosine, r.k), (0.0, 1.0, 20));
    }
}
