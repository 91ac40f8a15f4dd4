//! The `--abuse` report: per phase (the baseline, then each attack) the
//! honest users' REST latency and success, their delivery latency, the
//! server's peak RSS and what the attacker got; judged against the
//! targets of issue #17.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::report::{Machine, Stats, TargetCheck};

/// The attacks: number, name, key (for the exit code's list).
pub(super) const ATTACKS: [(u8, &str, &str); 7] = [
    (1, "catch-up memory", "catchup_memory"),
    (2, "unbounded list", "unbounded_list"),
    (3, "slow bodies", "slow_bodies"),
    (4, "upload pin", "upload_pin"),
    (5, "socket flood", "socket_flood"),
    (6, "search flood", "search_flood"),
    (7, "fan-out", "fan_out"),
];

/// Honest REST p99 under an attack, at most this times the baseline's.
pub(super) const REST_P99_FACTOR: f64 = 2.0;
/// Honest delivery p99, at most this (µs).
pub(super) const DELIVERY_P99_US: u32 = 5_000;
/// The server's peak RSS, under this (KiB): 1 GiB.
pub(super) const PEAK_RSS_KIB: u64 = 1024 * 1024;

/// What the attacker got: connections or requests opened and held, and
/// how they ended (answers by status, closes, errors).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackerReport {
    /// It reached full strength before the honest load started.
    pub ready: bool,
    pub attempts: u64,
    pub opened: u64,
    pub peak_held: u64,
    pub failed: u64,
    pub outcomes: BTreeMap<String, u64>,
}

/// One phase: a fresh server, the honest load, and the attack (0: none).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AbusePhase {
    pub attack: u8,
    pub name: &'static str,
    /// Honest operations started, and those that succeeded.
    pub ops: u64,
    pub ok: u64,
    /// Latency of the honest REST operations (all of them, failed ones too).
    pub rest: Option<Stats>,
    /// Failed honest operations by operation and reason.
    pub failures: BTreeMap<String, u64>,
    /// Honest delivery, commit → frame read (the bench's bridge phase).
    pub delivery: Option<Stats>,
    pub delivery_expected: u64,
    pub delivery_received: u64,
    pub delivery_disconnects: u64,
    /// The delivery phase could not run (e.g. sockets could not reconnect).
    pub delivery_error: Option<String>,
    /// The server's VmHWM at the end of the phase (a fresh process).
    pub peak_rss_kib: Option<u64>,
    /// The attack was stopped early, and why (the RSS guard).
    pub aborted: Option<String>,
    pub attacker: Option<AttackerReport>,
}

impl AbusePhase {
    pub(super) fn success_pct(&self) -> f64 {
        match self.ops {
            0 => 0.0,
            n => (self.ok as f64 / n as f64 * 10_000.0).floor() / 100.0,
        }
    }

