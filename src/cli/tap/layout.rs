//! The screen's geometry, which both the state (paging) and the view
//! (drawing) need: how tall the stats are, whether the warning banner
//! shows, and how many rows the table holds.

use super::source::SourceStatus;

/// Height of the stats pane (sparkline and counts by type).
pub const STATS_HEIGHT: u16 = 4;

/// The warning line shown above the status bar, if any.
pub fn banner(status_seen: bool, s: &SourceStatus) -> Option<String> {
    if !status_seen {
        return None;
    }
    if !s.connected {
        let why = s.last_error.as_deref().unwrap_or("connection lost");
        return Some(format!(
            "▲ not listening: {why} — reconnecting (reconnects so far: {})",
            s.reconnects
        ));
    }
    if s.listeners == Some(0) {
        return Some("▲ no API instance listening — events go nowhere".to_string());
    }
    None
}

/// Height of the table area: the main area less the detail pane.
pub fn table_height(detail: bool, main: u16) -> u16 {
    if detail {
        (main / 2).max(5).min(main)
    } else {
        main
    }
}

/// How many rows the table shows on a terminal `height` rows tall.
pub fn table_rows(height: u16, detail: bool, banner: bool) -> usize {
    let main = height.saturating_sub(STATS_HEIGHT + u16::from(banner) + 2);
    table_height(detail, main).saturating_sub(3) as usize
}
