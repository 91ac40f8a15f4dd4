//! The embedding flags (`RuntimeOpts` flattens them, so `serve` hands them
//! to its ingest worker) and loading the embedder they name.

use std::path::PathBuf;

use super::embedder::Embedder;
use super::error::EmbedError;
use super::{local, remote};

#[derive(clap::Args, Debug, Clone, Default, serde::Serialize)]
pub struct EmbedOpts {
    /// Directory of a sentence-transformers model (all-MiniLM-L6-v2:
    /// model.safetensors, config.json, tokenizer.json); unset = no dense
    /// retrieval unless --embed-url is given.
    #[arg(long, env = "RAG_EMBED_MODEL", value_name = "DIR")]
    pub embed_model: Option<PathBuf>,
    /// OpenAI-compatible embeddings endpoint (the full URL, e.g.
    /// http://localhost:11434/v1/embeddings); instead of --embed-model.
    #[arg(long, env = "RAG_EMBED_URL", value_name = "URL")]
    pub embed_url: Option<String>,
    /// Bearer key for --embed-url. Never on a command line: `serve` hands
    /// it to its workers in their environment.
    #[arg(long, env = "RAG_EMBED_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub embed_api_key: Option<String>,
    /// Model name sent to --embed-url (part of the id stored with vectors).
    #[arg(long, env = "RAG_EMBED_NAME", default_value = "all-MiniLM-L6-v2")]
    pub embed_name: String,
    /// Vector length of --embed-url, if known; otherwise learned from its
    /// first answer, and every later answer must match it.
    #[arg(long, env = "RAG_EMBED_DIMS")]
    pub embed_dims: Option<usize>,
}

impl EmbedOpts {
    /// The configured embedder, or `None`. A missing or corrupt model
    /// directory, a malformed URL or both flags at once fail here, naming
    /// the flag; an endpoint that is down does not (a runtime condition).
    pub fn load(&self) -> Result<Option<Embedder>, EmbedError> {
        match (&self.embed_model, set(&self.embed_url)) {
            (Some(_), Some(_)) => Err(EmbedError::Config {
                flag: "--embed-model",
                var: "RAG_EMBED_MODEL",
                reason: "give either --embed-model / RAG_EMBED_MODEL or --embed-url / RAG_EMBED_URL, not both".into(),
            }),
            (Some(dir), None) => {
                if !dir.is_dir() {
                    return Err(EmbedError::Config {
                        flag: "--embed-model",
                        var: "RAG_EMBED_MODEL",
                        reason: format!("{} is not a directory", dir.display()),
                    });
                }
                let model = local::LocalModel::load(dir)?;
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                Ok(Some(Embedder::local(model, cpus)))
            }
            (None, Some(url)) => {
                if self.embed_dims == Some(0) {
                    return Err(EmbedError::Config {
                        flag: "--embed-dims",
                        var: "RAG_EMBED_DIMS",
                        reason: "must be > 0".into(),
                    });
                }
                let key = set(&self.embed_api_key).map(str::to_string);
                let client = remote::Client::new(url, &self.embed_name, key, self.embed_dims)?;
                Ok(Some(Embedder::Remote(client)))
            }
            (None, None) => Ok(None),
        }
    }
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(model: Option<&str>, url: Option<&str>) -> EmbedOpts {
        EmbedOpts {
            embed_model: model.map(PathBuf::from),
            embed_url: url.map(str::to_string),
            embed_name: "m".into(),
            ..EmbedOpts::default()
        }
    }

    #[test]
    fn bad_configurations_name_their_flag() {
        let both = opts(Some("/tmp"), Some("http://h/v1/embeddings"))
            .load()
            .err()
            .unwrap();
        let both = both.to_string();
        assert!(
            both.contains("--embed-model") && both.contains("--embed-url"),
            "{both}"
        );
        let missing = opts(Some("/nonexistent/model"), None).load().err().unwrap();
        assert!(
            missing
                .to_string()
                .contains("--embed-model / RAG_EMBED_MODEL"),
            "{missing}"
        );
        let url = opts(None, Some("localhost:9")).load().err().unwrap();
        assert!(
            url.to_string().contains("--embed-url / RAG_EMBED_URL"),
            "{url}"
        );
        assert!(opts(None, None).load().unwrap().is_none());
        assert!(opts(None, Some("  ")).load().unwrap().is_none());
        let ok = opts(None, Some("http://h:1/v1/embeddings"))
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(ok.id(), "h:1/m");
    }
}
