//! Draws a frame from the state. Pure: reads [`App`], changes nothing.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};

use super::app::{App, Entry, SPARK_SECS};
use super::decode::Event;
use super::detail::detail_text;
use super::filter::FilterField;
use super::layout::{STATS_HEIGHT, banner, table_height};
use super::report_view::{heal_summary, report_cells, report_detail, report_style};
use super::style::{format_delay, st};
use crate::cli::term_style::{Tone, status_tone};
use crate::cli::text::short_id;
use crate::events::EventType;

const COLUMNS: [(&str, Constraint); 9] = [
    ("", Constraint::Length(1)),
    ("time (UTC)", Constraint::Length(12)),
    ("type", Constraint::Length(23)),
    ("user", Constraint::Length(8)),
    ("ids", Constraint::Fill(1)),
    ("status", Constraint::Length(18)),
    ("bytes", Constraint::Length(7)),
    ("delay", Constraint::Length(8)),
    ("frag", Constraint::Length(4)),
];

fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub fn view(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let banner_text = banner(app.status_seen, &app.status);
    let [main, stats, banner_area, status, keys] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(STATS_HEIGHT),
        Constraint::Length(u16::from(banner_text.is_some())),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let [table_area, detail_area] = Layout::vertical([
        Constraint::Length(table_height(app.detail, main.height)),
        Constraint::Min(0),
    ])
    .areas(main);
    render_table(app, frame, table_area);
    if app.detail {
        render_detail(app, frame, detail_area);
    }
    render_stats(app, frame, stats);
    if let Some(text) = banner_text {
        let style = st(
            app,
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        );
        frame.render_widget(Paragraph::new(text).style(style), banner_area);
    }
    render_status(app, frame, status);
    render_keys(app, frame, keys);
    if let Some(toast) = &app.toast {
        render_toast(app, frame, main, &toast.text, toast.error);
    }
    if app.help {
        render_help(app, frame, area);
    }
}

fn filter_hint(app: &App) -> Option<String> {
    if !app.filters.is_active() {
        return None;
    }
    let f = &app.filters;
    let mut parts = Vec::new();
    if !f.user.is_empty() {
        parts.push(format!("user={}", short_id(&f.user)));
    }
    if !f.kind.is_empty() {
        parts.push(format!("type~{}", f.kind));
    }
    if !f.text.is_empty() {
        parts.push(format!("text~{:?}", f.text));
    }
    Some(format!(" filter: {} ", parts.join(" ")))
}

fn render_table(app: &App, frame: &mut Frame, area: Rect) {
    let height = area.height.saturating_sub(3) as usize;
    let header = Row::new(COLUMNS.iter().map(|(name, _)| Cell::from(*name))).style(st(
        app,
        Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
    ));
    let table = Table::new(table_rows(app, height), COLUMNS.iter().map(|(_, c)| *c))
        .header(header)
        .column_spacing(1)
        .block(table_block(app));
    frame.render_widget(table, area);
    if app.matches.is_empty() && area.height > 4 {
        render_empty(app, frame, area);
    }
}

/// The border, with the row count and filters on the left and the
/// follow/pause badge on the right.
fn table_block(app: &App) -> Block<'static> {
    let (shown, total) = (app.matches.len(), app.rows.len());
    let count = if app.filters.is_active() {
        format!(" ragctl tap · {shown} of {total} rows ")
    } else {
        format!(" ragctl tap · {total} rows ")
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut left = vec![Span::styled(count, st(app, bold))];
    if let Some(hint) = filter_hint(app) {
        left.push(Span::styled(
            hint,
            st(app, Style::default().fg(Color::Black).bg(Color::Yellow)),
        ));
    }
    let badge = if app.follow {
        Span::styled(" ● FOLLOW ", st(app, bold.fg(Color::Green)))
    } else {
        Span::styled(
            format!(" ❚❚ PAUSED · {} new ", app.new_count),
            st(app, bold.fg(Color::Black).bg(Color::Yellow)),
        )
    };
    Block::bordered()
        .title_top(Line::from(left))
        .title_top(Line::from(badge).right_aligned())
}

