//! The human form of a queue snapshot: a summary row per kind, then each
//! kind's workers and top users. Pure: ages are measured from the `now`
//! passed in, so the same snapshot always renders the same text.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::queue::{KindQueue, Snapshot};

/// The whole table, ending with a newline.
pub fn render(snap: &Snapshot, now: DateTime<Utc>) -> String {
    let mut out = format!("queue at {}\n\n", now.format("%Y-%m-%d %H:%M:%S UTC"));
    let rows = snap
        .kinds
        .iter()
        .map(|k| summary_row(k, snap.scan_limit, now));
    out += &grid(
        "",
        &[
            "KIND",
            "QUEUED",
            "DUE",
            "RUNNING",
            "LEASE EXPIRED",
            "OLDEST WAITING",
        ],
        rows.collect(),
    );
    for k in &snap.kinds {
        out.push('\n');
        out += &workers(k);
        out.push('\n');
        out += &users(k);
    }
    if snap.kinds.iter().any(|k| k.capped) {
        let _ = writeln!(
            out,
            "\n+ a scan stopped at {} rows (--scan-limit): counts are lower bounds, lists cover the rows read",
            snap.scan_limit
        );
    }
    out
}

fn summary_row(k: &KindQueue, limit: i64, now: DateTime<Utc>) -> Vec<String> {
    let n = |v: i64| count(v, limit);
    vec![
        k.kind.to_string(),
        n(k.queued),
        n(k.due),
        n(k.running),
        n(k.lease_expired),
        k.oldest_due_age(now).map_or("-".into(), age),
    ]
}

fn workers(k: &KindQueue) -> String {
    if k.workers.is_empty() {
        return format!("{}: no running jobs\n", k.kind);
    }
    let rows = k
        .workers
        .iter()
        .map(|w| vec![w.worker.clone(), w.slots.to_string()])
        .collect();
    format!(
        "{}: slots in use per worker{}\n{}",
        k.kind,
        shown(k.workers.len(), k.workers_total),
        grid("  ", &["WORKER", "SLOTS"], rows)
    )
}

fn users(k: &KindQueue) -> String {
    if k.users_total == 0 {
        return format!("{}: no running or queued jobs\n", k.kind);
    }
    if k.top_users.is_empty() {
        return format!("{}: {} users with jobs (--top 0)\n", k.kind, k.users_total);
    }
    let rows = k
        .top_users
        .iter()
        .map(|u| {
            let (running, queued) = (u.running.to_string(), u.queued.to_string());
            vec![u.user_id.to_string(), running, queued]
        })
        .collect();
    format!(
        "{}: top users by running + queued{}\n{}",
        k.kind,
        shown(k.top_users.len(), k.users_total),
        grid("  ", &["USER", "RUNNING", "QUEUED"], rows)
    )
}

/// " (5 of 12)" when a list was cut, else nothing.
fn shown(listed: usize, total: i64) -> String {
    if (listed as i64) < total {
        format!(" ({listed} of {total})")
    } else {
        String::new()
    }
}

/// A count that reached the scan limit is a lower bound: `100000+`.
fn count(v: i64, limit: i64) -> String {
    if v >= limit {
        format!("{v}+")
    } else {
        v.to_string()
    }
}

/// A wait as a person reads it: `0.4s`, `42s`, `5m07s`, `3h05m`, `2d04h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 => format!("{:.1}s", d.as_secs_f64()),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Columns padded to their widest cell; the first is left-aligned, the
/// others (numbers) right-aligned.
fn grid(indent: &str, headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = indent.to_string();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            match i {
                0 => line += &format!("{cell:<w$}"),
                _ => line += &format!("  {cell:>w$}"),
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        let cases = [
            (0.42, "0.4s"),
            (9.96, "10.0s"),
            (42.9, "42s"),
            (307.0, "5m07s"),
            (3600.0 * 3.0 + 300.0, "3h05m"),
            (86400.0 * 2.0 + 3600.0 * 4.0 + 59.0, "2d04h"),
        ];
        for (secs, want) in cases {
            assert_eq!(age(Duration::from_secs_f64(secs)), want, "{secs}");
        }
    }

    #[test]
    fn capped_counts_are_lower_bounds() {
        assert_eq!(count(99, 100), "99");
        assert_eq!(count(100, 100), "100+");
    }

    #[test]
    fn grid_aligns_numbers_right() {
        let rows = vec![
            vec!["a-long-name".into(), "1".into()],
            vec!["b".into(), "120".into()],
        ];
        let text = grid("  ", &["NAME", "N"], rows);
        assert_eq!(
            text,
            "  NAME           N\n  a-long-name    1\n  b            120\n"
        );
    }

    #[test]
    fn cut_lists_say_so() {
        assert_eq!(shown(5, 12), " (5 of 12)");
        assert_eq!(shown(3, 3), "");
    }
}
