//! How much CPU and wall-clock time one parse may take, from the size of
//! the file. A small file gets a small budget, so a 1 KB bomb cannot hold a
//! parse slot for the full ceiling (`--parse-cpu-secs`): the budget starts at
//! a floor (`--parse-cpu-floor-secs`) and grows with the size up to the
//! ceilings.

use std::time::Duration;

/// Bytes of input that earn one more CPU second above the floor. With the
/// default floor (2 s) and ceiling (60 s), a file at the upload cap (25 MiB)
/// gets the full 60 s: 25 MiB / 440 KiB = 58.2. Honest files parse orders of
/// magnitude faster than this (docs/api.md, "Parse limits", has the
/// measurements), so the margin is large.
pub const BYTES_PER_CPU_SEC: u64 = 440 << 10;

/// The wall clock allows this many times the CPU budget. It catches a child
/// that blocks without burning CPU; generous so that a parse starved on a
/// busy machine (a tenth of a core) still ends on its CPU budget, while a
/// small file holds a slot for 20 s at most instead of the 120 s ceiling.
pub const WALL_PER_CPU: u32 = 10;

/// The time limits of one parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `RLIMIT_CPU` of the child, in whole seconds (at least 1).
    pub cpu_secs: u64,
    /// When the child is killed.
    pub wall: Duration,
}

/// The budget for a file of `size` bytes: CPU = floor + size / rate, within
/// [floor, cpu_ceiling]; wall = [`WALL_PER_CPU`] × CPU, at most
/// `wall_ceiling`. A floor above a ceiling is lowered to it.
pub fn for_size(size: u64, floor_secs: u64, cpu_ceiling: u64, wall_ceiling: Duration) -> Budget {
    let ceiling = cpu_ceiling.max(1);
    let floor = floor_secs.clamp(1, ceiling);
    let cpu_secs = floor.saturating_add(size / BYTES_PER_CPU_SEC).min(ceiling);
    let wall = Duration::from_secs(cpu_secs)
        .saturating_mul(WALL_PER_CPU)
        .min(wall_ceiling);
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

    #[test]
    fn a_small_file_gets_the_floor() {
        let b = for_size(1_100, 2, 60, WALL);
        assert_eq!(b.cpu_secs, 2);
        assert_eq!(b.wall, Duration::from_secs(20));
        assert_eq!(for_size(0, 2, 60, WALL).cpu_secs, 2);
    }

    #[test]
    fn the_budget_grows_with_the_size() {
        assert_eq!(for_size(BYTES_PER_CPU_SEC, 2, 60, WALL).cpu_secs, 3);
        let b = for_size(4 * BYTES_PER_CPU_SEC + 1, 2, 60, WALL);
        assert_eq!(b.cpu_secs, 6);
        assert_eq!(b.wall, Duration::from_secs(60));
    }

    #[test]
    fn the_upload_cap_reaches_the_ceilings() {
        let b = for_size(25 << 20, 2, 60, WALL);
        assert_eq!(
            b,
            Budget {
                cpu_secs: 60,
                wall: WALL
            }
        );
        // Beyond it, nothing more.
        assert_eq!(for_size(u64::MAX, 2, 60, WALL).cpu_secs, 60);
    }

    #[test]
    fn the_ceilings_bound_the_floor() {
        // A floor above the CPU ceiling is lowered to it.
        assert_eq!(for_size(1_000, 10, 3, WALL).cpu_secs, 3);
        // A wall ceiling below 10 × CPU wins.
        let b = for_size(1_000, 2, 600, Duration::from_secs(3));
        assert_eq!(
            b,
            Budget {
                cpu_secs: 2,
                wall: Duration::from_secs(3)
            }
        );
        // RLIMIT_CPU 0 would mean "unlimited" to no one: at least 1 s.
        assert_eq!(for_size(0, 0, 0, WALL).cpu_secs, 1);
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
