//! The `--sockets` run judged and printed: the targets for 100,000
//! sockets on one process.

use std::fmt::Write as _;

use serde::Serialize;

use super::mass::MassReport;
use super::render::{cpu_text, phase_line, target_lines};
use super::report::{PhaseResult, TargetCheck, disturbance};

/// The targets.
pub(super) const SOCKETS_TARGET: usize = 100_000;
const ACCEPT_TARGET: f64 = 10_000.0;
const RSS_TARGET_MIB: f64 = 600.0;
const PER_SOCKET_TARGET_KIB: f64 = 4.0;
const P99_TARGET_US: u32 = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    #[serde(flatten)]
    pub report: MassReport,
    pub targets: Vec<TargetCheck>,
    pub ok: bool,
    pub disturbed: Vec<String>,
}

fn check(
    key: &'static str,
    name: String,
    target: &str,
    measured: String,
    met: Option<bool>,
) -> TargetCheck {
    TargetCheck {
        key,
        name,
        target: target.into(),
        measured,
        met,
    }
}

/// The targets; the RSS total is judged only with 100,000 sockets held
/// (below that it says nothing about the target).
pub(super) fn judge(r: MassReport) -> Judged {
    let last = r.checkpoints.last();
    let rss_mib = last.and_then(|c| c.rss_kib).map(|k| k as f64 / 1024.0);
    let worst = r
        .checkpoints
        .iter()
        .filter_map(|c| c.kib_per_socket)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let per = r
        .checkpoints
        .iter()
        .map(|c| {
            format!(
                "{} at {}",
                c.kib_per_socket
                    .map_or("?".into(), |v| format!("{v:.2} KiB")),
                c.sockets
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let targets = vec![
        check(
            "sockets_held",
            "sockets held at once by one server".into(),
            "≥ 100000",
            format!(
                "{} of {} asked ({} failed to open, {} dropped)",
                r.held, r.asked, r.failed, r.dropped
            ),
            Some(r.held >= SOCKETS_TARGET.min(r.asked) && r.dropped == 0),
        ),
        check(
            "accept_rate",
            format!("accept rate ({} sockets)", r.opened),
            "≥ 10000/s",
            format!("{:.0}/s", r.accept_per_s),
            (r.opened > 0).then_some(r.accept_per_s >= ACCEPT_TARGET),
        ),
        check(
            "rss_total",
            format!("server RSS with {} sockets", r.held),
            "< 600 MiB at 100000",
            rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB")),
            rss_mib
                .filter(|_| r.held >= SOCKETS_TARGET)
                .map(|m| m < RSS_TARGET_MIB),
        ),
        check(
            "rss_per_socket",
            "RSS per idle socket".into(),
            "≤ 4 KiB",
            per,
            worst.map(|w| w <= PER_SOCKET_TARGET_KIB),
        ),
        held_p99(&r.sample, r.held, (P99_TARGET_US, "< 5 ms")),
    ];
    let disturbed = held_disturbed(&r.sample);
    let ok = targets.iter().all(|t| t.met != Some(false));
    Judged {
        report: r,
        targets,
        ok,
        disturbed,
    }
}

/// The sample's p99 while `held` sockets are held, under `target_us`,
/// with nothing lost (`--sockets`, with one instance or several).
pub(super) fn held_p99(
    sample: &PhaseResult,
    held: usize,
    (target_us, text): (u32, &str),
) -> TargetCheck {
    let p99 = sample.latency.map(|s| s.p99_us);
    check(
        "held_p99",
        format!("p99 to the sample while {held} are held"),
        text,
        p99.map_or("nothing delivered".into(), |v| {
            format!("{v} µs, {} lost", sample.lost)
        }),
        Some(p99.is_some_and(|v| v < target_us) && sample.lost == 0),
    )
}

/// Whether other processes disturbed the held-latency phase.
pub(super) fn held_disturbed(sample: &PhaseResult) -> Vec<String> {
    let cpu = sample.cpu.as_ref();
    cpu.and_then(|c| disturbance("held-sockets", c))
        .into_iter()
        .collect()
}

pub(super) fn render(j: &Judged) -> String {
    let (r, m) = (&j.report, &j.report.machine);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ragctl bench --sockets {}: {} sockets on one server",
        r.asked, r.asked
    );
    let _ = writeln!(s, "machine: {}", m.describe());
    let _ = writeln!(s, "limits: {}", r.limits.describe());
    let _ = writeln!(
        s,
        "mass sockets: {} tried, {} opened at {:.0}/s, {} failed, {} dropped while held; {} held in all",
        r.tried, r.opened, r.accept_per_s, r.failed, r.dropped, r.held
    );
    for (why, n) in &r.errors {
        let _ = writeln!(s, "  failed {n}×: {why}");
    }
    if let Some(c) = &r.open_cpu {
        let _ = writeln!(
            s,
            "  CPU while the first ones opened (% of one core): {}",
            cpu_text(c)
        );
    }
    let base = r.rss_base_kib.map_or("?".into(), |v| v.to_string());
    let _ = writeln!(s, "server RSS with the fleets only: {base} KiB");
    for c in &r.checkpoints {
        let _ = writeln!(
            s,
            "  + {} mass sockets: {} KiB ({} KiB/socket)",
            c.sockets,
            c.rss_kib.map_or("?".into(), |v| v.to_string()),
            c.kib_per_socket.map_or("?".into(), |v| format!("{v:.2}"))
        );
    }
    let _ = writeln!(s, "sample while held:{}", phase_line(&r.sample));
    if let Some(c) = &r.sample.cpu {
        let _ = writeln!(s, "  CPU (% of one core): {}", cpu_text(c));
    }
    let _ = writeln!(s, "one user with 1000 sockets:{}", phase_line(&r.fan_out));
    target_lines(&mut s, &j.targets, &j.disturbed);
    s
}
