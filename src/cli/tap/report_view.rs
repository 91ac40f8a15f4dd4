//! How ops reports look: a heal run's table row, its detail pane, and the
//! heal counts of the status bar. Pure, like the rest of the view.

use chrono::{DateTime, Utc};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::Cell;

use super::app::App;
use super::detail::{Labels, millis};
use super::report::{OpsReport, ReportKind, UNKNOWN_LABEL, format_duration, outcome_tone};
use super::style::st;
use crate::cli::term_style::Tone;
use crate::events::ops::{HealOutcome, HealReport, OPS_VERSION};

/// Heal rows are cyan, so that they stand apart from events at a glance
/// (under NO_COLOR, their `heal` type does).
pub fn report_style(app: &App) -> Style {
    st(app, Style::default().fg(Color::Cyan))
}

/// An outcome's colour: good green, bad red, muted grey.
pub fn outcome_style(app: &App, outcome: HealOutcome) -> Style {
    let color = match outcome_tone(outcome) {
        Some(Tone::Good) => Color::Green,
        Some(Tone::Bad) => Color::Red,
        Some(Tone::Busy) => Color::Yellow,
        Some(Tone::Other) | None => Color::DarkGray,
    };
    st(app, Style::default().fg(color))
}

fn hms(t: &DateTime<Utc>) -> String {
    t.format("%H:%M:%S").to_string()
}

/// `from→to` in seconds (the detail pane has the milliseconds).
fn window(r: &HealReport) -> String {
    let to = r.to.as_ref().map_or("?".into(), hms);
    format!("{}→{to}", hms(&r.from))
}

/// The table cells after the selection mark: time, type (with the
/// window), user (how many), ids (rows, frames, sockets: short enough for
/// the column at 120 columns), outcome, bytes, duration (in the delay
/// column), frag.
pub fn report_cells<'a>(app: &App, r: &'a OpsReport) -> Vec<Cell<'a>> {
    let time = Cell::from(r.received_at.format("%H:%M:%S%.3f").to_string());
    let bytes = Cell::from(Line::from(r.raw.len().to_string()).right_aligned());
    let heal = match &r.kind {
        ReportKind::Heal(heal) => heal,
        ReportKind::Unknown { op, v } => {
            let what = format!("{} v{}", op.as_deref().unwrap_or("?"), opt(*v));
            return vec![
                time,
                Cell::from(r.kind_label()),
                Cell::from(""),
                Cell::from(what),
                Cell::from("? unknown report"),
                bytes,
                Cell::from(""),
                Cell::from(""),
            ];
        }
    };
    let users = match format!("{} users", heal.users) {
        s if s.len() <= 8 => s,
        _ => format!("{}u", heal.users),
    };
    vec![
        time,
        Cell::from(format!("{} {}", r.kind_label(), window(heal))),
        Cell::from(users),
        Cell::from(format!(
            "{} rows {} frames {} sock",
            heal.rows, heal.frames, heal.sockets
        )),
        Cell::from(Span::styled(
            heal.outcome.as_str(),
            outcome_style(app, heal.outcome),
        )),
        bytes,
        Cell::from(Line::from(format_duration(heal.duration_ms)).right_aligned()),
        Cell::from(""),
    ]
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// The detail pane: what the run did, in words, then the report as
/// pretty JSON.
pub fn report_detail<'a>(app: &App, r: &'a OpsReport) -> Text<'a> {
    let l = Labels::new(app);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = Vec::new();
    match &r.kind {
        ReportKind::Heal(heal) => heal_head(app, l, heal, &mut lines),
        ReportKind::Unknown { op, v } => lines.push(Line::from(vec![
            Span::styled("UNKNOWN REPORT ", st(app, bold.fg(Color::Yellow))),
            Span::raw(format!(
                "op {} v{} — this build reads bridge.heal v{OPS_VERSION}",
                op.as_deref().unwrap_or("?"),
                opt(*v)
            )),
        ])),
    }
    let mut wire = l.kv("received", millis(&r.received_at));
    wire.push(l.sep());
    wire.extend(l.kv("channel", r.channel.clone()));
    wire.push(l.sep());
    wire.push(Span::raw(format!("{} bytes", r.raw.len())));
    lines.push(Line::from(wire));
    lines.push(Line::from(Span::styled("report", l.dim)));
    let pretty = serde_json::from_str::<serde_json::Value>(&r.raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    match pretty {
        Some(p) => lines.extend(p.lines().map(|l| Line::raw(l.to_string()))),
        None => lines.extend(r.raw.lines().map(Line::raw)),
    }
    Text::from(lines)
}