/// The matching rows in the window, the selected one marked.
fn table_rows(app: &App, height: usize) -> Vec<Row<'_>> {
    let start = app.window_start(height);
    let end = (start + height).min(app.matches.len());
    let sel = app.selected_pos();
    let highlight = !app.follow || app.detail;
    app.matches
        .range(start..end)
        .enumerate()
        .filter_map(|(i, seq)| {
            let row = app.row(*seq)?;
            let selected = highlight && sel == Some(start + i);
            let mut cells = vec![Cell::from(if selected { "▶" } else { " " })];
            cells.extend(match &row.entry {
                Entry::Event(ev) => event_cells(app, ev),
                Entry::Report(r) => report_cells(app, r),
                Entry::Marker(at) => marker_cells(at),
            });
            let mut style = row_style(app, &row.entry);
            if selected {
                style = style.patch(selected_style());
            }
            Some(Row::new(cells).style(style))
        })
        .collect()
}

/// Why the table is empty, centred in it.
fn render_empty(app: &App, frame: &mut Frame, area: Rect) {
    let msg = if !app.rows.is_empty() {
        "no rows match the filters (Esc clears them)"
    } else if app.status_seen && !app.status.connected {
        "not connected: nothing to show yet"
    } else {
        "waiting for notifications…"
    };
    let inner = Rect {
        y: area.y + 1 + (area.height - 2) / 2,
        height: 1,
        ..area
    };
    frame.render_widget(
        Paragraph::new(msg)
            .alignment(Alignment::Center)
            .style(st(app, Style::default().fg(Color::DarkGray))),
        inner,
    );
}

fn event_style(app: &App, ev: &Event) -> Style {
    if ev.is_valid() {
        Style::default()
    } else {
        st(app, Style::default().fg(Color::Red))
    }
}

fn marker_style(app: &App) -> Style {
    st(app, Style::default().fg(Color::Yellow))
}

fn row_style(app: &App, entry: &Entry) -> Style {
    match entry {
        Entry::Event(ev) => event_style(app, ev),
        Entry::Report(_) => report_style(app),
        Entry::Marker(_) => marker_style(app),
    }
}

fn status_style(app: &App, status: &str) -> Style {
    let color = match status_tone(status) {
        Tone::Bad => Color::Red,
        Tone::Good => Color::Green,
        Tone::Busy => Color::Yellow,
        Tone::Other => return Style::default(),
    };
    st(app, Style::default().fg(color))
}

fn event_cells<'a>(app: &App, ev: &'a Event) -> Vec<Cell<'a>> {
    let ids = ev
        .key_ids()
        .into_iter()
        .map(|(label, id)| format!("{label}:{}", short_id(id)))
        .collect::<Vec<_>>()
        .join(" ");
    let status = match ev.reason() {
        Some(reason) => Cell::from(format!("✗ {}", reason.as_str())),
        None => {
            let s = ev.status().unwrap_or("");
            Cell::from(Span::styled(s.to_string(), status_style(app, s)))
        }
    };
    let user = ev
        .user_label()
        .map(|u| short_id(&u).to_string())
        .unwrap_or_default();
    let delay = ev
        .delay_ms()
        .map(format_delay)
        .unwrap_or_else(|| "—".into());
    let frag = if ev.fragments > 1 {
        format!("×{}", ev.fragments)
    } else {
        String::new()
    };
    vec![
        Cell::from(ev.received_at.format("%H:%M:%S%.3f").to_string()),
        Cell::from(ev.kind_label().to_string()),
        Cell::from(user),
        Cell::from(ids),
        status,
        Cell::from(Line::from(ev.size.to_string()).right_aligned()),
        Cell::from(Line::from(delay).right_aligned()),
        Cell::from(Line::from(frag).right_aligned()),
    ]
}

