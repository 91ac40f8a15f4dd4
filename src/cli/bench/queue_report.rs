//! The `--queue` report (issue #18): per configuration of worker processes
//! × slots, the honest users' throughput, upload → `ingested` latency and
//! fairness, and the hostile user's slot share; then the parse-throughput
//! scaling from 1 to 2 slots; judged against the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::queue_stats::Latency;
use super::report::{Machine, TargetCheck};

/// Honest p99 upload → `ingested`, at most (ms).
pub(super) const P99_MS: f64 = 2_000.0;
/// Parse throughput with 2 slots over 1 slot, at least.
pub(super) const SCALING: f64 = 1.7;
/// Jain's index over the honest users' mean latencies, at least.
pub(super) const FAIRNESS: f64 = 0.95;

/// The slots one worker process was seen using (from the running jobs'
/// lease owners, sampled every 200 ms): the most jobs it ran at once, and
/// its distinct owners (`…#N` per slot once slots land; one per process
/// before).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotsSeen {
    pub kind: String,
    /// The owner up to its last `#` (the whole owner when it has none).
    pub worker: String,
    pub max_running: usize,
    pub owners: usize,
}

/// What the hostile user did and got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hostile {
    pub uploaded: u64,
    pub upload_failures: BTreeMap<String, u64>,
    pub upload_retries: u64,
    /// Its documents by final status and error message.
    pub outcomes: BTreeMap<String, u64>,
    /// Slot-seconds its parse jobs held, and every job's (all users, both
    /// kinds).
    pub slot_secs: f64,
    pub total_slot_secs: f64,
    /// `slot_secs / total_slot_secs`.
    pub slot_share: Option<f64>,
    /// The same over parse slots only (the only kind its jobs reach).
    pub parse_slot_share: Option<f64>,
}

/// One configuration: `processes` parse and as many ingest workers, each
/// asked for `slots` slots.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRun {
    pub processes: usize,
    pub slots: usize,
    pub slots_seen: Vec<SlotsSeen>,
    pub uploaded: u64,
    pub upload_failures: BTreeMap<String, u64>,
    /// Uploads that started later than their schedule (all 64 in flight).
    pub late_starts: u64,
    /// Uploads tried again after a 429 or 503 (Retry-After honoured).
    pub upload_retries: u64,
    pub ingested: u64,
    pub errored: u64,
    /// Honest documents not `ingested` nor `error` when the run ended.
    pub unfinished: u64,
    /// First honest upload (created_at) → last honest `ingested` (s).
    pub wall_s: f64,
    pub docs_per_s: f64,
    /// Honest upload → `ingested` (documents.created_at → updated_at).
    pub latency: Option<Latency>,
    /// Jain's index over the honest users' mean latency.
    pub fairness: Option<f64>,
    pub hostile: Hostile,
    /// Where slot-seconds came from: `service_secs` or `claimed_at..updated_at`.
    pub slot_source: &'static str,
    /// /proc/loadavg's 1-minute load at the start and the end: the
    /// machine's other work (this run's own included).
    pub load: (Option<f64>, Option<f64>),
}

