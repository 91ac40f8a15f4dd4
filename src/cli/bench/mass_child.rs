//! The client processes of `--sockets N --instances M`: one process may
//! hold only as many sockets as its open-file limit (20,000 here), so the
//! bench re-executes itself (`ragctl bench --mass-child`) once per share.
//! A child reads its share as JSON in `RAG_BENCH_MASS_CHILD`, opens it
//! (`mass::open`: socket `i` to instance `i % M`, from `source_addr(i)`),
//! prints one JSON line once every socket is open or failed, holds them
//! until its stdin closes, then prints its final JSON line and exits.

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinSet;

use super::mass::{Tally, open};
use super::server::endpoint;

const ENV: &str = "RAG_BENCH_MASS_CHILD";

/// One child's share: sockets `first..first + count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Share {
    pub(super) apis: Vec<String>,
    pub(super) secret: String,
    pub(super) first: usize,
    pub(super) count: usize,
}

/// What a child says: after opening (`dropped` 0 unless some closed
/// already), and again when told to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ChildTally {
    pub(super) opened: usize,
    pub(super) failed: usize,
    pub(super) dropped: usize,
    pub(super) errors: BTreeMap<String, usize>,
    /// The child's own RSS (the clients' cost, not the servers').
    pub(super) rss_kib: Option<u64>,
}

impl ChildTally {
    fn of(t: &Tally) -> ChildTally {
        ChildTally {
            opened: t.opened.load(Ordering::SeqCst),
            failed: t.failed.load(Ordering::SeqCst),
            dropped: t.dropped.load(Ordering::SeqCst),
            errors: t.errors.lock().expect("tally").clone(),
            rss_kib: super::sample::rss_kib(std::process::id()),
        }
    }

    /// Sums the children's tallies.
    pub(super) fn sum(all: &[ChildTally]) -> ChildTally {
        let mut s = ChildTally::default();
        for t in all {
            s.opened += t.opened;
            s.failed += t.failed;
            s.dropped += t.dropped;
            s.rss_kib = Some(s.rss_kib.unwrap_or(0) + t.rss_kib.unwrap_or(0));
            for (k, v) in &t.errors {
                *s.errors.entry(k.clone()).or_default() += v;
            }
        }
        s
    }
}

/// The client process: open the share, report, hold until stdin closes.
pub(super) async fn child() -> anyhow::Result<ExitCode> {
    let share: Share = serde_json::from_str(&std::env::var(ENV).context(ENV)?)?;
    let mut eps = Vec::new();
    for api in &share.apis {
        eps.push(endpoint(api).await?);
    }
    let tally = Arc::new(Tally::default());
    let mut held = JoinSet::new();
    let range = share.first..share.first + share.count;
    open(&share.secret, &eps, range, &tally, &mut held).await?;
    println!("{}", serde_json::to_string(&ChildTally::of(&tally))?);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(1..) = stdin.read(&mut buf).await {}
    println!("{}", serde_json::to_string(&ChildTally::of(&tally))?);
    Ok(ExitCode::SUCCESS)
}

/// The client processes, seen from the bench.
pub(super) struct Clients {
    procs: Vec<Proc>,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Clients {
    /// Starts one process per share.
    pub(super) fn start(shares: &[Share]) -> anyhow::Result<Clients> {
        let exe = std::env::current_exe().context("cannot find the ragctl executable")?;
        let mut procs = Vec::new();
        for share in shares {
            let mut child = tokio::process::Command::new(&exe)
                .args(["bench", "--mass-child"])
                .env(ENV, serde_json::to_string(share)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a client process")?;
            let stdout = child.stdout.take().expect("piped");
            procs.push(Proc {
                stdin: child.stdin.take(),
                lines: BufReader::new(stdout).lines(),
                child,
            });
        }
        Ok(Clients { procs })
    }

    /// The process ids (for their RSS).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Each child's next line (its tally), in order.
    pub(super) async fn next(&mut self) -> anyhow::Result<Vec<ChildTally>> {
        let mut out = Vec::new();
        for (k, p) in self.procs.iter_mut().enumerate() {
            match p.lines.next_line().await? {
                Some(line) => {
                    out.push(serde_json::from_str(&line).with_context(|| {
                        format!("client process {k} said something else: {line}")
                    })?)
                }
                None => bail!("client process {k} exited without a report"),
            }
        }
        Ok(out)
    }

    /// Tells every child to stop, and takes their final tallies.
    pub(super) async fn stop(mut self) -> anyhow::Result<Vec<ChildTally>> {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let last = tokio::time::timeout(Duration::from_secs(60), self.next()).await;
        for p in &mut self.procs {
            let _ = p.child.kill().await;
        }
        last.context("client processes gave no final report within 60 s")?
    }
}

/// `mass` sockets split into `procs` shares, numbered from `first`.
pub(super) fn shares(
    apis: &[String],
    secret: &str,
    (first, mass): (usize, usize),
    procs: usize,
) -> Vec<Share> {
    let procs = procs.clamp(1, mass.max(1));
    (0..procs)
        .map(|k| {
            let lo = first + mass * k / procs;
            let hi = first + mass * (k + 1) / procs;
            Share {
                apis: apis.to_vec(),
                secret: secret.to_string(),
                first: lo,
                count: hi - lo,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_cover_the_mass_once() {
        let s = shares(&["http://a".into()], "k", (0, 99_000), 6);
        assert_eq!(s.len(), 6);
        assert_eq!(s.iter().map(|s| s.count).sum::<usize>(), 99_000);
        assert!(s.windows(2).all(|w| w[0].first + w[0].count == w[1].first));
        assert_eq!(s[0].count, 16_500);
        assert_eq!(shares(&[], "k", (5, 3), 10).len(), 3);
        let t = ChildTally {
            opened: 2,
            errors: BTreeMap::from([("x".to_string(), 1)]),
            rss_kib: Some(10),
            ..ChildTally::default()
        };
        let sum = ChildTally::sum(&[t.clone(), t]);
        assert_eq!((sum.opened, sum.errors["x"], sum.rss_kib), (4, 2, Some(20)));
    }
}
