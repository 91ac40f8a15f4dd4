//! The ready file: one JSON line `{"url", "port", "pid"}` that `serve`
//! writes once its API socket is listening, so a harness needs no log
//! parsing. Written to a temporary file then renamed: a reader sees the
//! whole line or no file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Base URL of the API, `http://host:port`.
    pub url: String,
    pub port: u16,
    pub pid: u32,
}

impl Ready {
    /// Writes `self` to `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = temporary(path);
        let mut file = std::fs::File::create(&tmp)?;
        let line = serde_json::to_string(self).map_err(std::io::Error::other)?;
        writeln!(file, "{line}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The file's content, `None` while it does not exist.
    pub fn read(path: &Path) -> std::io::Result<Option<Ready>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(text.trim())
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Polls `path` until it appears, `alive` says the server died (then
    /// `Ok(None)`), or `patience` runs out (an error).
    pub async fn wait(
        path: &Path,
        patience: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> std::io::Result<Option<Ready>> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(ready) = Ready::read(path)? {
                return Ok(Some(ready));
            }
            if !alive() {
                return Ok(None);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no ready file at {} after {patience:?}", path.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_then_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert_eq!(Ready::read(&path).unwrap(), None);
        let ready = Ready {
            url: "http://127.0.0.1:4321".into(),
            port: 4321,
            pid: 7,
        };
        ready.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let got = Ready::wait(&path, Duration::from_secs(5), || true).await;
        assert_eq!(got.unwrap(), Some(ready));
    }

    #[tokio::test]
    async fn a_dead_server_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let got = Ready::wait(&dir.path().join("r"), Duration::from_secs(60), || false).await;
        assert_eq!(got.unwrap(), None);
    }
}