/// The 1-minute load average.
pub(super) fn load_1m() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// One parse-only run: `docs` PDFs already queued, one parse process.
#[derive(Debug, Clone, Serialize)]
pub struct ParseRun {
    pub slots: usize,
    /// PDFs uploaded, and why the others were not.
    pub uploaded: u64,
    pub upload_failures: BTreeMap<String, u64>,
    pub upload_retries: u64,
    pub slots_seen: Vec<SlotsSeen>,
    pub jobs: u64,
    pub failed: u64,
    /// First claim → last parse job finished (s).
    pub wall_s: f64,
    pub jobs_per_s: f64,
    /// The 1-minute load average before the worker started, and after.
    pub load: (Option<f64>, Option<f64>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    pub docs: usize,
    pub pdf_bytes: usize,
    /// In the order run: 1, 2, 1, 2 slots (interleaved, so that the
    /// machine's other work falls on both alike).
    pub runs: Vec<ParseRun>,
    /// Throughput with 2 slots / with 1, each summed over its runs
    /// (jobs / wall seconds).
    pub factor: Option<f64>,
}

/// Σ jobs / Σ wall of the runs with `slots` slots.
fn throughput(runs: &[ParseRun], slots: usize) -> Option<f64> {
    let (jobs, wall) = runs
        .iter()
        .filter(|r| r.slots == slots)
        .fold((0u64, 0.0), |(j, w), r| (j + r.jobs, w + r.wall_s));
    (wall > 0.0).then(|| jobs as f64 / wall)
}

/// Throughput with 2 slots over 1.
pub(super) fn scaling_factor(runs: &[ParseRun]) -> Option<f64> {
    match (throughput(runs, 1), throughput(runs, 2)) {
        (Some(one), Some(two)) => Some(two / one),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueConfig {
    pub docs: usize,
    pub honest_users: usize,
    /// Offered upload rate, documents/s; 0 = as fast as the API allows
    /// (64 uploads in flight).
    pub rate: f64,
    pub bombs: usize,
    pub doc_bytes: usize,
    pub bomb_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub machine: Machine,
    pub config: QueueConfig,
    pub runs: Vec<QueueRun>,
    pub scaling: Option<Scaling>,
    pub targets: Vec<TargetCheck>,
}

/// Per configuration the p99 and fairness targets; the scaling target once.
pub(super) fn judge(runs: &[QueueRun], scaling: Option<&Scaling>) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for r in runs {
        let label = format!("{} process(es) × {} slot(s)", r.processes, r.slots);
        let p99 = r.latency.map(|l| l.p99_ms);
        out.push(TargetCheck {
            key: "queue_p99",
            name: format!("{label}: honest p99 upload → ingested while bombs run"),
            target: format!("≤ {:.1} s", P99_MS / 1000.0),
            measured: p99.map_or("nothing ingested".into(), |v| {
                format!("{:.2} s", v / 1000.0)
            }),
            met: Some(p99.is_some_and(|v| v <= P99_MS) && r.unfinished == 0),
        });
        out.push(TargetCheck {
            key: "queue_fairness",
            name: format!("{label}: Jain's index over honest users' mean latency"),
            target: format!("≥ {FAIRNESS}"),
            measured: r.fairness.map_or("?".into(), |j| format!("{j:.3}")),
            met: Some(r.fairness.is_some_and(|j| j >= FAIRNESS)),
        });
    }
    if let Some(s) = scaling {
        out.push(TargetCheck {
            key: "parse_scaling",
            name: "parse throughput, 2 slots over 1 (one process)".into(),
            target: format!("≥ {SCALING}×"),
            measured: s.factor.map_or("?".into(), |f| format!("{f:.2}×")),
            met: Some(s.factor.is_some_and(|f| f >= SCALING)),
        });
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), f)
}

fn pct(v: Option<f64>) -> String {
    opt(v, |x| format!("{:.1}%", x * 100.0))
}

/// "parse-0 max 1 at once, 1 owner"-style lines of what each worker used.
fn seen(slots: &[SlotsSeen]) -> String {
    let parts: Vec<String> = slots
        .iter()
        .map(|s| {
            format!(
                "{} {}: {} at once, {} owner(s)",
                s.kind, s.worker, s.max_running, s.owners
            )
        })
        .collect();
    if parts.is_empty() {
        "no running job seen".into()
    } else {
        parts.join("; ")
    }
}

pub(super) fn render(r: &QueueReport) -> String {
    let mut s = String::new();
    header(&mut s, r);
    table(&mut s, &r.runs);
    for q in &r.runs {
        details(&mut s, q);
    }
    if let Some(sc) = &r.scaling {
        scaling(&mut s, sc);
    }
    super::render::target_lines(&mut s, &r.targets, &[]);
    s
}

/// The machine and the load.
fn header(s: &mut String, r: &QueueReport) {
    let c = &r.config;
    let _ = writeln!(s, "ragctl bench --queue");
    let _ = writeln!(s, "machine: {}", r.machine.describe());
    let rate = match c.rate {
        0.0 => "as fast as the API allows (64 in flight)".into(),
        v => format!("paced at {v} documents/s"),
    };
    let _ = writeln!(
        s,
        "load: {} Markdown notes of {} B from {} users, {rate}; one more user keeps {} \
         CPU-bomb PDFs ({} B) queued",
        c.docs, c.doc_bytes, c.honest_users, c.bombs, c.bomb_bytes
    );
}

/// One line per configuration.
fn table(s: &mut String, runs: &[QueueRun]) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<13} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12}",
        "procs×slots",
        "ingested",
        "docs/s",
        "p50 s",
        "p90 s",
        "p99 s",
        "max s",
        "fairness",
        "bomb share"
    );
    for q in runs {
        let l = q.latency;
        let sec = |f: fn(&Latency) -> f64| opt(l.as_ref().map(f), |v| format!("{:.2}", v / 1000.0));
        let _ = writeln!(
            s,
            "{:<13} {:>9} {:>7.2} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12}",
            format!("{} × {}", q.processes, q.slots),
            format!("{}/{}", q.ingested, q.uploaded),
            q.docs_per_s,
            sec(|l| l.p50_ms),
            sec(|l| l.p90_ms),
            sec(|l| l.p99_ms),
            sec(|l| l.max_ms),
            opt(q.fairness, |j| format!("{j:.3}")),
            pct(q.hostile.slot_share),
        );
    }
}

/// A configuration's slots seen, honest counts and failures.
fn details(s: &mut String, q: &QueueRun) {
    let _ = writeln!(
        s,
        "\n{} process(es) × {} slot(s) asked:",
        q.processes, q.slots
    );
    let _ = writeln!(s, "  slots seen: {}", seen(&q.slots_seen));
    let _ = writeln!(
        s,
        "  honest: {} uploaded ({} retries after 429/503), {} ingested, {} error, {} unfinished, \
         {} late starts, wall {:.1} s; load average {} → {}",
        q.uploaded,
        q.upload_retries,
        q.ingested,
        q.errored,
        q.unfinished,
        q.late_starts,
        q.wall_s,
        opt(q.load.0, |v| format!("{v:.1}")),
        opt(q.load.1, |v| format!("{v:.1}"))
    );
    if !q.upload_failures.is_empty() {
        let _ = writeln!(
            s,
            "  honest upload failures: {}",
            counts(&q.upload_failures)
        );
    }
    hostile(s, q);
}

