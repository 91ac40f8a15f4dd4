//! What `--capacity --bus nats` reports: both buses with 1, 2, 4 and 8
//! instances, the relay, the failover, and the four targets of issue #21
//! judged on them. A leaf but for the report's types.

use std::fmt::Write as _;

use serde::Serialize;

use super::report::TargetCheck;

/// One bus with `instances` instances sharing the sockets, at `--rate`.
#[derive(Debug, Clone, Serialize)]
pub struct BusSpread {
    pub bus: &'static str,
    pub instances: usize,
    pub events: u64,
    pub lost: u64,
    pub p50_us: Option<u32>,
    pub p99_us: Option<u32>,
    /// CPU of the database's client backends per event published, µs.
    pub pg_us_per_event: f64,
    /// Each instance's CPU per event published, µs.
    pub instance_us_per_event: Vec<f64>,
    /// The relay process's (NATS only).
    pub relay_us_per_event: Option<f64>,
    /// nats-server's (NATS with a server the benchmark started).
    pub nats_us_per_event: Option<f64>,
}

/// An instance with no socket, while another holds them all.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCost {
    pub bus: &'static str,
    pub events: u64,
    pub cpu_ms: f64,
    /// Its CPU over the phase per event published (as `drop_cost`), µs.
    pub us_per_event: f64,
    /// Its CPU with no events flowing (timers, heartbeats), ms per second.
    pub quiet_ms_per_s: f64,
    /// `us_per_event` less that background.
    pub marginal_us_per_event: f64,
}

/// SIGKILL of the leading relay while events flow.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub rate: u32,
    pub events: u64,
    pub documents: usize,
    /// Kill → the first frame of an event committed after the kill, ms.
    pub resumed_ms: Option<f64>,
    /// Documents whose latest row no socket of its user saw at the end.
    pub stale: usize,
    /// Events committed after the kill no socket saw as such (a heal
    /// frame carries the row's latest state instead).
    pub coalesced: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusCapacity {
    pub sockets: usize,
    pub users: usize,
    pub rate: u32,
    pub spreads: Vec<BusSpread>,
    pub idle: Vec<IdleCost>,
    /// Bridge ceiling over NATS with every instance (relay included), ev/s.
    pub nats_ceiling: u32,
    pub failover: Option<Failover>,
    pub targets: Vec<TargetCheck>,
}

fn find<'a>(s: &'a [BusSpread], bus: &str, n: usize) -> Option<&'a BusSpread> {
    s.iter().find(|x| x.bus == bus && x.instances == n)
}

/// The four targets of issue #21, `met: None` where not measured.
pub(super) fn targets(
    spreads: &[BusSpread],
    idle: &[IdleCost],
    failover: Option<&Failover>,
) -> Vec<TargetCheck> {
    let check = |key, name: &str, target: &str, got: Option<(bool, String)>| TargetCheck {
        key,
        name: name.into(),
        target: target.into(),
        met: got.as_ref().map(|g| g.0),
        measured: got.map_or("not measured".into(), |g| g.1),
    };
    let pg = find(spreads, "nats", 1)
        .zip(find(spreads, "nats", 8))
        .map(|(a, b)| {
            let ratio = b.pg_us_per_event / a.pg_us_per_event.max(1e-9);
            (
                ratio <= 1.2,
                format!(
                    "{:.1} µs with 8, {:.1} µs with 1: {ratio:.2}×",
                    b.pg_us_per_event, a.pg_us_per_event
                ),
            )
        });
    // Judged above the background: its timers (heartbeats watched, the
    // pool's and the metrics' ticks) cost the same with no events at all,
    // so at a low rate they would swamp a cost per event.
    let spare = idle.iter().find(|i| i.bus == "nats").map(|i| {
        (
            i.marginal_us_per_event <= 1.0,
            format!(
                "{:.2} µs per event above the background ({:.2} in all)",
                i.marginal_us_per_event, i.us_per_event
            ),
        )
    });
    let hop = hop(spreads);
    let fo = failover.map(|f| {
        let ms = f.resumed_ms.unwrap_or(f64::INFINITY);
        (
            ms <= 2000.0 && f.stale == 0,
            format!("{ms:.0} ms, {} stale", f.stale),
        )
    });
    vec![
        check(
            "pg_per_event",
            "PostgreSQL CPU per event, 8 instances vs 1 (nats)",
            "≤ 1.2×",
            pg,
        ),
        check(
            "idle_instance",
            "CPU of an instance per event it holds no socket for (nats)",
            "≤ 1 µs",
            spare,
        ),
        check(
            "nats_hop",
            "latency the NATS hop adds (1 instance)",
            "≤ 0.5 ms p50, ≤ 1 ms p99",
            hop,
        ),
        check(
            "relay_failover",
            "events flow again after the relay is killed",
            "≤ 2 s, 0 stale",
            fo,
        ),
    ]
}

