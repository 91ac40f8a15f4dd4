//! The report as a table for people.

use super::report::{Config, CpuShare, PhaseResult, Report};

pub(super) fn phase_line(r: &PhaseResult) -> String {
    match &r.latency {
        Some(s) => format!(
            "  {} events at {:.0}/s, {} of {} delivered, p50 {} µs, p99 {} µs, max {} µs",
            r.events, r.published_rate, r.received, r.expected, s.p50_us, s.p99_us, s.max_us
        ),
        None => format!("  {} events, nothing delivered", r.events),
    }
}

pub(super) fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r.machine;
    let c = &r.config;
    let _ = writeln!(
        s,
        "ragctl bench: {} events/s for {}s, {} clients over {} users, {} publishers",
        c.rate, c.duration_s, c.clients, c.users, c.publishers
    );
    let _ = writeln!(
        s,
        "machine: {} CPUs ({}), {} MiB RAM, Linux {}, PostgreSQL {}",
        m.cpus,
        m.cpu_model.as_deref().unwrap_or("?"),
        m.mem_total_mib.map_or("?".into(), |v| v.to_string()),
        m.kernel.as_deref().unwrap_or("?"),
        m.postgres.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(s, "server: {}", c.server);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency (µs)", "events", "frames", "lost", "p50", "p90", "p99", "max", "mean"
    );
    for (label, p) in [
        ("raw NOTIFY → LISTEN", &r.raw),
        ("bridge pg_notify → WS", &r.bridge),
    ] {
        let st = p.latency;
        let f = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
        let _ = writeln!(
            s,
            "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            label,
            p.events,
            p.received,
            p.lost,
            f(st.map(|x| x.p50_us)),
            f(st.map(|x| x.p90_us)),
            f(st.map(|x| x.p99_us)),
            f(st.map(|x| x.max_us)),
            f(st.map(|x| x.mean_us)),
        );
    }
    if let (Some(a), Some(b)) = (r.raw.latency, r.bridge.latency) {
        let d = |x: u32, y: u32| format!("{:+}", x as i64 - y as i64);
        let _ = writeln!(
            s,
            "{:<26} {:>8} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "bridge − raw",
            "",
            "",
            "",
            d(b.p50_us, a.p50_us),
            d(b.p90_us, a.p90_us),
            d(b.p99_us, a.p99_us),
            d(b.max_us, a.max_us),
            d(b.mean_us, a.mean_us),
        );
    }
    let _ = writeln!(
        s,
        "(published at {:.0} and {:.0} events/s; deliveries before the commit ack: raw {}, bridge {})",
        r.raw.published_rate, r.bridge.published_rate, r.raw.before_ack, r.bridge.before_ack
    );
    if let Some(ss) = &r.bridge.server_side {
        let le = |v: Option<f64>| v.map_or("> 5000".into(), |v| format!("≤ {v}"));
        let _ = writeln!(
            s,
            "server's own histogram (envelope ts → frame written, ms): p50 {}, p90 {}, p99 {} ({} frames)",
            le(ss.p50_le_ms),
            le(ss.p90_le_ms),
            le(ss.p99_le_ms),
            ss.frames
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
    if let Some(cr) = &r.ceiling {
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
    if let Some(i) = &r.idle {
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
    let _ = writeln!(s);
    let _ = writeln!(s, "targets");
    for t in &r.targets {
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
    for d in &r.disturbed {
        let _ = writeln!(s, "warning: {d}");
    }
    s
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

pub(super) fn bridge_frames(events: u32, c: &Config) -> u64 {
    // Each event goes to every socket of one user.
    (events as f64 * c.clients as f64 / c.users.min(c.clients) as f64).round() as u64
}
