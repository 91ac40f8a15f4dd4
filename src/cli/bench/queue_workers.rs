//! The worker processes of a queue configuration: `ragctl worker parse`
//! and `ragctl worker ingest`, started on the benchmark's database with the
//! slots per process in `RAG_WORKER_CONCURRENCY` (a build without the
//! variable ignores it and runs one slot), and no JWT secret.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Log lines kept per worker, to explain a failure.
const TAIL: usize = 20;

/// One worker process.
struct Worker {
    name: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// Every worker process of a configuration.
pub(super) struct Workers {
    procs: Vec<Worker>,
}

/// What the workers need: the database, the events channel, and whether
/// to copy their log to stderr.
pub(super) struct Spec<'a> {
    pub(super) db_url: &'a str,
    pub(super) channel: &'a str,
    pub(super) copy_log: bool,
}

impl Workers {
    /// `processes` workers of each kind in `kinds`, `slots` each.
    pub(super) fn start(
        spec: &Spec<'_>,
        kinds: &[&str],
        processes: usize,
        slots: usize,
    ) -> anyhow::Result<Workers> {
        let mut procs = Vec::new();
        for kind in kinds {
            for i in 0..processes {
                procs.push(spawn(spec, kind, slots, &format!("{kind}-{i}"))?);
            }
        }
        Ok(Workers { procs })
    }

    /// The workers that exited already, with their last log lines.
    pub(super) fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &mut self.procs {
            if let Ok(Some(status)) = w.child.try_wait() {
                let tail: Vec<String> = w.tail.lock().expect("tail").iter().cloned().collect();
                out.push(format!(
                    "{} exited ({status}):\n{}",
                    w.name,
                    tail.join("\n")
                ));
            }
        }
        out
    }

    /// SIGTERM to all, then SIGKILL to those not gone within 20 s (their
    /// shutdown grace is 10 s).
    pub(super) async fn stop(self) {
        for w in &self.procs {
            if let Some(pid) = w.child.id() {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for mut w in self.procs {
            let waited = tokio::time::timeout(Duration::from_secs(20), w.child.wait()).await;
            if waited.is_err() {
                let _ = w.child.kill().await;
            }
        }
    }
}

fn spawn(spec: &Spec<'_>, kind: &str, slots: usize, name: &str) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["worker", kind])
        .env("DATABASE_URL", spec.db_url)
        .env("RAG_EVENTS_CHANNEL", spec.channel)
        .env("RAG_WORKER_CONCURRENCY", slots.to_string())
        .env("RAG_LOG", if spec.copy_log { "info" } else { "warn" })
        // Workers never verify tokens (issue #18): they get no secret.
        .env_remove("RAG_JWT_SECRET")
        .env_remove("RAG_LISTEN_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start `ragctl worker {kind}`"))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("piped");
    tokio::spawn(keep_tail(
        stderr,
        tail.clone(),
        name.to_string(),
        spec.copy_log,
    ));
    Ok(Worker {
        name: name.to_string(),
        child,
        tail,
    })
}

/// Keeps the last `TAIL` lines; copies every line to stderr if `copy`.
async fn keep_tail(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    name: String,
    copy: bool,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if copy {
            eprintln!("[{name}] {line}");
        }
        let mut t = tail.lock().expect("tail");
        t.push_back(line);
        if t.len() > TAIL {
            t.pop_front();
        }
    }
}
