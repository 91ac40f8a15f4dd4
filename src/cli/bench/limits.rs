//! The system limits that decide how many sockets one run can hold: the
//! open-file limits of the bench and of the server, `fs.nr_open`, and the
//! ephemeral port range (one source address has only that many ports, so
//! the clients are spread over 127.0.0.2, 127.0.0.3, …).

use std::net::Ipv4Addr;

use serde::Serialize;

/// Client sockets bound to one loopback source address: the default range
/// has ~28,000 ephemeral ports, but `bind` without
/// `IP_BIND_ADDRESS_NO_PORT` takes only every other one (the rest are kept
/// for `connect`), and slows down as they run out.
pub(super) const PER_SOURCE: usize = 10_000;

/// Descriptors the bench keeps beyond its mass sockets: stdio, the
/// runtime, the publishers and the raw listener, the sample and fan-out
/// fleets are counted separately.
pub(super) const BENCH_FD_RESERVE: usize = 128;

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// The bench's `RLIMIT_NOFILE` (soft) before and after raising it, and
    /// its hard limit.
    pub bench_nofile_before: Option<u64>,
    pub bench_nofile: Option<u64>,
    pub bench_nofile_hard: Option<u64>,
    /// The server's soft open-file limit, from `/proc/<pid>/limits`.
    pub server_nofile: Option<u64>,
    /// `fs.nr_open`: the most a privileged process may raise its limit to.
    pub nr_open: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u32, u32)>,
    /// WebSockets the server takes at most (`ragctl_ws_connections_limit`,
    /// from its open-file limit and --ws-max-connections).
    pub server_ws_cap: Option<u64>,
}

impl Limits {
    /// Raises the bench's own limit as far as allowed and reads the rest.
    pub(super) fn take(server_pid: Option<u32>) -> Limits {
        let raised = crate::cli::serve::raise_nofile_limit().ok();
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Limits {
            bench_nofile_before: raised.map(|r| r.0),
            bench_nofile: raised.map(|r| r.1),
            bench_nofile_hard: read("/proc/self/limits").and_then(|t| open_files(&t, true)),
            server_nofile: server_pid
                .and_then(|pid| read(&format!("/proc/{pid}/limits")))
                .and_then(|t| open_files(&t, false)),
            nr_open: read("/proc/sys/fs/nr_open").and_then(|t| t.trim().parse().ok()),
            port_range: read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|t| port_range(&t)),
            server_ws_cap: None,
        }
    }

    /// Sockets the bench can open itself beside `fleets` other sockets.
    pub(super) fn bench_room(&self, fleets: usize) -> usize {
        self.bench_nofile.map_or(usize::MAX, |n| {
            (n as usize).saturating_sub(BENCH_FD_RESERVE + fleets)
        })
    }

    /// Mass sockets the server can take beside `fleets` other sockets.
    pub(super) fn server_room(&self, fleets: usize) -> usize {
        self.server_ws_cap
            .map_or(usize::MAX, |n| (n as usize).saturating_sub(fleets))
    }

    /// One line for the progress log and the report.
    pub(super) fn describe(&self) -> String {
        let k = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "open files: bench {} (was {}, hard {}), server {} (WebSockets at most {}); fs.nr_open {}; ephemeral ports {}",
            k(self.bench_nofile),
            k(self.bench_nofile_before),
            k(self.bench_nofile_hard),
            k(self.server_nofile),
            k(self.server_ws_cap),
            k(self.nr_open),
            self.port_range.map_or("?".to_string(), |(a, b)| format!(
                "{a}–{b} ({} per source address)",
                b - a + 1
            )),
        )
    }
}

/// The value of an unlabelled metric in a Prometheus text page.
pub(super) fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// "Max open files" from a `/proc/<pid>/limits` text: the soft or hard one.
pub(super) fn open_files(limits: &str, hard: bool) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let soft = nums.next()?;
    let value = if hard { nums.next()? } else { soft };
    value.parse().ok()
}

/// `ip_local_port_range`: two numbers.
pub(super) fn port_range(text: &str) -> Option<(u32, u32)> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u32>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Some((a, b)),
        _ => None,
    }
}

/// The loopback source address of mass socket `i`: 127.0.0.2 for the
/// first `PER_SOURCE`, then 127.0.0.3, and so on (127.0.0.1 is left to
/// the sample fleets and the publishers).
pub(super) fn source_addr(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    Ipv4Addr::from(base + (i / PER_SOURCE) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_spread_over_source_addresses_by_blocks() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(PER_SOURCE - 1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(PER_SOURCE), Ipv4Addr::new(127, 0, 0, 3));
        // 100,000 sockets take ten addresses; past .255 it carries on.
        assert_eq!(source_addr(99_999), Ipv4Addr::new(127, 0, 0, 11));
        assert_eq!(source_addr(254 * PER_SOURCE), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn proc_limits_and_port_ranges_parse() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95000                95000                processes \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(open_files(text, false), Some(1024));
        assert_eq!(open_files(text, true), Some(20000));
        assert_eq!(open_files("nothing", true), None);
        let page = "# TYPE ragctl_ws_connections_limit gauge\nragctl_ws_connections_limit 17913\nragctl_ws_connections_limit_x 1\n";
        assert_eq!(
            metric_value(page, "ragctl_ws_connections_limit"),
            Some(17913.0)
        );
        assert_eq!(metric_value(page, "ragctl_ws_sockets"), None);
        assert_eq!(port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(port_range("60999 32768"), None);
        assert_eq!(port_range(""), None);
    }

    #[test]
    fn the_bench_keeps_its_reserve_and_the_fleets_out_of_its_room() {
        let l = Limits {
            bench_nofile_before: Some(1024),
            bench_nofile: Some(20_000),
            bench_nofile_hard: Some(20_000),
            server_nofile: Some(20_000),
            nr_open: Some(1 << 20),
            port_range: Some((32768, 60999)),
            server_ws_cap: Some(17_913),
        };
        assert_eq!(l.bench_room(2_000), 20_000 - BENCH_FD_RESERVE - 2_000);
        assert_eq!(l.server_room(2_000), 15_913);
        assert!(l.describe().contains("28232 per source address"));
    }
}
