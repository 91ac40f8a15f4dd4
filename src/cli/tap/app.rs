//! The inspector's state and the one function that changes it.
//!
//! Nothing here reads a clock: time comes in with [`Msg::Tick`] (and with the
//! `received_at` of each notification), so tests drive it deterministically.
//! Nothing here draws either: the table's height comes from [`layout`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::decode::{Decoder, Event};
use super::filter::{FilterField, Filters, kind_cycle};
use super::keymap::{Mode, keymap};
use super::layout;
use super::msg::{Effect, Msg};
use super::report::OpsReport;
use super::source::{Input, SourceStatus};
use crate::events::EventType;
use crate::events::ops::HealOutcome;

/// Seconds of history in the events/s sparkline.
pub const SPARK_SECS: usize = 60;
/// How long a toast stays up.
pub const TOAST_FOR: Duration = Duration::from_secs(4);
/// Event types, one counter each.
pub const TYPES: usize = EventType::ALL.len();
/// Heal outcomes, one counter each.
pub const OUTCOMES: usize = HealOutcome::ALL.len();

/// Default ring buffer capacity (rows kept in the TUI).
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Clone, Debug)]
pub struct TapOptions {
    /// Ring buffer capacity; the oldest rows are evicted (and counted) past it.
    pub capacity: usize,
    /// Exit after this many notifications (reassembled fragments count once,
    /// ops reports count).
    pub count: Option<u64>,
    /// Initial user filter.
    pub user: Option<uuid::Uuid>,
    /// Initial type filter (substring of the type name, or `invalid`).
    pub kind: Option<String>,
    /// Initial free-text filter (matched against the raw payload).
    pub text: Option<String>,
    /// Where `w` saves the buffer: a directory (a `tap-YYYYmmdd-HHMMSS.jsonl`
    /// file is created in it) or a path ending in `.jsonl`.
    pub save_dir: PathBuf,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            capacity: DEFAULT_CAPACITY,
            count: None,
            user: None,
            kind: None,
            text: None,
            save_dir: PathBuf::from("."),
        }
    }
}

/// A row of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Event(Box<Event>),
    /// A report off the ops channel (a heal run): never an event.
    Report(Box<OpsReport>),
    /// A separator the user inserted with `m`, at this time.
    Marker(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Increases by one per row ever added; identifies a row across
    /// evictions and filter changes.
    pub seq: u64,
    pub entry: Entry,
}

/// A filter being typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Editing {
    pub field: FilterField,
    pub buf: String,
    /// The filter's value before editing, restored by Esc.
    pub before: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Toast {
    pub text: String,
    pub error: bool,
    pub until: Instant,
}

pub struct App {
    /// False under NO_COLOR: no colours or styles except reverse video.
    pub color: bool,
    pub capacity: usize,
    pub rows: VecDeque<Row>,
    next_seq: u64,
    /// Rows evicted from the ring buffer.
    pub dropped: u64,
    /// Seqs of the rows that pass the filters, oldest first.
    pub matches: VecDeque<u64>,
    pub follow: bool,
    /// Selected row while paused.
    pub selected: Option<u64>,
    /// First row shown while paused.
    pub top: Option<u64>,
    /// Rows that arrived (and pass the filters) since pausing.
    pub new_count: u64,
    pub filters: Filters,
    pub editing: Option<Editing>,
    pub detail: bool,
    pub raw: bool,
    pub detail_scroll: u16,
    pub help: bool,
    pub status: SourceStatus,
    /// Whether any status has arrived yet.
    pub status_seen: bool,
    /// Events per type since start (or `c`), in `EventType::ALL` order.
    pub counts: [u64; TYPES],
    pub invalid: u64,
    /// Events that arrived in fragments.
    pub fragmented: u64,
    /// Heal runs since start (or `c`), per outcome in `HealOutcome::ALL`
    /// order.
    pub heals: [u64; OUTCOMES],
    /// The last heal run's duration (ms) and outcome.
    pub last_heal: Option<(f64, HealOutcome)>,
    /// Reports of an op or version this build cannot read.
    pub unknown_reports: u64,
    /// Events per second, oldest first; the last bucket is `spark_head`.
    pub spark: VecDeque<u64>,
    pub spark_head: i64,
    pub toast: Option<Toast>,
    /// The NATS relay, as its messages tell (`--bus nats`).
    pub relay: super::relay::RelaySeen,
    pub now: Instant,
    base: (Instant, DateTime<Utc>),
    decoder: Decoder,
    count_limit: Option<u64>,
    /// Notifications received, reports included (for `--count`).
    pub received: u64,
    pub save_dir: PathBuf,
    pub size: (u16, u16),
}