/// What the hostile user did and got.
fn hostile(s: &mut String, q: &QueueRun) {
    let h = &q.hostile;
    let _ = writeln!(
        s,
        "  hostile: {} bombs uploaded; {:.1} of {:.1} slot-s ({}; parse slots {}, from {}); {}",
        h.uploaded,
        h.slot_secs,
        h.total_slot_secs,
        pct(h.slot_share),
        pct(h.parse_slot_share),
        q.slot_source,
        counts(&h.outcomes)
    );
    if !h.upload_failures.is_empty() {
        let _ = writeln!(
            s,
            "  hostile upload failures: {}",
            counts(&h.upload_failures)
        );
    }
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = m.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    v.join(", ")
}

fn scaling(s: &mut String, sc: &Scaling) {
    let _ = writeln!(
        s,
        "\nparse-bound sub-phase: {} text PDFs of {} B queued, then one `worker parse`:",
        sc.docs, sc.pdf_bytes
    );
    for p in &sc.runs {
        let _ = writeln!(
            s,
            "  {} slot(s) asked: {} jobs ({} failed) in {:.2} s = {:.2} jobs/s; load average {} → {}; \
             seen: {}",
            p.slots,
            p.jobs,
            p.failed,
            p.wall_s,
            p.jobs_per_s,
            opt(p.load.0, |v| format!("{v:.1}")),
            opt(p.load.1, |v| format!("{v:.1}")),
            seen(&p.slots_seen)
        );
        if !p.upload_failures.is_empty() || p.upload_retries > 0 {
            let failed = match p.upload_failures.is_empty() {
                true => "no upload failed".to_string(),
                false => format!("upload failures: {}", counts(&p.upload_failures)),
            };
            let _ = writeln!(
                s,
                "    {} uploaded, {} retries after 429/503; {failed}",
                p.uploaded, p.upload_retries
            );
        }
    }
    let _ = writeln!(
        s,
        "  scaling 1 → 2 slots (Σ jobs / Σ wall of each): {}",
        opt(sc.factor, |f| format!("{f:.2}×"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p99_ms: f64, fairness: f64, unfinished: u64) -> QueueRun {
        QueueRun {
            processes: 1,
            slots: 1,
            slots_seen: vec![],
            uploaded: 10,
            upload_failures: BTreeMap::new(),
            late_starts: 0,
            upload_retries: 0,
            ingested: 10 - unfinished,
            errored: 0,
            unfinished,
            wall_s: 1.0,
            docs_per_s: 10.0,
            latency: super::super::queue_stats::latency(vec![p99_ms]),
            fairness: Some(fairness),
            hostile: Hostile::default(),
            slot_source: "claimed_at..updated_at",
            load: (None, None),
        }
    }

    fn parse(slots: usize, jobs: u64, wall_s: f64) -> ParseRun {
        ParseRun {
            slots,
            uploaded: jobs,
            upload_failures: BTreeMap::new(),
            upload_retries: 0,
            slots_seen: vec![],
            jobs,
            failed: 0,
            wall_s,
            jobs_per_s: jobs as f64 / wall_s,
            load: (None, None),
        }
    }

    #[test]
    fn scaling_sums_the_runs_of_each_slot_count() {
        // 1 slot: 400 jobs in 40 s (10/s); 2 slots: 400 in 25 s (16/s).
        let runs = [
            parse(1, 200, 10.0),
            parse(2, 200, 10.0),
            parse(1, 200, 30.0),
            parse(2, 200, 15.0),
        ];
        assert_eq!(scaling_factor(&runs), Some(1.6));
        assert_eq!(scaling_factor(&runs[..1]), None);
    }

    #[test]
    fn targets_are_judged_at_their_bounds() {
        let scaling = Scaling {
            docs: 2,
            pdf_bytes: 1,
            runs: vec![],
            factor: Some(1.69),
        };
        let t = judge(
            &[
                run(2_000.0, 0.95, 0),
                run(2_001.0, 0.949, 0),
                run(1.0, 1.0, 1),
            ],
            Some(&scaling),
        );
        let met: Vec<(&str, Option<bool>)> = t.iter().map(|t| (t.key, t.met)).collect();
        assert_eq!(
            met,
            vec![
                ("queue_p99", Some(true)),
                ("queue_fairness", Some(true)),
                ("queue_p99", Some(false)),
                ("queue_fairness", Some(false)),
                // A document never ingested misses the p99 target.
                ("queue_p99", Some(false)),
                ("queue_fairness", Some(true)),
                ("parse_scaling", Some(false)),
            ]
        );
    }
}
