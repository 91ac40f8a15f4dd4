//! The report as a table for people.

use std::fmt::Write as _;

use super::report::{
    CeilingReport, Config, CpuShare, IdleReport, PhaseResult, Report, TargetCheck,
};

pub(super) fn phase_line(r: &PhaseResult) -> String {
    match &r.latency {
        Some(s) => format!(
            "  {} events at {:.0}/s, {} of {} delivered, p50 {} µs, p99 {} µs, max {} µs",
            r.events, r.published_rate, r.received, r.expected, s.p50_us, s.p99_us, s.max_us
        ),
        None => format!("  {} events, nothing delivered", r.events),
    }
}

/// The latency phases, the ceilings and the idle sockets; the optional
/// phases and then [`targets`] follow (`phases::render`).
pub(super) fn phases(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    latency(&mut s, r);
    if let Some(cr) = &r.ceiling {
        ceiling(&mut s, cr, &r.config);
    }
    if let Some(i) = &r.idle {
        idle(&mut s, i);
    }
    s
}

/// What was run, on what.
fn header(s: &mut String, r: &Report) {
    let (m, c) = (&r.machine, &r.config);
    let _ = writeln!(
        s,
        "ragctl bench: {} events/s for {}s, {} clients over {} users, {} publishers",
        c.rate, c.duration_s, c.clients, c.users, c.publishers
    );
    let _ = writeln!(s, "machine: {}", m.describe());
    let _ = writeln!(s, "server: {}", c.server);
    let _ = writeln!(s);
}

/// One row of the latency table.
fn latency_row(s: &mut String, cells: [&str; 9]) {
    let [label, events, frames, lost, p50, p90, p99, max, mean] = cells;
    let _ = writeln!(
        s,
        "{label:<26} {events:>8} {frames:>9} {lost:>6} {p50:>8} {p90:>8} {p99:>8} {max:>8} {mean:>8}"
    );
}

/// The latency table (raw, bridge, their difference), then what explains
/// it: publishing rates, the server's own histogram, CPU.
fn latency(s: &mut String, r: &Report) {
    latency_row(
        s,
        [
            "latency (µs)",
            "events",
            "frames",
            "lost",
            "p50",
            "p90",
            "p99",
            "max",
            "mean",
        ],
    );
    for (label, p) in [
        ("raw NOTIFY → LISTEN", &r.raw),
        ("bridge pg_notify → WS", &r.bridge),
    ] {
        let st = p.latency;
        let f = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
        let (events, received, lost) = (
            p.events.to_string(),
            p.received.to_string(),
            p.lost.to_string(),
        );
        let stats = [
            f(st.map(|x| x.p50_us)),
            f(st.map(|x| x.p90_us)),
            f(st.map(|x| x.p99_us)),
            f(st.map(|x| x.max_us)),
            f(st.map(|x| x.mean_us)),
        ];
        let [p50, p90, p99, max, mean] = stats.each_ref().map(String::as_str);
        latency_row(
            s,
            [label, &events, &received, &lost, p50, p90, p99, max, mean],
        );
    }
    if let (Some(a), Some(b)) = (r.raw.latency, r.bridge.latency) {
        let d = |x: u32, y: u32| format!("{:+}", x as i64 - y as i64);
        let diffs = [
            d(b.p50_us, a.p50_us),
            d(b.p90_us, a.p90_us),
            d(b.p99_us, a.p99_us),
            d(b.max_us, a.max_us),
            d(b.mean_us, a.mean_us),
        ];
        let [p50, p90, p99, max, mean] = diffs.each_ref().map(String::as_str);
        latency_row(s, ["bridge − raw", "", "", "", p50, p90, p99, max, mean]);
    }
    explain_latency(s, r);
}

