//! Attacker processes: each attack runs in `ragctl bench --abuse-child N`
//! processes of its own, so that its connections take their descriptors,
//! not the bench's (whose honest users must not fail for the bench's own
//! limits), and so that one attack can use more connections than one
//! process may open (attack 3). The target comes as JSON in
//! `RAG_BENCH_ABUSE_TARGET`; the child prints `ready` once at full
//! strength, runs until its stdin closes, then prints its tally as one
//! JSON line.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::abuse_attack::run;
use super::abuse_report::AttackerReport;
use super::abuse_slots::plan;
use super::abuse_target::{Tally, Target};
use super::server::endpoint;

const ENV: &str = "RAG_BENCH_ABUSE_TARGET";

/// The attacker processes of one attack.
pub(super) struct Attackers {
    procs: Vec<Proc>,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: Arc<AtomicBool>,
    report: JoinHandle<Option<AttackerReport>>,
}

impl Attackers {
    /// Starts the processes of attack `n` on `t`, its slots split between them.
    pub(super) fn start(n: u8, t: &Target) -> anyhow::Result<Attackers> {
        let (processes, per) = plan(n);
        let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
        let mut procs = Vec::new();
        for k in 0..processes {
            let mine = Target {
                first_slot: k * per,
                slots: per,
                ..t.clone()
            };
            let mut child = tokio::process::Command::new(&exe)
                .args(["bench", "--abuse-child", &n.to_string()])
                .env(ENV, serde_json::to_string(&mine)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start an attacker process")?;
            let ready = Arc::new(AtomicBool::new(false));
            let stdout = child.stdout.take().expect("piped");
            let report = tokio::spawn(read_child(stdout, ready.clone()));
            procs.push(Proc {
                stdin: child.stdin.take(),
                child,
                ready,
                report,
            });
        }
        Ok(Attackers { procs })
    }

    pub(super) fn ready(&self) -> bool {
        self.procs.iter().all(|p| p.ready.load(Ordering::SeqCst))
    }

    /// Stops every process (closes its stdin) and sums their tallies.
    pub(super) async fn stop(mut self) -> AttackerReport {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let mut sum = AttackerReport {
            ready: self.ready(),
            ..AttackerReport::default()
        };
        for mut p in self.procs {
            let report = tokio::time::timeout(Duration::from_secs(30), &mut p.report).await;
            match report {
                Ok(Ok(Some(r))) => add(&mut sum, r),
                _ => {
                    *sum.outcomes
                        .entry("attacker process gave no report".into())
                        .or_default() += 1
                }
            }
            let _ = p.child.kill().await;
        }
        sum
    }
}

/// Adds one process's tally (the peak is the sum of the processes' peaks).
fn add(sum: &mut AttackerReport, r: AttackerReport) {
    sum.attempts += r.attempts;
    sum.opened += r.opened;
    sum.peak_held += r.peak_held;
    sum.failed += r.failed;
    for (k, v) in r.outcomes {
        *sum.outcomes.entry(k).or_default() += v;
    }
}

/// `ready` sets the flag; the JSON line is the report.
async fn read_child(
    stdout: tokio::process::ChildStdout,
    ready: Arc<AtomicBool>,
) -> Option<AttackerReport> {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "ready" {
            ready.store(true, Ordering::SeqCst);
        } else if let Ok(r) = serde_json::from_str(&line) {
            return Some(r);
        }
    }
    None
}

/// The attacker process: attack `n` until stdin closes.
pub(super) async fn child(n: u8) -> anyhow::Result<ExitCode> {
    let mut t: Target = serde_json::from_str(&std::env::var(ENV).context(ENV)?)?;
    t.ep = Some(endpoint(&t.api).await?);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(1..) = stdin.read(&mut buf).await {}
        stop.cancel();
    });
    let tally = Arc::new(Tally::default());
    let attack = tokio::spawn(run(n, Arc::new(t), tally.clone(), cancel.clone()));
    while !tally.is_ready() && !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tally.is_ready() {
        println!("ready");
    }
    // Attack until told to stop; a swamped attacker still reports what it
    // counted.
    cancel.cancelled().await;
    let _ = tokio::time::timeout(Duration::from_secs(15), attack).await;
    println!("{}", serde_json::to_string(&tally.report())?);
    Ok(ExitCode::SUCCESS)
}