fn marker_cells<'a>(at: &chrono::DateTime<chrono::Utc>) -> Vec<Cell<'a>> {
    let rule = "─".repeat(40);
    vec![
        Cell::from(at.format("%H:%M:%S%.3f").to_string()),
        Cell::from(format!("── marker {} {}", at.format("%H:%M:%S"), rule)),
        Cell::from(rule.clone()),
        Cell::from(rule.clone()),
        Cell::from(rule.clone()),
        Cell::from(rule.clone()),
        Cell::from(rule.clone()),
        Cell::from(rule),
    ]
}

/// The raw payload cut into lines of `width` characters (not at words: the
/// view shows the payload exactly), lines `skip..skip + take` only.
pub fn raw_lines(raw: &str, width: usize, skip: usize, take: usize) -> Vec<Line<'_>> {
    let width = width.max(1);
    let mut out = Vec::with_capacity(take);
    let mut index = 0;
    for line in raw.split('\n') {
        let mut rest = line;
        loop {
            let cut = rest
                .char_indices()
                .nth(width)
                .map_or(rest.len(), |(i, _)| i);
            if index >= skip {
                out.push(Line::raw(&rest[..cut]));
                if out.len() >= take {
                    return out;
                }
            }
            index += 1;
            rest = &rest[cut..];
            if rest.is_empty() {
                break;
            }
        }
    }
    out
}

fn render_detail(app: &App, frame: &mut Frame, area: Rect) {
    let row = app.selected_row();
    let title = match (row.map(|r| &r.entry), app.raw) {
        (Some(Entry::Event(ev)), true) if ev.fragments > 1 => format!(
            " raw · envelope reassembled from {} fragments · {} bytes ",
            ev.fragments,
            ev.raw.len()
        ),
        (Some(Entry::Event(ev)), true) => {
            format!(" raw NOTIFY payload · {} bytes ", ev.raw.len())
        }
        (Some(Entry::Report(r)), true) => {
            format!(" raw NOTIFY payload · {} bytes ", r.raw.len())
        }
        _ => " detail ".to_string(),
    };
    let block = Block::bordered()
        .title_top(Line::from(Span::styled(
            title,
            st(app, Style::default().add_modifier(Modifier::BOLD)),
        )))
        .title_top(
            Line::from(if app.raw {
                " r pretty · J/K scroll · Enter close "
            } else {
                " r raw · J/K scroll · Enter close "
            })
            .right_aligned(),
        );
    let inner = block.inner(area);
    let raw = match row.map(|r| &r.entry) {
        Some(Entry::Event(ev)) => Some(ev.raw.as_str()),
        Some(Entry::Report(r)) => Some(r.raw.as_str()),
        _ => None,
    };
    if let (Some(raw), true) = (raw, app.raw) {
        let lines = raw_lines(
            raw,
            inner.width as usize,
            app.detail_scroll as usize,
            inner.height as usize,
        );
        frame.render_widget(Paragraph::new(lines).block(block), area);
        return;
    }
    let text = match row.map(|r| &r.entry) {
        None => Text::raw("no row selected"),
        Some(Entry::Marker(at)) => Text::raw(format!(
            "marker set at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )),
        Some(Entry::Event(ev)) => detail_text(app, ev),
        Some(Entry::Report(r)) => report_detail(app, r),
    };
    let para = Paragraph::new(text)
        .block(block)
        .wrap(Wrap { trim: false })
        .scroll((app.detail_scroll, 0));
    frame.render_widget(para, area);
}

fn render_stats(app: &App, frame: &mut Frame, area: Rect) {
    let [spark_area, counts_area] = Layout::horizontal([
        Constraint::Length(SPARK_SECS as u16 + 2),
        Constraint::Min(0),
    ])
    .areas(area);
    let block = Block::bordered().title_top(format!(
        " events/s · last {SPARK_SECS}s · {}/s ",
        app.rate()
    ));
    let width = block.inner(spark_area).width as usize;
    let data: Vec<u64> = app
        .spark
        .iter()
        .skip(SPARK_SECS.saturating_sub(width))
        .copied()
        .collect();
    let max = data.iter().copied().max().unwrap_or(0).max(1);
    frame.render_widget(
        Sparkline::default()
            .block(block)
            .data(&data)
            .max(max)
            .style(st(app, Style::default().fg(Color::Cyan))),
        spark_area,
    );
    let dim = st(app, Style::default().fg(Color::DarkGray));
    let pair = |name: &str, n: u64, style: Style| {
        vec![
            Span::styled(format!("{name} "), dim),
            Span::styled(n.to_string(), style),
            Span::raw("  "),
        ]
    };
    let mut first = Vec::new();
    let mut second = Vec::new();
    let half = EventType::ALL.len().div_ceil(2);
    for (i, (kind, n)) in EventType::ALL.iter().zip(app.counts).enumerate() {
        let target = if i < half { &mut first } else { &mut second };
        target.extend(pair(count_label(*kind), n, Style::default()));
    }
    let bad = if app.invalid > 0 {
        st(
            app,
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    } else {
        Style::default()
    };
    second.extend(pair("invalid", app.invalid, bad));
    second.extend(pair("fragmented", app.fragmented, Style::default()));
    let block = Block::bordered()
        .title_top(" by type ")
        .title_bottom(Line::from(heal_summary(app)));
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]).block(block),
        counts_area,
    );
}