fn explain_latency(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "(published at {:.0} and {:.0} events/s; deliveries before the commit ack: raw {}, bridge {})",
        r.raw.published_rate, r.bridge.published_rate, r.raw.before_ack, r.bridge.before_ack
    );
    if let Some(ss) = &r.bridge.server_side {
        let le = |v: Option<f64>| v.map_or("> 5000".into(), |v| format!("≤ {v}"));
        let _ = writeln!(
            s,
            "server's own histogram (envelope ts → frame written, ms): p50 {}, p90 {}, p99 {} ({} samples)",
            le(ss.p50_le_ms),
            le(ss.p90_le_ms),
            le(ss.p99_le_ms),
            ss.samples
        );
    }
    for (label, p) in [("raw", &r.raw), ("bridge", &r.bridge)] {
        if let Some(cpu) = &p.cpu {
            let _ = writeln!(
                s,
                "CPU during {label:<6} (% of one core): {}",
                cpu_text(cpu)
            );
        }
    }
    if let (Some(us), Some(ms)) = (
        r.bridge.server_us_per_frame,
        r.bridge.cpu.as_ref().and_then(|c| c.server_ms),
    ) {
        let _ = writeln!(
            s,
            "server CPU per delivered frame: {us:.1} µs ({ms:.0} ms of CPU for {} frames)",
            r.bridge.received
        );
    }
}

/// Every step of both ceiling searches, then the ceilings.
fn ceiling(s: &mut String, cr: &CeilingReport, c: &Config) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "ceiling ({}s steps; sustained = nothing lost and the backlog drained ≤ 1 s after the last commit;\n ceiling = highest rate committed in a sustained step)",
        c.step_s
    );
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>11} {:>10} {:>10} {:>8} {:>8} {:>10} {:>22}  verdict",
        "path",
        "rate/s",
        "published/s",
        "expected",
        "received",
        "lost",
        "p99 µs",
        "backlog ms",
        "CPU% bench/srv/pg/oth"
    );
    for (label, ce) in [("raw", &cr.raw), ("bridge", &cr.bridge)] {
        for st in &ce.steps {
            step_row(s, label, st);
        }
    }
    let _ = writeln!(
        s,
        "ceiling: raw {} events/s, bridge {} events/s ({} frames/s), ratio {:.1}%",
        cr.raw.events_per_s,
        cr.bridge.events_per_s,
        bridge_frames(cr.bridge.events_per_s, c),
        cr.ratio * 100.0
    );
}

fn step_row(s: &mut String, label: &str, st: &PhaseResult) {
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>11.0} {:>10} {:>10} {:>8} {:>8} {:>10.0} {:>22}  {}",
        label,
        st.rate,
        st.published_rate,
        st.expected,
        st.received,
        st.lost,
        st.latency.map_or("-".into(), |x| x.p99_us.to_string()),
        st.backlog_ms,
        st.cpu.map_or("-".into(), |c| format!(
            "{:.0}/{}/{:.0}/{:.0}",
            c.bench,
            c.server.map_or("?".into(), |v| format!("{v:.0}")),
            c.postgres,
            c.other
        )),
        st.verdict
    );
}

fn idle(s: &mut String, i: &IdleReport) {
    let _ = writeln!(s);
    let kib = |v: Option<u64>| v.map_or("?".into(), |v| format!("{v} KiB"));
    let _ = writeln!(
        s,
        "idle sockets: {} of {} open ({} failed); server RSS {} → {}: {} KiB per socket",
        i.opened,
        i.requested,
        i.failed,
        kib(i.rss_before_kib),
        kib(i.rss_after_kib),
        i.kib_per_socket.map_or("?".into(), |v| format!("{v:.2}"))
    );
}

/// Each target met, missed or not measured; then any disturbance.
pub(super) fn targets(s: &mut String, r: &Report) {
    target_lines(s, &r.targets, &r.disturbed);
}

/// The verdicts, and why a phase's numbers may not be representative.
pub(super) fn target_lines(s: &mut String, targets: &[TargetCheck], disturbed: &[String]) {
    let _ = writeln!(s);
    let _ = writeln!(s, "targets");
    for t in targets {
        let mark = match t.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(
            s,
            "  [{mark}] {}: {} (target {})",
            t.name, t.measured, t.target
        );
    }
    for d in disturbed {
        let _ = writeln!(s, "warning: {d}");
    }
}

pub(super) fn cpu_text(c: &CpuShare) -> String {
    format!(
        "bench {:.0}%, server {}, postgres {:.0}%, irq+softirq {:.0}%, steal {:.0}%, other {:.0}%, idle {:.0}%",
        c.bench,
        c.server.map_or("?".into(), |v| format!("{v:.0}%")),
        c.postgres,
        c.irq,
        c.steal,
        c.other,
        c.idle
    )
}

