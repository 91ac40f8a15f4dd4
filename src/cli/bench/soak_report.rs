//! The soak's report: what ran, what the faults did, the end checks and
//! their verdicts (pure: judged from the numbers), as text or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::soak_check::{Agreement, Drain};
use super::soak_faults::FaultCounts;
use super::soak_load::LoadCounts;
use super::soak_usage::InstanceUsage;
use super::soak_ws::WsCounts;

/// Growth allowed between the warm-up sample and the end, percent.
pub(super) const MAX_GROWTH_PCT: f64 = 5.0;

/// What a check says: met, missed, or not measured (never a pass).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Fail,
    NotMeasured,
}

/// One end check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub key: String,
    pub name: String,
    pub measured: String,
    /// `verdict` is `ok`.
    pub met: bool,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub users: usize,
    pub sockets: usize,
    pub uploads: LoadCounts,
    pub ws: WsCounts,
    pub faults: FaultCounts,
    pub drain: Drain,
    pub agreement: Agreement,
    /// Each API instance: its trail and its judged samples.
    pub usage: Vec<InstanceUsage>,
    pub panics: usize,
    pub panic_lines: Vec<String>,
    pub checks: Vec<Check>,
}

/// Percent growth from `a` to `b` (0 when `a` is 0).
pub(super) fn growth_pct(a: u64, b: u64) -> f64 {
    if a == 0 {
        return 0.0;
    }
    ((b as f64 - a as f64) / a as f64 * 1000.0).round() / 10.0
}

fn check(key: &str, name: &str, measured: String, met: bool) -> Check {
    Check {
        key: key.to_string(),
        name: name.to_string(),
        measured,
        met,
        verdict: if met { Verdict::Ok } else { Verdict::Fail },
    }
}

/// The verdicts: views equal REST, every job terminal, hostile files all
/// `error`, no process died unasked, no panic, RSS and descriptors grew
/// by less than 5%.
pub(super) fn judge(r: &SoakReport) -> Vec<Check> {
    let mut out = state_checks(r);
    out.extend(health_checks(r));
    out.extend(r.usage.iter().flat_map(usage_checks));
    out
}

/// What the clients and the database end with.
fn state_checks(r: &SoakReport) -> Vec<Check> {
    let (a, d) = (&r.agreement, &r.drain);
    vec![
        check(
            "views",
            "every socket's view equals REST",
            format!("{} of {} sockets ({} live)", a.matching, a.sockets, a.live),
            a.sockets > 0 && a.matching == a.sockets,
        ),
        check(
            "terminal",
            "every job terminal",
            format!(
                "{} of {} not terminal after {:.0} s",
                d.jobs_not_terminal, d.jobs_total, d.seconds
            ),
            d.drained,
        ),
        check(
            "hostile",
            "every hostile upload ends error",
            format!("{} of {}", d.hostile_error, d.hostile_total),
            d.hostile_error == d.hostile_total,
        ),
    ]
}

/// The processes: none died unasked, none panicked.
fn health_checks(r: &SoakReport) -> Vec<Check> {
    vec![
        check(
            "crashes",
            "no process exited unasked",
            format!("{}", r.faults.unexpected_exits.len()),
            r.faults.unexpected_exits.is_empty(),
        ),
        check(
            "panics",
            "no \"panicked\" in any log",
            format!("{}", r.panics),
            r.panics == 0,
        ),
    ]
}

