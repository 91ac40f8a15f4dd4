//! The soak's processes: its own PostgreSQL cluster, the API instances and
//! the workers, each a child of this process whose stderr goes to a file of
//! its own (one per incarnation), so that every log can be searched for
//! panics at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use super::serve_cmd::{ready_url, serve_command};
use crate::db::embedded::Embedded;

/// Where the soak keeps its cluster and its logs, and what its children
/// share.
pub(super) struct Ground {
    pub(super) dir: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) db_url: String,
    pub(super) secret: String,
}

/// One child process: its name (`api-0`, `worker-parse`), incarnation and
/// pid.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Starts so far, this one included.
    pub(super) starts: u32,
}

/// A started API instance: its process and base URL.
pub(super) struct Api {
    pub(super) proc: Proc,
    pub(super) url: String,
}

impl Ground {
    /// A temporary folder with a fresh cluster in it (never the shared one).
    pub(super) async fn open(secret: String) -> anyhow::Result<(Ground, Embedded)> {
        let dir = std::env::temp_dir().join(format!("ragctl-soak-{}", std::process::id()));
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).context("creating the soak's folder")?;
        let cluster = Embedded::start(&dir.join("pg")).await.with_context(|| {
            format!(
                "starting the soak's own PostgreSQL cluster in {} (left for a look)",
                dir.join("pg").display()
            )
        })?;
        let db_url = cluster.url.clone();
        Ok((
            Ground {
                dir,
                logs,
                db_url,
                secret,
            },
            cluster,
        ))
    }

    /// Every log file of every child, for the panic search.
    pub(super) fn log_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.logs) else {
            return vec![];
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        files
    }

    /// What every child of the soak shares: its folder, quiet logs to
    /// `log`, no embedding model (ingest chunks only), and `kill_on_drop`.
    fn settle(&self, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.current_dir(&self.dir)
            .env("RAG_LOG", "warn")
            .env_remove("RAG_EMBED_MODEL")
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        Ok(())
    }

    /// `ragctl worker KIND` (no JWT secret: workers never verify tokens).
    pub(super) fn worker(&self, kind: &str, starts: u32) -> anyhow::Result<Proc> {
        let name = format!("worker-{kind}");
        let log = self.logs.join(format!("{name}.{starts}.log"));
        let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["worker", kind])
            .env("DATABASE_URL", &self.db_url)
            .env_remove("RAG_JWT_SECRET")
            .env_remove("RAG_LISTEN_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.settle(&mut cmd, &log)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `ragctl worker {kind}`"))?;
        Ok(Proc::new(name, child, starts))
    }

    /// `ragctl serve --no-workers` (`serve_cmd`, as the benchmark starts
    /// it) on a free port; waits for its ready file.
    pub(super) async fn api(&self, index: usize, starts: u32) -> anyhow::Result<Api> {
        let name = format!("api-{index}");
        let log = self.logs.join(format!("{name}.{starts}.log"));
        let ready = self.dir.join(format!("{name}.{starts}.ready"));
        let mut cmd = serve_command(&self.db_url, &self.secret, &ready)?;
        self.settle(&mut cmd, &log)?;
        let child = cmd.spawn().context("starting `ragctl serve`")?;
        let mut proc = Proc::new(name, child, starts);
        match ready_url(&mut proc.child, &ready, Duration::from_secs(120)).await {
            Some(url) => Ok(Api { proc, url }),
            None => {
                proc.kill().await;
                bail!("{} did not start; see {}", proc.name, log.display())
            }
        }
    }
}

impl Proc {
    fn new(name: String, child: Child, starts: u32) -> Proc {
        let pid = child.id().unwrap_or_default();
        Proc {
            name,
            child,
            pid,
            starts,
        }
    }

    /// SIGKILL, and reap it.
    pub(super) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s.
    pub(super) async fn stop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let waited = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        if waited.is_err() {
            self.kill().await;
        }
    }

    /// Whether it exited without being told to.
    pub(super) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// A process's memory (KiB) and open descriptors, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// `VmRSS`: every resident page.
    pub(super) rss_kib: u64,
    /// `RssAnon`: the heap and stacks (what a leak grows).
    pub(super) anon_kib: u64,
    /// `RssFile`: the executable's and libraries' pages read in so far.
    pub(super) file_kib: u64,
    pub(super) fds: u64,
}

/// A process's usage now.
pub(super) fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Usage {
        rss_kib: kib("VmRSS:")?,
        anon_kib: kib("RssAnon:")?,
        file_kib: kib("RssFile:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
    })
}

/// Field by field, the median of `n` readings of `usage`, one a second
/// (sockets come and go between two readings).
pub(super) async fn usage_median(pid: u32, n: usize) -> Option<Usage> {
    let mut readings = Vec::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        readings.extend(usage(pid));
    }
    let median = |f: fn(&Usage) -> u64| {
        let mut v: Vec<u64> = readings.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    Some(Usage {
        rss_kib: median(|u| u.rss_kib)?,
        anon_kib: median(|u| u.anon_kib)?,
        file_kib: median(|u| u.file_kib)?,
        fds: median(|u| u.fds)?,
    })
}

/// One API instance as it is now: where it listens, its process, which
/// start it is and when it was ready.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) url: String,
    pub(super) pid: u32,
    pub(super) starts: u32,
    pub(super) since: std::time::Instant,
}

impl Api {
    pub(super) fn live(&self) -> Live {
        Live {
            url: self.url.clone(),
            pid: self.proc.pid,
            starts: self.proc.starts,
            since: std::time::Instant::now(),
        }
    }
}

/// The API instances, index by index; a restart replaces one.
pub(super) type Instances = std::sync::Arc<std::sync::RwLock<Vec<Live>>>;

/// The URL of instance `i` now.
pub(super) fn url_of(instances: &Instances, i: usize) -> String {
    let all = instances.read().expect("instances");
    all[i % all.len()].url.clone()
}

/// A progress line on stderr (the soak's own, so that its files import
/// nothing from the bench module itself).
pub(super) fn say(line: &str) {
    eprintln!("bench: soak: {line}");
}