    fn key(&self) -> &'static str {
        ATTACKS
            .iter()
            .find(|a| a.0 == self.attack)
            .map_or("baseline", |a| a.2)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AbuseConfig {
    pub duration_s: f64,
    pub honest_users: usize,
    pub honest_ops_per_s_per_user: f64,
    pub honest_events_per_s: u32,
    pub serve_args: Vec<String>,
    pub rss_abort_mib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    pub machine: Machine,
    pub config: AbuseConfig,
    pub phases: Vec<AbusePhase>,
    pub targets: Vec<TargetCheck>,
}

/// Each phase's verdicts: REST p99 against the baseline's (attacks only),
/// delivery p99, success, peak RSS.
pub(super) fn judge(phases: &[AbusePhase]) -> Vec<TargetCheck> {
    let base_p99 = phases
        .iter()
        .find(|p| p.attack == 0)
        .and_then(|p| p.rest)
        .map(|s| s.p99_us);
    let mut out = Vec::new();
    for p in phases {
        if p.attack != 0 {
            out.push(rest_target(p, base_p99));
        }
        out.push(delivery_target(p));
        out.push(success_target(p));
        out.push(rss_target(p));
    }
    out
}

fn ms(us: u32) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn rest_target(p: &AbusePhase, base_p99: Option<u32>) -> TargetCheck {
    let p99 = p.rest.map(|s| s.p99_us);
    TargetCheck {
        key: p.key(),
        name: format!("{}: honest REST p99", p.name),
        target: format!(
            "≤ {REST_P99_FACTOR}× the baseline's ({})",
            base_p99.map_or("?".into(), ms)
        ),
        measured: p99.map_or("no requests".into(), ms),
        met: match (p99, base_p99) {
            (Some(v), Some(b)) => Some(v as f64 <= REST_P99_FACTOR * b as f64),
            _ => None,
        },
    }
}

fn delivery_target(p: &AbusePhase) -> TargetCheck {
    let measured = match (&p.delivery_error, p.delivery) {
        (Some(e), _) => format!("not measured: {e}"),
        (None, Some(s)) => ms(s.p99_us),
        (None, None) => "nothing delivered".into(),
    };
    TargetCheck {
        key: p.key(),
        name: format!("{}: honest delivery p99", p.name),
        target: format!("≤ {}", ms(DELIVERY_P99_US)),
        measured,
        met: Some(
            p.delivery_error.is_none() && p.delivery.is_some_and(|s| s.p99_us <= DELIVERY_P99_US),
        ),
    }
}

fn success_target(p: &AbusePhase) -> TargetCheck {
    let lost = p.delivery_expected.saturating_sub(p.delivery_received);
    let all = p.ops > 0 && p.ok == p.ops && lost == 0 && p.delivery_error.is_none();
    TargetCheck {
        key: p.key(),
        name: format!("{}: honest success", p.name),
        target: "100% of operations, every event delivered".into(),
        measured: format!(
            "{}% ({} of {} operations), {} of {} events delivered",
            p.success_pct(),
            p.ok,
            p.ops,
            p.delivery_received,
            p.delivery_expected
        ),
        met: Some(all),
    }
}

fn rss_target(p: &AbusePhase) -> TargetCheck {
    let mut measured = p
        .peak_rss_kib
        .map_or("?".into(), |k| format!("{} MiB", k / 1024));
    if let Some(why) = &p.aborted {
        measured.push_str(&format!(" (attack stopped: {why})"));
    }
    TargetCheck {
        key: p.key(),
        name: format!("{}: server peak RSS", p.name),
        target: format!("< {} MiB", PEAK_RSS_KIB / 1024),
        measured,
        met: p
            .peak_rss_kib
            .map(|k| k < PEAK_RSS_KIB && p.aborted.is_none()),
    }
}

fn opt_ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

pub(super) fn render(r: &AbuseReport) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(s, "ragctl bench --abuse");
    let _ = writeln!(s, "machine: {}", r.machine.describe());
    let _ = writeln!(
        s,
        "honest: {} users, {} op/s each (documents, messages, upload, ask, /ws), \
         {} events/s to their sockets; {:.0} s per phase, a fresh server each; serve args: {}",
        c.honest_users,
        c.honest_ops_per_s_per_user,
        c.honest_events_per_s,
        c.duration_s,
        if c.serve_args.is_empty() {
            "(defaults)".into()
        } else {
            c.serve_args.join(" ")
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<20} {:>9} {:>9} {:>11} {:>8} {:>9} {:>9} {:>10} {:>9}",
        "phase",
        "REST p50",
        "REST p99",
        "ok/ops",
        "success",
        "deliv p50",
        "deliv p99",
        "delivered",
        "peak RSS"
    );
    for p in &r.phases {
        let _ = writeln!(
            s,
            "{:<20} {:>9} {:>9} {:>11} {:>7}% {:>9} {:>9} {:>10} {:>5} MiB",
            format!("{} {}", p.attack, p.name),
            opt_ms(p.rest.map(|v| v.p50_us)),
            opt_ms(p.rest.map(|v| v.p99_us)),
            format!("{}/{}", p.ok, p.ops),
            p.success_pct(),
            opt_ms(p.delivery.map(|v| v.p50_us)),
            opt_ms(p.delivery.map(|v| v.p99_us)),
            format!("{}/{}", p.delivery_received, p.delivery_expected),
            p.peak_rss_kib
                .map_or("?".into(), |k| (k / 1024).to_string()),
        );
    }
    let _ = writeln!(s, "(latencies in ms)");
    details(&mut s, &r.phases);
    super::render::target_lines(&mut s, &r.targets, &[]);
    s
}