impl App {
    /// `now` and `wall` are the same moment on the monotonic and wall clocks.
    pub fn new(opts: &TapOptions, now: Instant, wall: DateTime<Utc>) -> App {
        let filters = Filters {
            user: opts.user.map(|u| u.to_string()).unwrap_or_default(),
            kind: opts.kind.clone().unwrap_or_default(),
            text: opts.text.clone().unwrap_or_default(),
        };
        App {
            color: true,
            capacity: opts.capacity.max(1),
            rows: VecDeque::new(),
            next_seq: 0,
            dropped: 0,
            matches: VecDeque::new(),
            follow: true,
            selected: None,
            top: None,
            new_count: 0,
            filters,
            editing: None,
            detail: false,
            raw: false,
            detail_scroll: 0,
            help: false,
            status: SourceStatus::default(),
            status_seen: false,
            counts: [0; TYPES],
            invalid: 0,
            fragmented: 0,
            heals: [0; OUTCOMES],
            last_heal: None,
            unknown_reports: 0,
            spark: std::iter::repeat_n(0, SPARK_SECS).collect(),
            spark_head: wall.timestamp(),
            toast: None,
            relay: Default::default(),
            now,
            base: (now, wall),
            decoder: Decoder::default(),
            count_limit: opts.count,
            received: 0,
            save_dir: opts.save_dir.clone(),
            size: (120, 30),
        }
    }

    /// The wall-clock time of the last tick.
    pub fn wall_now(&self) -> DateTime<Utc> {
        let elapsed = self.now.saturating_duration_since(self.base.0);
        self.base.1 + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }

    pub fn row(&self, seq: u64) -> Option<&Row> {
        let i = self.rows.binary_search_by_key(&seq, |r| r.seq).ok()?;
        self.rows.get(i)
    }

    /// Fragment groups waiting for parts.
    pub fn fragments_in_flight(&self) -> usize {
        self.decoder.in_flight()
    }

    /// Position of the selected row among the matching ones.
    pub fn selected_pos(&self) -> Option<usize> {
        let n = self.matches.len();
        if n == 0 {
            return None;
        }
        match (self.follow, self.selected) {
            (false, Some(seq)) => Some(match self.matches.binary_search(&seq) {
                Ok(p) => p,
                Err(p) => p.min(n - 1),
            }),
            _ => Some(n - 1),
        }
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.selected_pos().and_then(|p| self.row(self.matches[p]))
    }

    fn pos_of(&self, seq: u64) -> usize {
        match self.matches.binary_search(&seq) {
            Ok(p) | Err(p) => p,
        }
    }

    /// The first matching row to show in a table of `height` rows.
    pub fn window_start(&self, height: usize) -> usize {
        let n = self.matches.len();
        let height = height.max(1);
        if self.follow {
            return n.saturating_sub(height);
        }
        let Some(sel) = self.selected_pos() else {
            return 0;
        };
        let mut top = self.top.map_or(sel, |t| self.pos_of(t));
        if sel < top {
            top = sel;
        }
        if sel >= top + height {
            top = sel + 1 - height;
        }
        top.min(n.saturating_sub(height))
    }

    /// Rows the table shows at the current terminal size.
    pub fn page(&self) -> usize {
        let banner = layout::banner(self.status_seen, &self.status).is_some();
        layout::table_rows(self.size.1, self.detail, banner).max(1)
    }

    /// What is taking the keys.
    pub fn mode(&self) -> Mode {
        match (&self.editing, self.help) {
            (_, true) => Mode::Help,
            (Some(editing), false) => Mode::Editing(editing.field),
            (None, false) => Mode::Normal,
        }
    }