fn bridge_frames(events: u32, c: &Config) -> u64 {
    // Each event goes to every socket of one user.
    (events as f64 * c.clients as f64 / c.users.min(c.clients) as f64).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::report::{
        Ceiling, CeilingReport, Config, CpuShare, IdleReport, Machine, PhaseResult, Report,
        ServerSide, Stats, TargetCheck,
    };

    fn step(rate: u32, sustained: bool) -> PhaseResult {
        PhaseResult {
            rate,
            events: rate as u64 * 3,
            published_rate: rate as f64 * 0.99,
            publish_errors: 0,
            expected: rate as u64 * 30,
            received: rate as u64 * 30 - u64::from(!sustained),
            lost: u64::from(!sustained),
            duplicates: 0,
            misrouted: 0,
            before_ack: 2,
            backlog_ms: 12.5,
            disconnects: 0,
            latency: Some(Stats {
                p50_us: 310,
                p90_us: 520,
                p99_us: 900,
                max_us: 4000,
                mean_us: 350,
            }),
            cpu: Some(CpuShare {
                bench: 30.0,
                server: Some(25.0),
                server_ms: Some(2500.0),
                postgres: 40.0,
                irq: 10.0,
                steal: 0.0,
                other: 7.0,
                idle: 95.0,
            }),
            server_us_per_frame: Some(12.5),
            server_side: Some(ServerSide {
                samples: 100,
                p50_le_ms: Some(1.0),
                p90_le_ms: Some(2.5),
                p99_le_ms: None,
            }),
            server_counters: Default::default(),
            sustained,
            publisher_bound: false,
            verdict: if sustained {
                "sustained".into()
            } else {
                "1 lost".into()
            },
        }
    }

    fn sample() -> Report {
        let raw = step(2000, true);
        let mut bridge = step(2000, true);
        bridge.latency = Some(Stats {
            p50_us: 700,
            p90_us: 900,
            p99_us: 2100,
            max_us: 9000,
            mean_us: 650,
        });
        Report {
            machine: Machine {
                cpus: 2,
                cpu_model: Some("Test CPU".into()),
                mem_total_mib: Some(24000),
                kernel: None,
                postgres: Some("16.4".into()),
            },
            config: Config {
                rate: 2000,
                duration_s: 10.0,
                clients: 1000,
                users: 100,
                publishers: 4,
                idle_sockets: 10,
                step_s: 3.0,
                server: "started".into(),
                ws_queue: Some(256),
            },
            idle: Some(IdleReport {
                requested: 10,
                opened: 10,
                failed: 0,
                rss_before_kib: Some(1000),
                rss_after_kib: Some(1100),
                kib_per_socket: Some(10.0),
            }),
            raw: raw.clone(),
            bridge: bridge.clone(),
            ceiling: Some(CeilingReport {
                raw: Ceiling {
                    events_per_s: 8000,
                    steps: vec![step(2000, true), step(4000, true), step(8000, false)],
                },
                bridge: Ceiling {
                    events_per_s: 4000,
                    steps: vec![step(2000, true), step(4000, false)],
                },
                ratio: 0.5,
            }),
            targets: vec![
                TargetCheck {
                    key: "latency_p50",
                    name: "p50".into(),
                    target: "≤ +0.5 ms".into(),
                    measured: "+0.390 ms".into(),
                    met: Some(true),
                },
                TargetCheck {
                    key: "idle_rss",
                    name: "rss".into(),
                    target: "≤ 32 KiB".into(),
                    measured: "skipped".into(),
                    met: None,
                },
            ],
            ok: true,
            disturbed: vec!["the raw latency phase was disturbed".into()],
        }
    }

    #[test]
    fn the_table_lines_up_and_marks_the_targets() {
        let report = sample();
        let mut text = phases(&report);
        targets(&mut text, &report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[4],
            "latency (µs)                 events    frames   lost      p50      p90      p99      max     mean"
        );
        assert_eq!(
            lines[7],
            "bridge − raw                                             +390     +380    +1200    +5000     +300"
        );
        assert!(text.contains("p99 > 5000 (100 samples)"), "{text}");
        assert!(
            text.contains(
                "ceiling: raw 8000 events/s, bridge 4000 events/s (40000 frames/s), ratio 50.0%"
            ),
            "{text}"
        );
        assert!(text.contains("  [met   ] p50: +0.390 ms (target ≤ +0.5 ms)\n  [n/a   ] rss:"));
        assert!(text.ends_with("warning: the raw latency phase was disturbed\n"));
    }
}