/// A type's name in the counts pane, short enough for two rows.
fn count_label(kind: EventType) -> &'static str {
    match kind {
        EventType::DocumentCreated => "doc.created",
        EventType::DocumentStatusUpdated => "doc.status",
        EventType::JobStatusUpdated => "job.status",
        EventType::MessageCreated => "msg.created",
        EventType::MessageStatusUpdated => "msg.status",
    }
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    let s = &app.status;
    let sep = || Span::styled(" │ ", st(app, Style::default().fg(Color::DarkGray)));
    let mut spans = vec![if !app.status_seen {
        Span::styled("… connecting", st(app, Style::default().fg(Color::Yellow)))
    } else if s.connected {
        Span::styled("● connected", st(app, Style::default().fg(Color::Green)))
    } else {
        Span::styled("○ disconnected", st(app, Style::default().fg(Color::Red)))
    }];
    spans.push(sep());
    let listeners = match s.listeners {
        Some(n) => n.to_string(),
        None => "?".into(),
    };
    let lstyle = if s.listeners == Some(0) {
        st(
            app,
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    } else {
        Style::default()
    };
    spans.push(Span::styled(format!("listeners {listeners}"), lstyle));
    spans.push(sep());
    let (queue, qstyle) = match s.queue_usage {
        Some(q) => {
            let color = if q >= 0.5 {
                Some(Color::Red)
            } else if q >= 0.1 {
                Some(Color::Yellow)
            } else {
                None
            };
            (
                format!("queue {:.2}%", q * 100.0),
                color.map_or(Style::default(), |c| st(app, Style::default().fg(c))),
            )
        }
        None => ("queue ?".into(), Style::default()),
    };
    spans.push(Span::styled(queue, qstyle));
    spans.push(sep());
    spans.push(Span::raw(format!("reconnects {}", s.reconnects)));
    spans.push(sep());
    spans.push(Span::raw(format!(
        "buffer {}/{}",
        app.rows.len(),
        app.capacity
    )));
    spans.push(sep());
    let dstyle = if app.dropped > 0 {
        st(app, Style::default().fg(Color::Yellow))
    } else {
        Style::default()
    };
    spans.push(Span::styled(format!("dropped {}", app.dropped), dstyle));
    if let Some(epoch) = app.relay.epoch {
        spans.push(sep());
        let r = &app.relay;
        spans.push(Span::raw(format!(
            "relay {} #{} failovers {} gaps {}",
            &epoch.to_string()[..8],
            r.seq,
            r.failovers,
            r.gaps
        )));
    }
    let pending = app.fragments_in_flight();
    if pending > 0 {
        spans.push(sep());
        spans.push(Span::raw(format!("fragment groups pending {pending}")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_keys(app: &App, frame: &mut Frame, area: Rect) {
    let key = st(
        app,
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
    );
    let mut spans = Vec::new();
    let mut push = |k: &str, what: &str| {
        if !spans.is_empty() {
            spans.push(Span::raw("  "));
        }
        spans.push(Span::styled(k.to_string(), key));
        spans.push(Span::raw(format!(" {what}")));
    };
    if app.help {
        push("?/Esc", "close help");
        push("q", "quit");
    } else if let Some(editing) = &app.editing {
        let prompt = vec![
            Span::styled(
                format!("{} filter: ", editing.field.label()),
                st(
                    app,
                    Style::default()
                        .fg(Color::Yellow)
                        .add_modifier(Modifier::BOLD),
                ),
            ),
            Span::raw(editing.buf.clone()),
            Span::styled(
                "▏",
                st(app, Style::default().add_modifier(Modifier::SLOW_BLINK)),
            ),
            Span::raw("   "),
        ];
        push("Enter", "apply");
        push("Esc", "cancel");
        push("^U", "clear");
        if editing.field == FilterField::Kind {
            push("Tab", "cycle types");
        }
        if editing.field == FilterField::User {
            push("", "(user id prefix)");
        }
        let mut all = prompt;
        all.extend(spans);
        frame.render_widget(Paragraph::new(Line::from(all)), area);
        return;
    } else {
        push("q", "quit");
        if app.follow {
            push("↑", "scroll/pause");
            push("space", "pause");
        } else {
            push("↑↓", "scroll");
            push("End/f", "follow");
        }
        push("Enter", if app.detail { "close" } else { "detail" });
        if app.detail {
            push("r", if app.raw { "pretty" } else { "raw" });
            push("J/K", "scroll");
        }
        push("/ u t", "filter");
        if app.filters.is_active() {
            push("Esc", "clear filters");
        }
        push("m", "mark");
        push("c", "clear");
        push("w", "save");
        push("?", "help");
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_toast(app: &App, frame: &mut Frame, main: Rect, text: &str, error: bool) {
    let width = (text.chars().count() as u16 + 4).min(main.width);
    if main.height < 3 || width < 5 {
        return;
    }
    let area = Rect {
        x: main.right() - width,
        y: main.bottom() - 3,
        width,
        height: 3,
    };
    let color = if error { Color::Red } else { Color::Green };
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text.to_string()).block(
            Block::bordered()
                .border_style(st(app, Style::default().fg(color)))
                .title_top(if error { " error " } else { " ok " }),
        ),
        area,
    );
}

const HELP: &[(&str, &str)] = &[
    ("", "Navigation"),
    ("↑ ↓  k j", "move the selection (scrolling up pauses)"),
    ("PgUp PgDn", "page up / down"),
    ("Home g", "oldest row (pauses)"),
    ("End f G", "follow the newest rows again"),
    ("space p", "pause / resume"),
    ("", "Inspect"),
    ("Enter", "toggle the detail pane (pretty JSON)"),
    ("r", "raw view: the exact NOTIFY payload"),
    ("J K", "scroll the detail pane"),
    ("", "Filters (they work while paused too)"),
    ("/", "text in the raw payload (smart case)"),
    ("u", "user id prefix"),
    ("t", "type substring, \"invalid\", \"heal\"; Tab cycles"),
    ("t !…", "everything else: \"!heal\" hides heal runs"),
    ("Esc", "clear the filters / cancel typing"),
    ("", "Buffer"),
    ("m", "insert a marker row"),
    ("c", "clear the buffer"),
    ("w", "save every row as JSON Lines"),
    ("q Ctrl-C", "quit"),
];

fn render_help(app: &App, frame: &mut Frame, area: Rect) {
    let width = 62.min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let head = st(
        app,
        Style::default()
            .fg(Color::Yellow)
            .add_modifier(Modifier::BOLD),
    );
    let key = st(
        app,
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
    );
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            if k.is_empty() {
                Line::from(Span::styled(*what, head))
            } else {
                Line::from(vec![
                    Span::styled(format!("  {k:<12}"), key),
                    Span::raw(*what),
                ])
            }
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title_top(" keys · ? or Esc closes ")),
        rect,
    );
}