    pub fn save_path(&self) -> PathBuf {
        if self.save_dir.extension().is_some_and(|e| e == "jsonl") {
            return self.save_dir.clone();
        }
        let name = format!("tap-{}.jsonl", self.wall_now().format("%Y%m%d-%H%M%S"));
        self.save_dir.join(name)
    }

    /// Heal runs since start (or `c`).
    pub fn heal_runs(&self) -> u64 {
        self.heals.iter().sum()
    }

    /// Heal runs that ended in a `realtime.resync`.
    pub fn heal_resyncs(&self) -> u64 {
        HealOutcome::ALL
            .iter()
            .zip(self.heals)
            .filter(|(o, _)| o.resynced())
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes every buffered row (filters ignored) as JSON Lines: events and
    /// reports as in `--no-tui` output, markers as
    /// `{"marker":true,"received_at":..}`.
    pub fn write_jsonl<W: Write>(&self, mut w: W) -> io::Result<usize> {
        #[derive(Serialize)]
        struct Marker {
            marker: bool,
            received_at: DateTime<Utc>,
        }
        for row in &self.rows {
            match &row.entry {
                Entry::Event(ev) => serde_json::to_writer(&mut w, &ev.record())?,
                Entry::Report(r) => serde_json::to_writer(&mut w, &r.record())?,
                Entry::Marker(at) => serde_json::to_writer(
                    &mut w,
                    &Marker {
                        marker: true,
                        received_at: *at,
                    },
                )?,
            }
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(self.rows.len())
    }

    fn push_row(&mut self, entry: Entry) {
        let seq = self.next_seq;
        self.next_seq += 1;
        while self.rows.len() >= self.capacity {
            let Some(old) = self.rows.pop_front() else {
                break;
            };
            self.dropped += 1;
            if self.matches.front() == Some(&old.seq) {
                self.matches.pop_front();
            }
        }
        let matched = passes(&self.filters, &entry);
        // Markers are the user's own: not news.
        let arrived = !matches!(entry, Entry::Marker(_));
        self.rows.push_back(Row { seq, entry });
        if matched {
            self.matches.push_back(seq);
            if !self.follow && arrived {
                self.new_count += 1;
            }
        }
    }

    fn rebuild_matches(&mut self) {
        self.matches = self
            .rows
            .iter()
            .filter(|r| passes(&self.filters, &r.entry))
            .map(|r| r.seq)
            .collect();
    }

    fn ingest(&mut self, events: Vec<Event>) -> Option<Effect> {
        for ev in events {
            match &ev.outcome {
                Ok(env) => {
                    let i = EventType::ALL
                        .iter()
                        .position(|t| *t == env.kind)
                        .expect("ALL lists every type");
                    self.counts[i] += 1;
                }
                Err(_) => self.invalid += 1,
            }
            if ev.fragments > 1 {
                self.fragmented += 1;
            }
            self.spark_add(ev.received_at);
            self.received += 1;
            self.push_row(Entry::Event(Box::new(ev)));
        }
        self.count_reached()
    }

    fn count_reached(&self) -> Option<Effect> {
        match self.count_limit {
            Some(n) if self.received >= n => Some(Effect::Quit),
            _ => None,
        }
    }

    /// A report: its own counters, never the event types' or `invalid`.
    fn ingest_report(&mut self, report: OpsReport) -> Option<Effect> {
        match report.heal() {
            Some(heal) => {
                let i = HealOutcome::ALL
                    .iter()
                    .position(|o| *o == heal.outcome)
                    .expect("ALL lists every outcome");
                self.heals[i] += 1;
                self.last_heal = Some((heal.duration_ms, heal.outcome));
            }
            None => self.unknown_reports += 1,
        }
        self.received += 1;
        self.push_row(Entry::Report(Box::new(report)));
        self.count_reached()
    }

    fn spark_advance(&mut self, sec: i64) {
        if sec <= self.spark_head {
            return;
        }
        let shift = (sec - self.spark_head).min(SPARK_SECS as i64);
        for _ in 0..shift {
            self.spark.pop_front();
            self.spark.push_back(0);
        }
        self.spark_head = sec;
    }

    fn spark_add(&mut self, at: DateTime<Utc>) {
        let sec = at.timestamp();
        self.spark_advance(sec);
        let age = self.spark_head - sec;
        if (0..SPARK_SECS as i64).contains(&age) {
            self.spark[SPARK_SECS - 1 - age as usize] += 1;
        }
    }

    /// Events in the last complete second.
    pub fn rate(&self) -> u64 {
        self.spark[SPARK_SECS - 2]
    }

    fn toast(&mut self, text: String, error: bool) {
        self.toast = Some(Toast {
            text,
            error,
            until: self.now + TOAST_FOR,
        });
    }

    fn pause(&mut self) {
        if !self.follow {
            return;
        }
        self.follow = false;
        self.new_count = 0;
        self.selected = self.matches.back().copied();
        let start = self.matches.len().saturating_sub(self.page());
        self.top = self.matches.get(start).copied();
    }

    fn resume(&mut self) {
        self.follow = true;
        self.new_count = 0;
        self.selected = None;
        self.top = None;
        self.detail_scroll = 0;
    }

    /// Moves the selection by `delta` rows (pausing), or to `to` if given.
    fn select(&mut self, delta: isize, to: Option<usize>) {
        let n = self.matches.len();
        let cur = self.selected_pos();
        self.pause();
        let (Some(cur), true) = (cur, n > 0) else {
            return;
        };
        let new = to
            .unwrap_or_else(|| cur.saturating_add_signed(delta))
            .min(n - 1);
        if new != cur {
            self.detail_scroll = 0;
        }
        let start_before = self.window_start(self.page());
        self.top = self.matches.get(start_before).copied();
        self.selected = Some(self.matches[new]);
        let start = self.window_start(self.page());
        self.top = self.matches.get(start).copied();
    }

    fn set_filter(&mut self, field: FilterField, value: String) {
        *self.filters.get_mut(field) = value;
        self.rebuild_matches();
        if !self.follow {
            self.new_count = 0;
            let start = self.window_start(self.page());
            self.top = self.matches.get(start).copied();
        }
    }
}

/// Whether a row passes the filters. Markers always pass: they are the
/// user's own separators.
fn passes(filters: &Filters, entry: &Entry) -> bool {
    match entry {
        Entry::Marker(_) => true,
        Entry::Event(ev) => filters.matches(ev),
        Entry::Report(r) => filters.matches_report(r),
    }
}

/// What each message does, one method per message that needs more than a
/// line.
impl App {
    fn on_input(&mut self, input: Input) -> Option<Effect> {
        match input {
            Input::Notification {
                channel,
                payload,
                received_at,
            } => {
                let events = self.decoder.push(channel, payload, received_at, self.now);
                self.ingest(events)
            }
            Input::Report(report) => self.ingest_report(*report),
            Input::Status(status) => {
                self.status = status;
                self.status_seen = true;
                None
            }
            Input::Relay { message, .. } => {
                if let Some(n) = self.relay.note(&message) {
                    self.toast(n.text, n.alarm);
                }
                None
            }
        }
    }

    fn on_tick(&mut self, now: Instant) -> Option<Effect> {
        self.now = self.now.max(now);
        let expired = self.decoder.expire(self.now);
        let sec = self.wall_now().timestamp();
        self.spark_advance(sec);
        if self.toast.as_ref().is_some_and(|t| t.until <= self.now) {
            self.toast = None;
        }
        self.ingest(expired)
    }

    /// Moves down a row or a page; following, there is nothing below.
    fn scroll_down(&mut self, rows: isize) {
        if !self.follow {
            self.select(rows, None);
        }
    }

    fn toggle_pause(&mut self) {
        if self.follow {
            self.pause();
        } else {
            self.resume();
        }
    }

    fn toggle_detail(&mut self) {
        self.detail = !self.detail;
        self.detail_scroll = 0;
    }

    fn toggle_raw(&mut self) {
        if self.detail {
            self.raw = !self.raw;
        } else {
            self.detail = true;
            self.raw = true;
        }
        self.detail_scroll = 0;
    }

    fn scroll_detail(&mut self, delta: i16) {
        if self.detail {
            self.detail_scroll = self.detail_scroll.saturating_add_signed(delta);
        }
    }

    /// Esc: close help, else clear the filters, else close the detail pane.
    fn back(&mut self) {
        if self.help {
            self.help = false;
        } else if self.filters.is_active() {
            self.clear_filters();
        } else if self.detail {
            self.detail = false;
        }
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.matches.clear();
        self.counts = [0; TYPES];
        self.invalid = 0;
        self.fragmented = 0;
        self.heals = [0; OUTCOMES];
        self.last_heal = None;
        self.unknown_reports = 0;
        self.new_count = 0;
        self.selected = None;
        self.top = None;
        self.detail_scroll = 0;
        self.toast("buffer cleared".into(), false);
    }

    fn saved(&mut self, result: Result<(PathBuf, usize), String>) {
        match result {
            Ok((path, rows)) => {
                self.toast(format!("saved {rows} rows to {}", path.display()), false)
            }
            Err(e) => self.toast(format!("save failed: {e}"), true),
        }
    }

    fn clear_filters(&mut self) {
        self.filters = Filters::default();
        self.editing = None;
        self.rebuild_matches();
        if !self.follow {
            self.new_count = 0;
        }
    }

    fn start_editing(&mut self, field: FilterField) {
        let before = self.filters.get(field).to_string();
        self.editing = Some(Editing {
            field,
            buf: before.clone(),
            before,
        });
    }

    /// Tab in the type filter: the next (or previous) type of the cycle.
    fn cycle_kind(&mut self, forward: bool) {
        let cycle = kind_cycle();
        self.edit(|buf| {
            let n = cycle.len();
            let next = match cycle.iter().position(|k| *k == buf.as_str()) {
                Some(i) if forward => (i + 1) % n,
                Some(i) => (i + n - 1) % n,
                None if forward => 0,
                None => n - 2,
            };
            *buf = cycle[next].to_string();
        });
    }

    fn cancel_editing(&mut self) {
        if let Some(editing) = self.editing.take() {
            self.set_filter(editing.field, editing.before);
        }
    }

    /// Edits the filter being typed; the filter applies as it is typed.
    fn edit(&mut self, f: impl FnOnce(&mut String)) {
        let Some(editing) = self.editing.as_mut() else {
            return;
        };
        f(&mut editing.buf);
        let (field, value) = (editing.field, editing.buf.clone());
        self.set_filter(field, value);
    }
}

/// The only function that changes the state.
pub fn update(app: &mut App, msg: Msg) -> Option<Effect> {
    match msg {
        Msg::Key(key) => return keymap(app.mode(), key).and_then(|m| update(app, m)),
        Msg::Input(input) => return app.on_input(input),
        Msg::Tick(now) => return app.on_tick(now),
        Msg::Resize { width, height } => app.size = (width, height),
        Msg::Quit => return Some(Effect::Quit),
        Msg::ScrollUp => app.select(-1, None),
        Msg::ScrollDown => app.scroll_down(1),
        Msg::PageUp => app.select(-(app.page() as isize), None),
        Msg::PageDown => app.scroll_down(app.page() as isize),
        Msg::Top => app.select(0, Some(0)),
        Msg::Follow => app.resume(),
        Msg::TogglePause => app.toggle_pause(),
        Msg::ToggleDetail => app.toggle_detail(),
        Msg::ToggleRaw => app.toggle_raw(),
        Msg::DetailScroll(delta) => app.scroll_detail(delta),
        Msg::ToggleHelp => app.help = !app.help,
        Msg::Back => app.back(),
        Msg::Clear => app.clear(),
        Msg::Marker => app.push_row(Entry::Marker(app.wall_now())),
        Msg::Save => return Some(Effect::Save(app.save_path())),
        Msg::Saved(result) => app.saved(result),
        Msg::EditFilter(field) => app.start_editing(field),
        Msg::InputChar(c) => app.edit(|buf| buf.push(c)),
        Msg::InputBackspace => app.edit(|buf| {
            buf.pop();
        }),
        Msg::InputClear => app.edit(String::clear),
        Msg::InputCycle(forward) => app.cycle_kind(forward),
        Msg::InputSubmit => app.editing = None,
        Msg::InputCancel => app.cancel_editing(),
    }
    None
}