/// What an outcome means, in words.
pub fn explain(outcome: HealOutcome) -> &'static str {
    match outcome {
        HealOutcome::Healed => "every row changed in the window went to its user's sockets",
        HealOutcome::NoSockets => "no socket was connected: nothing to heal",
        HealOutcome::Overflow => {
            "more rows than --max-heal: what fitted went out, then realtime.resync"
        }
        HealOutcome::Failed => "the query failed: realtime.resync went out instead",
        HealOutcome::Disabled => "healing is off (--max-heal 0): realtime.resync went out",
    }
}

/// Outcome in words; instance and reason; the window; the counts; the
/// error.
fn heal_head(app: &App, l: Labels, heal: &HealReport, lines: &mut Vec<Line<'_>>) {
    let outcome = outcome_style(app, heal.outcome)
        .patch(st(app, Style::default().add_modifier(Modifier::BOLD)));
    lines.push(Line::from(vec![
        Span::styled(format!("HEAL {}", heal.outcome.as_str()), outcome),
        Span::raw(format!(" — {}", explain(heal.outcome))),
    ]));
    let mut origin = l.kv("instance", heal.instance.clone());
    origin.push(l.sep());
    origin.extend(l.kv("reason", heal.reason.clone()));
    lines.push(Line::from(origin));
    let mut win = l.kv("window", millis(&heal.from));
    win.push(Span::raw(" → "));
    win.push(Span::raw(heal.to.as_ref().map_or("?".into(), millis)));
    if let Some(to) = heal.to {
        let secs = (to - heal.from).num_milliseconds() as f64 / 1000.0;
        win.push(Span::raw(format!(" ({secs:.3}s)")));
    }
    lines.push(Line::from(win));
    let mut counts = l.kv("users", heal.users.to_string());
    for (k, n) in [
        ("sockets", heal.sockets),
        ("rows", heal.rows),
        ("frames", heal.frames),
    ] {
        counts.push(l.sep());
        counts.extend(l.kv(k, n.to_string()));
    }
    counts.push(l.sep());
    counts.extend(l.kv("duration", format_duration(heal.duration_ms)));
    counts.push(l.sep());
    counts.extend(l.kv("ended", millis(&heal.at)));
    lines.push(Line::from(counts));
    if let Some(e) = &heal.error {
        lines.push(Line::from(Span::styled(
            format!("error: {e}"),
            st(app, Style::default().fg(Color::Red)),
        )));
    }
}

/// The summary of heal runs (under the counts by type): runs, how many
/// resynced, the last run's duration and outcome; unknown reports (`ops?`)
/// when there were any. Empty until a report arrives.
pub fn heal_summary(app: &App) -> Vec<Span<'static>> {
    let runs = app.heal_runs();
    let mut spans = Vec::new();
    if let Some((ms, outcome)) = app.last_heal {
        spans.push(Span::raw(format!(" heals {runs}")));
        let resyncs = app.heal_resyncs();
        if resyncs > 0 {
            spans.push(Span::styled(
                format!(" ({resyncs} resync)"),
                st(app, Style::default().fg(Color::Red)),
            ));
        }
        spans.push(Span::raw(format!(" · last {} ", format_duration(ms))));
        spans.push(Span::styled(outcome.as_str(), outcome_style(app, outcome)));
    }
    if app.unknown_reports > 0 {
        let sep = if spans.is_empty() { " " } else { " · " };
        spans.push(Span::raw(format!(
            "{sep}{UNKNOWN_LABEL} {}",
            app.unknown_reports
        )));
    }
    if !spans.is_empty() {
        spans.push(Span::raw(" "));
    }
    spans
}
