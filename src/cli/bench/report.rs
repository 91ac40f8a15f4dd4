//! The report: what one run measured, and the targets it is judged by.

use serde::Serialize;

use super::args::BenchArgs;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub mem_total_mib: Option<u64>,
    pub kernel: Option<String>,
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub rate: u32,
    pub duration_s: f64,
    pub clients: u64,
    pub users: u64,
    pub publishers: u64,
    pub idle_sockets: usize,
    pub step_s: f64,
    pub server: String,
    pub ws_queue: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub mean_us: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub rate: u32,
    pub events: u64,
    /// Events committed per second over the publishing window.
    pub published_rate: f64,
    pub publish_errors: u64,
    /// Deliveries expected (events × sockets of the event's user).
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Frames that reached a socket of another user (must be 0).
    pub misrouted: u64,
    /// Deliveries read before the publisher saw its commit acknowledged
    /// (counted as 0 µs).
    pub before_ack: u64,
    /// Last delivery minus last commit, ms (how long the backlog took).
    pub backlog_ms: f64,
    /// WebSocket disconnects during the phase (slow-consumer closes etc.).
    pub disconnects: u64,
    pub latency: Option<Stats>,
    /// CPU used while publishing and draining, in % of one core.
    pub cpu: Option<CpuShare>,
    /// The server's own view (bridge only): envelope `ts` → frame written
    /// to the socket, from its `ragctl_bridge_delivery_seconds` histogram.
    pub server_side: Option<ServerSide>,
    /// The server's CPU time per frame delivered to a client, µs (bridge
    /// only): the cost of a frame, all of the server's work included.
    pub server_us_per_frame: Option<f64>,
    /// The server's counters that moved during the phase (forwarded,
    /// listener overflow, slow consumers, drops).
    pub server_counters: std::collections::BTreeMap<String, f64>,
    /// Nothing lost (no drops, no disconnects) and the backlog drained
    /// within a second of the last commit.
    pub sustained: bool,
    /// The publishers committed less than 95% of the asked rate: PostgreSQL
    /// (or the CPU it shares) could not take more.
    pub publisher_bound: bool,
    /// Why a step was not sustained.
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Highest rate committed in a sustained step, events/s (0 if even
    /// the first step failed).
    pub events_per_s: u32,
    pub steps: Vec<PhaseResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub raw: Ceiling,
    pub bridge: Ceiling,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// Short name for the error message.
    pub key: &'static str,
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None` when not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub config: Config,
    pub idle: Option<IdleReport>,
    pub raw: PhaseResult,
    pub bridge: PhaseResult,
    pub ceiling: Option<CeilingReport>,
    /// These phases' targets and those of the optional phases above them
    /// (`phases::PhasesReport`).
    pub targets: Vec<TargetCheck>,
    pub ok: bool,
    /// Latency phases during which the hypervisor or other processes took
    /// enough CPU to make them unrepresentative.
    pub disturbed: Vec<String>,
}

/// Percentiles read off the server's histogram: each is the upper bound of
/// the bucket it falls in, in ms (`None` past the last bucket).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerSide {
    /// One per event written at once to its user's sockets, one per frame
    /// that waited in a socket's queue (`ragctl_bridge_delivery_seconds`).
    pub samples: u64,
    pub p50_le_ms: Option<f64>,
    pub p90_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
}

/// CPU use over a phase, in % of one core (200% = both cores of a 2-core
/// machine): this process, the server, every `postgres` process, and the
/// rest of the machine (other work competing for the cores).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuShare {
    pub bench: f64,
    pub server: Option<f64>,
    /// The server's CPU time (user + system, from `/proc`, in clock ticks
    /// of 10 ms) over the phase, ms.
    pub server_ms: Option<f64>,
    pub postgres: f64,
    /// Interrupt and softirq time (loopback TCP is mostly processed here).
    pub irq: f64,
    /// Time the hypervisor gave to other guests.
    pub steal: f64,
    /// Every other process on the machine.
    pub other: f64,
    pub idle: f64,
}

/// CPU taken by the hypervisor (steal) or unrelated processes above which a
/// phase is reported as disturbed, in % of one core.
const DISTURBED_PCT: f64 = 5.0;

/// Why a phase's numbers are not representative, if they are not. The
/// verdicts stand; this tells the reader to re-run on a quieter machine.
pub(super) fn disturbance(label: &str, cpu: &CpuShare) -> Option<String> {
    (cpu.steal > DISTURBED_PCT || cpu.other > DISTURBED_PCT).then(|| {
        format!(
            "the {label} latency phase was disturbed: steal {:.0}%, other processes {:.0}% of one core (over {DISTURBED_PCT:.0}%); re-run on a quiet machine before reading its latency",
            cpu.steal, cpu.other
        )
    })
}

impl Config {
    pub(super) fn new(args: &BenchArgs) -> Config {
        Config {
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            clients: args.clients,
            users: args.users,
            publishers: args.publishers,
            idle_sockets: args.idle_sockets,
            step_s: args.step.as_secs_f64(),
            server: match &args.server_url {
                Some(u) => u.clone(),
                None => format!(
                    "started: ragctl serve --no-workers --ws-queue={}",
                    args.ws_queue
                ),
            },
            ws_queue: args.server_url.is_none().then_some(args.ws_queue),
        }
    }
}

impl Report {
    /// The measurements, judged against the targets.
    pub(super) fn new(
        machine: Machine,
        config: Config,
        idle: Option<IdleReport>,
        raw: PhaseResult,
        bridge: PhaseResult,
        ceiling: Option<CeilingReport>,
        more_targets: Vec<TargetCheck>,
    ) -> Report {
        let mut targets = targets(&config, &raw, &bridge, ceiling.as_ref(), idle.as_ref());
        targets.extend(more_targets);
        let ok = targets.iter().all(|t| t.met != Some(false));
        let disturbed = [("raw", &raw), ("bridge", &bridge)]
            .into_iter()
            .filter_map(|(label, p)| disturbance(label, p.cpu.as_ref()?))
            .collect();
        Report {
            machine,
            config,
            idle,
            raw,
            bridge,
            ceiling,
            targets,
            ok,
            disturbed,
        }
    }
}

fn targets(
    config: &Config,
    raw: &PhaseResult,
    bridge: &PhaseResult,
    ceiling: Option<&CeilingReport>,
    idle: Option<&IdleReport>,
) -> Vec<TargetCheck> {
    let at = format!(
        "{}/s, {} clients, {} users",
        config.rate, config.clients, config.users
    );
    let mut out = latency_targets(&at, raw, bridge);
    out.push(TargetCheck {
        key: "no_loss",
        name: format!("nothing lost in the latency runs ({at})"),
        target: "0 lost".into(),
        measured: format!(
            "raw {} lost, bridge {} lost of {}",
            raw.lost, bridge.lost, bridge.expected
        ),
        met: Some(
            raw.lost == 0 && bridge.lost == 0 && bridge.misrouted == 0 && bridge.duplicates == 0,
        ),
    });
    out.push(ceiling_target(ceiling));
    out.push(idle_target(idle));
    out
}

/// Bridge minus raw at p50 (≤ +0.5 ms) and p99 (≤ +2 ms).
fn latency_targets(at: &str, raw: &PhaseResult, bridge: &PhaseResult) -> Vec<TargetCheck> {
    let (Some(r), Some(b)) = (&raw.latency, &bridge.latency) else {
        return vec![TargetCheck {
            key: "latency",
            name: "latency".into(),
            target: "deliveries to measure".into(),
            measured: "nothing delivered".into(),
            met: Some(false),
        }];
    };
    let ms = |us: i64| format!("{:+.3} ms", us as f64 / 1000.0);
    let d50 = b.p50_us as i64 - r.p50_us as i64;
    let d99 = b.p99_us as i64 - r.p99_us as i64;
    vec![
        TargetCheck {
            key: "latency_p50",
            name: format!("bridge p50 − raw p50 ({at})"),
            target: "≤ +0.5 ms".into(),
            measured: format!("{} ({} vs {} µs)", ms(d50), b.p50_us, r.p50_us),
            met: Some(d50 <= 500),
        },
        TargetCheck {
            key: "latency_p99",
            name: format!("bridge p99 − raw p99 ({at})"),
            target: "≤ +2 ms".into(),
            measured: format!("{} ({} vs {} µs)", ms(d99), b.p99_us, r.p99_us),
            met: Some(d99 <= 2000),
        },
    ]
}

/// The bridge's zero-loss ceiling is at least 90% of the raw one.
fn ceiling_target(ceiling: Option<&CeilingReport>) -> TargetCheck {
    let (measured, met) = match ceiling {
        Some(c) => (
            format!(
                "{:.1}% ({} vs {} events/s)",
                c.ratio * 100.0,
                c.bridge.events_per_s,
                c.raw.events_per_s
            ),
            Some(c.ratio >= 0.9),
        ),
        None => ("skipped (--no-ceiling)".into(), None),
    };
    TargetCheck {
        key: "ceiling_ratio",
        name: "bridge ceiling / raw ceiling (zero loss)".into(),
        target: "≥ 90%".into(),
        measured,
        met,
    }
}

/// At most 32 KiB of server RSS per idle socket, all of them opened.
fn idle_target(idle: Option<&IdleReport>) -> TargetCheck {
    let (name, measured, met) = match idle.and_then(|i| i.kib_per_socket.map(|k| (i, k))) {
        Some((i, k)) => (
            format!("RSS per idle socket ({} sockets)", i.opened),
            format!("{k:.2} KiB"),
            Some(k <= 32.0 && i.opened == i.requested),
        ),
        None => (
            "RSS per idle socket".to_string(),
            match idle {
                None => "skipped (--idle-sockets 0)".into(),
                Some(_) => "not measured (no server pid: pass --server-pid)".into(),
            },
            None,
        ),
    };
    TargetCheck {
        key: "idle_rss",
        name,
        target: "≤ 32 KiB".into(),
        measured,
        met,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_with_steal_or_other_load_are_flagged() {
        let cpu = |steal, other| CpuShare {
            bench: 30.0,
            server: Some(25.0),
            server_ms: Some(2500.0),
            postgres: 40.0,
            irq: 10.0,
            steal,
            other,
            idle: 95.0,
        };
        assert_eq!(disturbance("bridge", &cpu(0.0, 3.0)), None);
        let d = disturbance("bridge", &cpu(16.0, 0.0)).unwrap();
        assert!(d.contains("bridge") && d.contains("steal 16%"), "{d}");
        assert!(
            disturbance("raw", &cpu(0.0, 74.0))
                .unwrap()
                .contains("other processes 74%")
        );
    }
}