/// nats minus postgres at p50 and p99, with 1 instance.
fn hop(spreads: &[BusSpread]) -> Option<(bool, String)> {
    let (p, n) = (find(spreads, "postgres", 1)?, find(spreads, "nats", 1)?);
    let d50 = i64::from(n.p50_us?) - i64::from(p.p50_us?);
    let d99 = i64::from(n.p99_us?) - i64::from(p.p99_us?);
    Some((
        d50 <= 500 && d99 <= 1000,
        format!("{d50:+} µs p50, {d99:+} µs p99"),
    ))
}

pub(super) fn render(c: &BusCapacity) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncapacity by bus: {} sockets over {} users at {} events/s",
        c.sockets, c.users, c.rate
    );
    let _ = writeln!(
        s,
        "{:>8} {:>3} {:>6} {:>7} {:>7} {:>8} {:>7} {:>7}  instance µs/ev each",
        "bus", "n", "lost", "p50 µs", "p99 µs", "pg µs/ev", "relay", "nats"
    );
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for sp in &c.spreads {
        let each: Vec<String> = sp
            .instance_us_per_event
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect();
        let _ = writeln!(
            s,
            "{:>8} {:>3} {:>6} {:>7} {:>7} {:>8.1} {:>7} {:>7}  {}",
            sp.bus,
            sp.instances,
            sp.lost,
            sp.p50_us.map_or("-".into(), |v| v.to_string()),
            sp.p99_us.map_or("-".into(), |v| v.to_string()),
            sp.pg_us_per_event,
            opt(sp.relay_us_per_event),
            opt(sp.nats_us_per_event),
            each.join("/")
        );
    }
    for i in &c.idle {
        let _ = writeln!(
            s,
            "{} instance with no sockets: {:.1} ms of CPU over {} events: {:.2} µs per event ({:.2} above its {:.2} ms/s with no events)",
            i.bus, i.cpu_ms, i.events, i.us_per_event, i.marginal_us_per_event, i.quiet_ms_per_s
        );
    }
    let _ = writeln!(
        s,
        "bridge ceiling over NATS (relay + instances): {} events/s",
        c.nats_ceiling
    );
    if let Some(f) = &c.failover {
        let _ = writeln!(
            s,
            "relay failover at {} events/s over {} documents: flowing again {} after the kill; {} stale, {} coalesced into heals",
            f.rate,
            f.documents,
            f.resumed_ms
                .map_or("never".into(), |v| format!("{v:.0} ms")),
            f.stale,
            f.coalesced
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(bus: &'static str, n: usize, pg: f64, p50: u32, p99: u32) -> BusSpread {
        BusSpread {
            bus,
            instances: n,
            events: 10_000,
            lost: 0,
            p50_us: Some(p50),
            p99_us: Some(p99),
            pg_us_per_event: pg,
            instance_us_per_event: vec![],
            relay_us_per_event: None,
            nats_us_per_event: None,
        }
    }

    #[test]
    fn targets_are_judged_on_the_right_rows() {
        let spreads = [
            spread("postgres", 1, 20.0, 400, 900),
            spread("nats", 1, 30.0, 700, 1800),
            spread("nats", 8, 37.0, 900, 2500),
        ];
        let idle = [IdleCost {
            bus: "nats",
            events: 10,
            cpu_ms: 0.0,
            us_per_event: 0.2,
            quiet_ms_per_s: 0.0,
            marginal_us_per_event: 0.2,
        }];
        let fo = Failover {
            rate: 200,
            events: 1,
            documents: 1,
            resumed_ms: Some(900.0),
            stale: 1,
            coalesced: 0,
        };
        let t = targets(&spreads, &idle, Some(&fo));
        let met: Vec<Option<bool>> = t.iter().map(|t| t.met).collect();
        // 37/30 = 1.23 > 1.2; 0.2 µs; +300/+900 µs; 1 stale.
        assert_eq!(met, [Some(false), Some(true), Some(true), Some(false)]);
        assert!(t[2].measured.contains("+300 µs p50"), "{}", t[2].measured);
        let none = targets(&spreads[..1], &[], None);
        assert!(none.iter().all(|t| t.met.is_none()));
    }
}
