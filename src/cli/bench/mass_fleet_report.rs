//! The `--sockets N --instances M` run judged and printed: the issue's
//! targets for 100,000 sockets over several API instances.

use std::fmt::Write as _;

use serde::Serialize;

use super::mass_fleet::FleetReport;
use super::mass_report::{SOCKETS_TARGET, held_disturbed, held_p99};
use super::render::{cpu_text, phase_line, target_lines};
use super::report::TargetCheck;

/// p99 to the sample while all are held, µs.
const P99_TARGET_US: u32 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct FleetJudged {
    #[serde(flatten)]
    pub report: FleetReport,
    pub targets: Vec<TargetCheck>,
    pub ok: bool,
    pub disturbed: Vec<String>,
}

/// Held, every instance holding some, and the sample's p99 with nothing lost.
pub(super) fn judge(r: FleetReport) -> FleetJudged {
    let spread = r
        .sockets_per_instance
        .iter()
        .all(|n| n.is_some_and(|n| n > 0));
    let targets = vec![
        TargetCheck {
            key: "sockets_held",
            name: format!("sockets held at once by {} instances", r.instances),
            target: format!("≥ {}", SOCKETS_TARGET.min(r.asked)),
            measured: format!(
                "{} of {} asked ({} failed to open, {} dropped)",
                r.held, r.asked, r.failed, r.dropped
            ),
            met: Some(r.held >= SOCKETS_TARGET.min(r.asked) && r.dropped == 0),
        },
        TargetCheck {
            key: "spread",
            name: "every instance holds sockets".into(),
            target: "all".into(),
            measured: counts(&r.sockets_per_instance),
            met: Some(spread),
        },
        held_p99(&r.sample, r.held, (P99_TARGET_US, "< 10 ms")),
    ];
    let disturbed = held_disturbed(&r.sample);
    let ok = targets.iter().all(|t| t.met != Some(false));
    FleetJudged {
        report: r,
        targets,
        ok,
        disturbed,
    }
}

/// `a / b / c`, `?` where unknown.
fn counts(v: &[Option<u64>]) -> String {
    v.iter()
        .map(|n| n.map_or("?".into(), |n| n.to_string()))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn kib(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| format!("{} KiB", v))
}

pub(super) fn render(j: &FleetJudged) -> String {
    let r = &j.report;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ragctl bench --sockets {} --instances {} --bus {}: {} client processes",
        r.asked, r.instances, r.bus, r.client_procs
    );
    let _ = writeln!(s, "machine: {}", r.machine.describe());
    let _ = writeln!(s, "limits: {}", r.limits.describe());
    let _ = writeln!(
        s,
        "client-process sockets: {} tried, {} opened at {:.0}/s, {} failed, {} dropped while held; {} held in all ({} sample)",
        r.tried, r.opened, r.accept_per_s, r.failed, r.dropped, r.held, r.sample_sockets
    );
    for (why, n) in &r.errors {
        let _ = writeln!(s, "  failed {n}×: {why}");
    }
    let _ = writeln!(
        s,
        "sockets per instance: {}",
        counts(&r.sockets_per_instance)
    );
    let _ = writeln!(
        s,
        "instance RSS, sample only (KiB): {}",
        counts(&r.rss_base_kib)
    );
    let _ = writeln!(
        s,
        "instance RSS, all held (KiB): {}",
        counts(&r.rss_held_kib)
    );
    let _ = writeln!(
        s,
        "  total {} ({} per socket); client processes {}",
        kib(r.rss_total_kib),
        r.kib_per_socket
            .map_or("?".into(), |v| format!("{v:.2} KiB")),
        kib(r.clients_rss_kib)
    );
    if let Some(relay) = &r.relay {
        let _ = writeln!(
            s,
            "relay: instance {} ({}); nats-server {}",
            relay.instance.map_or("?".into(), |k| (k + 1).to_string()),
            kib(relay.rss_kib),
            kib(relay.nats_server_rss_kib)
        );
    }
    let _ = writeln!(s, "sample while held:{}", phase_line(&r.sample));
    if let Some(c) = &r.sample.cpu {
        let _ = writeln!(s, "  CPU (% of one core): {}", cpu_text(c));
    }
    target_lines(&mut s, &j.targets, &j.disturbed);
    s
}
