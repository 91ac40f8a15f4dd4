//! What the server and the machine say during a phase: the server's
//! `/metrics` (delivery histogram, counters), CPU time from `/proc`, RSS.

use std::time::Instant;

use super::report::{CpuShare, ServerSide};

/// The server's metrics at one moment: its delivery histogram and its
/// `_total` counters.
pub(super) struct Scrape {
    pub(super) buckets: Vec<(f64, u64)>,
    pub(super) counters: Vec<(String, f64)>,
}

/// The bearer token for `/metrics` on the API port: `RAG_METRICS_TOKEN`
/// (the server's own variable, for a server started elsewhere), else one
/// made up for the server the benchmark starts.
pub(super) fn metrics_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        std::env::var("RAG_METRICS_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| crate::harness::random_hex(16))
    })
}

/// `GET /metrics` on the API port, with the token.
pub(super) fn metrics_request(http: &reqwest::Client, api: &str) -> reqwest::RequestBuilder {
    http.get(format!("{api}/metrics"))
        .bearer_auth(metrics_token())
}

pub(super) async fn scrape(http: &reqwest::Client, api: &str) -> Option<Scrape> {
    let text = metrics_request(http, api)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counters = text
        .lines()
        .filter(|l| l.starts_with("ragctl_"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            name.split('{')
                .next()
                .is_some_and(|n| n.ends_with("_total"))
        })
        .filter_map(|(name, v)| Some((name.to_string(), v.parse().ok()?)))
        .collect();
    Some(Scrape {
        buckets: histogram(&text),
        counters,
    })
}

/// An unlabelled metric of the server at `api`.
pub(super) async fn gauge(api: &str, name: &str) -> Option<f64> {
    let http = reqwest::Client::new();
    let page = super::sample::metrics_request(&http, api)
        .send()
        .await
        .ok()?;
    let page = page.text().await.ok()?;
    super::limits::metric_value(&page, name)
}

/// Counters that moved between two scrapes.
pub(super) fn counter_deltas(
    before: &Scrape,
    after: &Scrape,
) -> std::collections::BTreeMap<String, f64> {
    after
        .counters
        .iter()
        .filter_map(|(name, v)| {
            let b = before
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |x| x.1);
            (v - b > 0.0).then(|| (name.clone(), v - b))
        })
        .collect()
}

/// Cumulative `(le seconds, count)` of the server's delivery histogram.
pub(super) fn histogram(text: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ragctl_bridge_delivery_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, rest) = rest.split_once('"')?;
            let count = rest.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

pub(super) fn server_side(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<ServerSide> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0, |x| x.1);
            (le, n.saturating_sub(b))
        })
        .collect();
    let samples = delta.last()?.1;
    if samples == 0 {
        return None;
    }
    let pct = |p: f64| {
        let want = (p * samples as f64).ceil() as u64;
        delta
            .iter()
            .find(|(_, n)| *n >= want)
            .map(|(le, _)| *le * 1000.0)
            .filter(|v| v.is_finite())
    };
    Some(ServerSide {
        samples,
        p50_le_ms: pct(0.50),
        p90_le_ms: pct(0.90),
        p99_le_ms: pct(0.99),
    })
}

pub(super) struct CpuSnap {
    pub(super) at: Instant,
    pub(super) busy: u64,
    pub(super) idle: u64,
    pub(super) irq: u64,
    pub(super) steal: u64,
    pub(super) bench: u64,
    pub(super) server: Option<u64>,
    pub(super) postgres: u64,
}

/// utime + stime of a process, in clock ticks.
pub(super) fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnap {
    pub(super) fn take(servers: &[u32]) -> Option<CpuSnap> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let idle = cpu.get(3)? + cpu.get(4)?;
        let busy = cpu.iter().take(8).sum::<u64>() - idle;
        let irq = cpu.get(5)? + cpu.get(6)?;
        let steal = *cpu.get(7)?;
        let mut postgres = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
            {
                postgres += proc_ticks(pid).unwrap_or(0);
            }
        }
        Some(CpuSnap {
            at: Instant::now(),
            busy,
            idle,
            irq,
            steal,
            bench: proc_ticks("self")?,
            server: (!servers.is_empty())
                .then(|| servers.iter().map(|p| proc_ticks(&p.to_string())).sum())
                .flatten(),
            postgres,
        })
    }

    pub(super) fn share(&self, end: &CpuSnap) -> CpuShare {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let pct = |ticks: u64| (ticks as f64 / hz / secs * 1000.0).round() / 10.0;
        let bench = pct(end.bench.saturating_sub(self.bench));
        let server = end
            .server
            .zip(self.server)
            .map(|(e, b)| pct(e.saturating_sub(b)));
        let postgres = pct(end.postgres.saturating_sub(self.postgres));
        let busy = pct(end.busy.saturating_sub(self.busy));
        let irq = pct(end.irq.saturating_sub(self.irq));
        let steal = pct(end.steal.saturating_sub(self.steal));
        let other = busy - bench - server.unwrap_or(0.0) - postgres - irq - steal;
        let server_ms = end
            .server
            .zip(self.server)
            .map(|(e, b)| e.saturating_sub(b) as f64 / hz * 1000.0);
        CpuShare {
            bench,
            server,
            server_ms,
            postgres,
            irq,
            steal,
            other: (other.max(0.0) * 10.0).round() / 10.0,
            idle: pct(end.idle.saturating_sub(self.idle)),
        }
    }
}

/// CPU time of every thread of a process, ns (`/proc/<pid>/task/*/schedstat`:
/// finer than the 10-ms ticks of `/proc/<pid>/stat`).
pub(super) fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(ns)
}

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub(super) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_histogram_deltas_give_bucket_bounds() {
        let text = |counts: [u64; 4]| {
            format!(
                "# TYPE ragctl_bridge_delivery_seconds histogram\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.001\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.0025\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"0.005\"}} {}\n\
                 ragctl_bridge_delivery_seconds_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        let before = histogram(&text([10, 10, 10, 10]));
        let after = histogram(&text([60, 108, 109, 110]));
        let s = server_side(&before, &after).unwrap();
        assert_eq!(s.samples, 100);
        assert_eq!(
            (s.p50_le_ms, s.p90_le_ms, s.p99_le_ms),
            (Some(1.0), Some(2.5), Some(5.0))
        );
        let worse = histogram(&text([60, 108, 108, 120]));
        assert_eq!(server_side(&before, &worse).unwrap().p99_le_ms, None);
        assert!(server_side(&before, &before).is_none());
    }
}