/// An instance's RSS and descriptors, from its warm-up sample to the end.
fn usage_checks(u: &InstanceUsage) -> Vec<Check> {
    let p = &u.process;
    let (rss_name, fds_name) = (
        format!("{p} RSS growth after warm-up < {MAX_GROWTH_PCT}%"),
        format!("{p} descriptors growth after warm-up < {MAX_GROWTH_PCT}%"),
    );
    let (rss_key, fds_key) = (format!("rss {p}"), format!("fds {p}"));
    if let Some(why) = &u.not_measured {
        return [(rss_key, rss_name), (fds_key, fds_name)]
            .into_iter()
            .map(|(key, name)| Check {
                key,
                name,
                measured: why.clone(),
                met: false,
                verdict: Verdict::NotMeasured,
            })
            .collect();
    }
    let (Some(w), Some(e)) = (&u.warm, &u.end) else {
        return vec![check(
            &format!("usage {p}"),
            &format!("{p} RSS and descriptors sampled"),
            "no sample".into(),
            false,
        )];
    };
    let rss = growth_pct(w.rss_kib, e.rss_kib);
    let fds = growth_pct(w.fds, e.fds);
    let heap = format!(
        "anonymous {} → {} KiB, file-backed {} → {} KiB; heap in use {} → {}",
        w.anon_kib,
        e.anon_kib,
        w.file_kib,
        e.file_kib,
        mb(w.heap_in_use_bytes),
        mb(e.heap_in_use_bytes)
    );
    vec![
        check(
            &rss_key,
            &rss_name,
            format!(
                "{} → {} KiB ({rss:+.1}%), {}–{} s of start {}; {heap}",
                w.rss_kib, e.rss_kib, w.at_s, e.at_s, e.start
            ),
            rss < MAX_GROWTH_PCT,
        ),
        check(
            &fds_key,
            &fds_name,
            format!("{} → {} ({fds:+.1}%)", w.fds, e.fds),
            fds < MAX_GROWTH_PCT,
        ),
    ]
}

/// Bytes as MB with one decimal, or `?` when the gauge was not read.
fn mb(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

/// The checks that failed, by key.
pub(super) fn missed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.key.as_str())
        .collect()
}

pub(super) fn render(r: &SoakReport) -> String {
    let mut s = String::new();
    render_load(&mut s, r);
    render_end(&mut s, r);
    s
}

/// What ran: the uploads, the sockets, the faults.
fn render_load(s: &mut String, r: &SoakReport) {
    let u = &r.uploads;
    let w = &r.ws;
    let _ = writeln!(
        s,
        "soak: {:.0} s, {} users, {} sockets over 2 API instances",
        r.seconds, r.users, r.sockets
    );
    let _ = writeln!(
        s,
        "uploads: {} honest, {} hostile; retried {:?}",
        u.honest, u.hostile, u.retried
    );
    let _ = writeln!(
        s,
        "sockets: {} connects ({} caught up; refused {} by the user's and {} by the process's catch-up cap, {} failed), {} churned, {} dropped, {} frames",
        w.connects,
        w.caught_up,
        w.refused,
        w.refused_process,
        w.failed,
        w.churned,
        w.dropped,
        w.frames
    );
    let _ = writeln!(
        s,
        "resyncs: {} {:?}, {} REST reloads ({} failed)",
        w.resyncs, w.resync_reasons, w.reloads, w.reload_failed
    );
    let _ = writeln!(
        s,
        "refresh: {} sent, {} acknowledged; closes 4001 expired {}, 4003/4004 {}",
        w.refresh_sent, w.refresh_acked, w.closed_expired, w.closed_refresh
    );
    render_faults(s, &r.faults);
}

/// What the faults did, and what went wrong injecting them.
fn render_faults(s: &mut String, f: &FaultCounts) {
    let _ = writeln!(
        s,
        "faults: listener killed {} times ({} backends), {} worker SIGKILLs, {} PostgreSQL restarts, {} API restarts",
        f.listener_rounds, f.listener_backends, f.worker_kills, f.pg_restarts, f.api_restarts
    );
    for e in f.unexpected_exits.iter().chain(&f.errors) {
        let _ = writeln!(s, "  ! {e}");
    }
}

/// The queue at the end, the differences, the checks.
fn render_end(s: &mut String, r: &SoakReport) {
    let d = &r.drain;
    let _ = writeln!(
        s,
        "end: {} documents ({} ingested, {} error), {} jobs; drained in {:.1} s",
        d.docs_total, d.docs_ingested, d.docs_error, d.jobs_total, d.seconds
    );
    for line in r.agreement.differences.iter().chain(&r.panic_lines) {
        let _ = writeln!(s, "  ! {line}");
    }
    for u in &r.usage {
        let trail: Vec<String> = u
            .trail
            .iter()
            .map(|t| {
                let heap = mb(t.heap_in_use_bytes);
                let (rss, anon, file) = (t.rss_kib, t.anon_kib, t.file_kib);
                format!("{}s#{} {rss}={anon}+{file} KiB/{heap}", t.at_s, t.start)
            })
            .collect();
        let _ = writeln!(
            s,
            "{} each minute (s#start RSS=anonymous+file/heap in use): {}",
            u.process,
            trail.join(", ")
        );
    }
    for c in &r.checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "--",
        };
        let _ = writeln!(s, "[{mark}] {}: {}", c.name, c.measured);
    }
}

