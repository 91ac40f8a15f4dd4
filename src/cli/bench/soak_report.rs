//! The soak's report: what ran, what the faults did, the end checks and
//! their verdicts (pure: judged from the numbers), as text or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::soak_check::{Agreement, Drain};
use super::soak_faults::FaultCounts;
use super::soak_load::LoadCounts;
use super::soak_ws::WsCounts;

/// Growth allowed between the warm-up sample and the end, percent.
pub(super) const MAX_GROWTH_PCT: f64 = 5.0;

/// A process's RSS and descriptors after the warm-up and at the end.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usage {
    pub process: String,
    pub warm_at_s: f64,
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    pub fds_warm: u64,
    pub fds_end: u64,
    /// One reading a minute: seconds into the load, RSS KiB, descriptors.
    pub trail: Vec<(u64, u64, u64)>,
}

/// One end check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub key: &'static str,
    pub name: String,
    pub measured: String,
    pub met: bool,
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
    pub usage: Option<Usage>,
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

fn check(key: &'static str, name: &str, measured: String, met: bool) -> Check {
    Check {
        key,
        name: name.to_string(),
        measured,
        met,
    }
}

/// The verdicts: views equal REST, every job terminal, hostile files all
/// `error`, no process died unasked, no panic, RSS and descriptors grew
/// by less than 5%.
pub(super) fn judge(r: &SoakReport) -> Vec<Check> {
    let mut out = state_checks(r);
    out.extend(health_checks(r));
    out.extend(usage_checks(r.usage.as_ref()));
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

fn usage_checks(u: Option<&Usage>) -> Vec<Check> {
    let Some(u) = u else {
        return vec![check(
            "usage",
            "RSS and descriptors sampled",
            "no sample".into(),
            false,
        )];
    };
    let rss = growth_pct(u.rss_warm_kib, u.rss_end_kib);
    let fds = growth_pct(u.fds_warm, u.fds_end);
    vec![
        check(
            "rss",
            &format!("{} RSS growth after warm-up < {MAX_GROWTH_PCT}%", u.process),
            format!("{} → {} KiB ({rss:+.1}%)", u.rss_warm_kib, u.rss_end_kib),
            rss < MAX_GROWTH_PCT,
        ),
        check(
            "fds",
            &format!(
                "{} descriptors growth after warm-up < {MAX_GROWTH_PCT}%",
                u.process
            ),
            format!("{} → {} ({fds:+.1}%)", u.fds_warm, u.fds_end),
            fds < MAX_GROWTH_PCT,
        ),
    ]
}

/// The checks that failed, by key.
pub(super) fn missed(checks: &[Check]) -> Vec<&'static str> {
    checks.iter().filter(|c| !c.met).map(|c| c.key).collect()
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
    if let Some(u) = &r.usage {
        let rss: Vec<String> = u
            .trail
            .iter()
            .map(|t| format!("{}s {}", t.0, t.1))
            .collect();
        let _ = writeln!(s, "{} RSS KiB each minute: {}", u.process, rss.join(", "));
    }
    for c in &r.checks {
        let _ = writeln!(
            s,
            "[{}] {}: {}",
            if c.met { "ok" } else { "FAIL" },
            c.name,
            c.measured
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            usage: Some(Usage {
                process: "api-1".into(),
                rss_warm_kib: 1000,
                rss_end_kib: 1049,
                fds_warm: 100,
                fds_end: 104,
                ..Usage::default()
            }),
            panics: 0,
            panic_lines: vec![],
            checks: vec![],
        }
    }

    #[test]
    fn a_clean_run_meets_every_check() {
        let checks = judge(&report());
        assert_eq!(checks.len(), 7);
        assert!(missed(&checks).is_empty(), "{checks:?}");
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
        r.usage.as_mut().unwrap().rss_end_kib = 1050;
        r.usage.as_mut().unwrap().fds_end = 106;
        let keys = missed(&judge(&r));
        assert_eq!(
            keys,
            [
                "views", "terminal", "hostile", "crashes", "panics", "rss", "fds"
            ]
        );
        r.usage = None;
        assert!(missed(&judge(&r)).contains(&"usage"));
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
