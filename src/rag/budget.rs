//! How much CPU and wall-clock time one parse may take, from the size of
//! the file. A small file gets a small budget, so a 1 KB bomb cannot hold a
//! parse slot for the full ceiling (`--parse-cpu-secs`): the budget starts at
//! a floor (`--parse-cpu-floor-secs`) and grows with the size
//! (`--parse-cpu-kib-per-sec`) up to the ceilings.

use std::time::Duration;

/// Default CPU seconds of a parse of the smallest files. One second is over
/// 500 times what a legitimate small file takes (below), and it bounds how
/// long a tiny bomb holds a slot that cannot be preempted (a user's only
/// running job): with one slot, the honest p99 of the queue benchmark fell
/// from 2.02 s at a 2 s floor to 1.02 s at 1 s (docs/benchmarks.md).
pub const DEFAULT_CPU_FLOOR_SECS: u64 = 1;

/// Default KiB of input that earn one more CPU second above the floor.
/// Measured (release build): a 1.5 MB Flate-compressed text PDF (3.7 MB of
/// text) parses in 0.8 s CPU, a 5 MB uncompressed one in 0.7 s, an 18 MB
/// HTML file in 0.8 s: 1.9 MB/s or more. 128 KiB/s leaves those a margin of
/// 15 or more (a 1 KB file gets the 1 s floor, 1 MiB gets 9 s, 7.4 MiB and
/// above the 60 s ceiling). Images cost bytes but little parsing, so real
/// PDFs have a larger margin still.
pub const KIB_PER_CPU_SEC: u64 = 128;

/// The wall clock allows this many times the CPU budget. It catches a child
/// that blocks without burning CPU; generous so that a parse starved on a
/// busy machine (a tenth of a core) still ends on its CPU budget, while a
/// small file holds a slot for 10 s at most instead of the 120 s ceiling.
pub const WALL_PER_CPU: u32 = 10;

/// The time limits of one parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `RLIMIT_CPU` of the child, in whole seconds (at least 1).
    pub cpu_secs: u64,
    /// When the child is killed.
    pub wall: Duration,
}

/// The budget for a file of `size` bytes: CPU = floor + size / rate (KiB
/// per second), within [floor, ceiling.cpu_secs]; wall = [`WALL_PER_CPU`] ×
/// CPU, at most `ceiling.wall`. A floor above the ceiling is lowered to it.
pub fn for_size(size: u64, floor_secs: u64, kib_per_sec: u64, ceiling: Budget) -> Budget {
    let max_cpu = ceiling.cpu_secs.max(1);
    let floor = floor_secs.clamp(1, max_cpu);
    let grown = size / kib_per_sec.max(1).saturating_mul(1024);
    let cpu_secs = floor.saturating_add(grown).min(max_cpu);
    let wall = Duration::from_secs(cpu_secs)
        .saturating_mul(WALL_PER_CPU)
        .min(ceiling.wall);
    Budget { cpu_secs, wall }
}

/// A size as people read it: "512 bytes", "1.1 KB", "24.3 MB" (powers of
/// 1000, one decimal).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KB", "MB", "GB"];
    if bytes < 1000 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What is being parsed, for messages: "2.4 KB PDF", "12.1 KB HTML file".
pub fn describe(size: u64, mime: &str) -> String {
    let kind = match mime.split(';').next().unwrap_or_default().trim() {
        "application/pdf" => "PDF",
        "text/html" | "application/xhtml+xml" => "HTML file",
        "text/markdown" | "text/x-markdown" => "Markdown file",
        "text/plain" => "text file",
        _ => "file",
    };
    format!("{} {kind}", human_size(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: Duration = Duration::from_secs(120);
    const RATE: u64 = KIB_PER_CPU_SEC << 10;

    /// A floor of 2 s, the ceilings of 60 s CPU and 120 s wall.
    fn budget(size: u64) -> Budget {
        let ceiling = Budget {
            cpu_secs: 60,
            wall: WALL,
        };
        for_size(size, 2, KIB_PER_CPU_SEC, ceiling)
    }

    fn with(floor: u64, cpu: u64, wall: u64) -> Budget {
        let ceiling = Budget {
            cpu_secs: cpu,
            wall: Duration::from_secs(wall),
        };
        for_size(1_000, floor, KIB_PER_CPU_SEC, ceiling)
    }

    #[test]
    fn a_small_file_gets_the_floor() {
        let b = budget(1_100);
        assert_eq!(
            b,
            Budget {
                cpu_secs: 2,
                wall: Duration::from_secs(20)
            }
        );
        assert_eq!(budget(0).cpu_secs, 2);
    }

    #[test]
    fn the_budget_grows_with_the_size() {
        assert_eq!(budget(RATE - 1).cpu_secs, 2);
        assert_eq!(budget(RATE).cpu_secs, 3);
        let b = budget(1 << 20);
        assert_eq!(
            b,
            Budget {
                cpu_secs: 10,
                wall: Duration::from_secs(100)
            }
        );
        // A faster rate grows more slowly.
        let ceiling = Budget {
            cpu_secs: 60,
            wall: WALL,
        };
        assert_eq!(for_size(1 << 20, 2, 1024, ceiling).cpu_secs, 3);
    }

    #[test]
    fn large_files_reach_the_ceilings() {
        let full = Budget {
            cpu_secs: 60,
            wall: WALL,
        };
        assert_eq!(budget(58 * RATE), full);
        assert_eq!(budget(25 << 20), full);
        assert_eq!(budget(u64::MAX), full);
    }

    #[test]
    fn the_ceilings_bound_the_floor() {
        // A floor above the CPU ceiling is lowered to it.
        assert_eq!(with(10, 3, 120).cpu_secs, 3);
        // A wall ceiling below 10 × CPU wins.
        assert_eq!(
            with(2, 600, 3),
            Budget {
                cpu_secs: 2,
                wall: Duration::from_secs(3)
            }
        );
        // RLIMIT_CPU 0 would be no limit at all: at least 1 s.
        assert_eq!(with(0, 0, 120).cpu_secs, 1);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(999), "999 bytes");
        assert_eq!(human_size(1_100), "1.1 KB");
        assert_eq!(human_size(2_434), "2.4 KB");
        assert_eq!(human_size(999_999), "1.0 MB");
        assert_eq!(human_size(25 << 20), "26.2 MB");
        assert_eq!(human_size(u64::MAX), "18446744073.7 GB");
        assert_eq!(describe(1_100, "application/pdf"), "1.1 KB PDF");
        assert_eq!(describe(12_058, "text/html"), "12.1 KB HTML file");
        assert_eq!(
            describe(20, "text/plain; charset=utf-8"),
            "20 bytes text file"
        );
    }
}