#[cfg(test)]
mod tests {
    use super::super::soak_usage::Sample;
    use super::*;

    /// 1000 → 1049 KiB, 100 → 104 descriptors: just under 5%.
    fn measured(process: &str) -> InstanceUsage {
        let at = |rss_kib, fds| Sample {
            rss_kib,
            fds,
            ..Sample::default()
        };
        InstanceUsage {
            process: process.into(),
            warm: Some(at(1000, 100)),
            end: Some(at(1049, 104)),
            ..InstanceUsage::default()
        }
    }

    fn report() -> SoakReport {
        SoakReport {
            seconds: 60.0,
            users: 2,
            sockets: 4,
            uploads: LoadCounts::default(),
            ws: WsCounts::default(),
            faults: FaultCounts::default(),
            drain: Drain {
                drained: true,
                jobs_total: 8,
                docs_total: 4,
                docs_ingested: 3,
                docs_error: 1,
                hostile_total: 1,
                hostile_error: 1,
                ..Drain::default()
            },
            agreement: Agreement {
                sockets: 4,
                live: 4,
                matching: 4,
                ..Agreement::default()
            },
            usage: vec![measured("api-0"), measured("api-1")],
            panics: 0,
            panic_lines: vec![],
            checks: vec![],
        }
    }

    #[test]
    fn a_clean_run_meets_every_check() {
        let checks = judge(&report());
        assert_eq!(checks.len(), 9);
        assert!(missed(&checks).is_empty(), "{checks:?}");
        assert!(checks.iter().all(|c| c.met && c.verdict == Verdict::Ok));
    }

    #[test]
    fn not_measured_is_neither_a_pass_nor_a_failure() {
        let mut r = report();
        r.usage[0] = InstanceUsage {
            process: "api-0".into(),
            not_measured: Some("not measured (too short): …".into()),
            ..InstanceUsage::default()
        };
        let checks = judge(&r);
        assert!(missed(&checks).is_empty(), "{checks:?}");
        let api0: Vec<&Check> = checks.iter().filter(|c| c.key.ends_with("api-0")).collect();
        assert_eq!(api0.len(), 2);
        for c in api0 {
            assert!(!c.met, "never a pass: {c:?}");
            assert_eq!(c.verdict, Verdict::NotMeasured);
        }
        r.checks = checks;
        let text = render(&r);
        assert!(text.contains("[--] api-0 RSS growth"), "{text}");
    }

    #[test]
    fn each_failure_is_named() {
        let mut r = report();
        r.agreement.matching = 3;
        r.drain.drained = false;
        r.drain.hostile_error = 0;
        r.faults
            .unexpected_exits
            .push("worker-parse.1: signal 11".into());
        r.panics = 1;
        let end = r.usage[0].end.as_mut().unwrap();
        (end.rss_kib, end.fds) = (1050, 106);
        let checks = judge(&r);
        assert_eq!(
            missed(&checks),
            [
                "views",
                "terminal",
                "hostile",
                "crashes",
                "panics",
                "rss api-0",
                "fds api-0"
            ]
        );
        r.usage[1].end = None;
        assert!(missed(&judge(&r)).contains(&"usage api-1"));
        r.agreement.sockets = 0;
        r.agreement.matching = 0;
        assert!(
            missed(&judge(&r)).contains(&"views"),
            "no socket is no proof"
        );
    }

    #[test]
    fn growth_is_in_percent_and_shrinking_is_fine() {
        assert_eq!(growth_pct(1000, 1050), 5.0);
        assert_eq!(growth_pct(1000, 900), -10.0);
        assert_eq!(growth_pct(0, 10), 0.0);
    }
}
