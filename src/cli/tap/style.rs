//! How values look, for the table and the detail pane alike.

use ratatui::style::Style;

use super::app::App;

/// Style, or nothing under NO_COLOR.
pub fn st(app: &App, style: Style) -> Style {
    if app.color { style } else { Style::default() }
}

/// A delivery delay, in the unit that keeps it short.
pub fn format_delay(ms: i64) -> String {
    if ms.abs() < 100_000 {
        format!("{ms}ms")
    } else if ms.abs() < 100_000_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}