/// What each attacker got, and why honest operations failed.
fn details(s: &mut String, phases: &[AbusePhase]) {
    for p in phases {
        let mut lines = Vec::new();
        if let Some(a) = &p.attacker {
            let outcomes: Vec<String> = a
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            lines.push(format!(
                "attacker: {} attempts, {} opened, {} held at most, {} failed{}; {}",
                a.attempts,
                a.opened,
                a.peak_held,
                a.failed,
                if a.ready {
                    ""
                } else {
                    " (never at full strength)"
                },
                outcomes.join(", ")
            ));
        }
        if let Some(why) = &p.aborted {
            lines.push(format!("attack stopped early: {why}"));
        }
        if !p.failures.is_empty() {
            let f: Vec<String> = p
                .failures
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            lines.push(format!("honest failures: {}", f.join(", ")));
        }
        if let Some(e) = &p.delivery_error {
            lines.push(format!("delivery: {e}"));
        }
        if p.delivery_disconnects > 0 {
            lines.push(format!(
                "honest sockets disconnected: {}",
                p.delivery_disconnects
            ));
        }
        if !lines.is_empty() {
            let _ = writeln!(s, "\n{} {}:", p.attack, p.name);
            for l in lines {
                let _ = writeln!(s, "  {l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p99_us: u32) -> Option<Stats> {
        Some(Stats {
            p50_us: p99_us / 2,
            p90_us: p99_us,
            p99_us,
            max_us: p99_us,
            mean_us: p99_us / 2,
        })
    }

    fn phase(attack: u8, rest_p99: u32, delivery_p99: u32) -> AbusePhase {
        AbusePhase {
            attack,
            name: "x",
            ops: 100,
            ok: 100,
            rest: stats(rest_p99),
            delivery: stats(delivery_p99),
            delivery_expected: 10,
            delivery_received: 10,
            peak_rss_kib: Some(100 * 1024),
            ..AbusePhase::default()
        }
    }

    fn met(targets: &[TargetCheck], name: &str) -> Vec<Option<bool>> {
        targets
            .iter()
            .filter(|t| t.name.contains(name))
            .map(|t| t.met)
            .collect()
    }

    #[test]
    fn rest_p99_is_judged_against_twice_the_baseline() {
        let t = judge(&[
            phase(0, 10_000, 1_000),
            phase(1, 20_000, 1_000),
            phase(2, 20_001, 1_000),
        ]);
        assert_eq!(met(&t, "REST p99"), vec![Some(true), Some(false)]);
        assert_eq!(
            t.iter()
                .filter(|t| t.key == "unbounded_list" && t.met == Some(false))
                .count(),
            1
        );
        // Without a baseline the REST target is not judged.
        assert_eq!(met(&judge(&[phase(3, 1, 1)]), "REST p99"), vec![None]);
    }

    #[test]
    fn delivery_success_and_memory_have_absolute_targets() {
        let mut slow = phase(0, 1, 5_001);
        slow.ok = 99;
        slow.peak_rss_kib = Some(PEAK_RSS_KIB);
        let t = judge(&[phase(0, 1, 5_000), slow]);
        assert_eq!(met(&t, "delivery p99"), vec![Some(true), Some(false)]);
        assert_eq!(met(&t, "success"), vec![Some(true), Some(false)]);
        assert_eq!(met(&t, "RSS"), vec![Some(true), Some(false)]);

        let mut lost = phase(0, 1, 1);
        lost.delivery_received = 9;
        let mut aborted = phase(0, 1, 1);
        aborted.aborted = Some("RSS over 3072 MiB".into());
        let mut broken = phase(0, 1, 1);
        broken.delivery_error = Some("sockets".into());
        let t = judge(&[lost, aborted, broken]);
        assert_eq!(
            met(&t, "success"),
            vec![Some(false), Some(true), Some(false)]
        );
        assert_eq!(met(&t, "RSS"), vec![Some(true), Some(false), Some(true)]);
        assert_eq!(
            met(&t, "delivery p99"),
            vec![Some(true), Some(true), Some(false)]
        );
    }

    #[test]
    fn success_is_a_floored_percentage() {
        let mut p = phase(0, 1, 1);
        (p.ops, p.ok) = (3, 2);
        assert_eq!(p.success_pct(), 66.66);
        p.ops = 0;
        assert_eq!(p.success_pct(), 0.0);
    }
}
