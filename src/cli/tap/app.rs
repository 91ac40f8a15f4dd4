//! The inspector's state and the one function that changes it.
//!
//! Nothing here reads a clock: time comes in with [`Msg::Tick`] (and with the
//! `received_at` of each notification), so tests drive it deterministically.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Input, SourceStatus, TapOptions, view};
use crate::events::{DropReason, Envelope, EventType, Reassembler, WireMessage, decode};

/// Fragment groups reassembled at once (the listener's own bound).
pub const FRAGMENT_GROUPS: usize = 64;
/// How long a fragment group may take to complete.
pub const FRAGMENT_TTL: Duration = Duration::from_secs(30);
/// Seconds of history in the events/s sparkline.
pub const SPARK_SECS: usize = 60;
/// How long a toast stays up.
pub const TOAST_FOR: Duration = Duration::from_secs(4);

/// One notification off the channel, decoded (or a reassembled fragment
/// group, or a group that failed to reassemble).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub received_at: DateTime<Utc>,
    pub channel: String,
    /// The exact NOTIFY payload. For a reassembled group, the envelope the
    /// fragments carried; for a failed group, the fragment that ended it.
    pub raw: String,
    /// Bytes of NOTIFY payload (summed over fragments).
    pub size: usize,
    /// Notifications that made up this event: 1, or the fragment count.
    pub fragments: usize,
    pub outcome: Result<Envelope, DropReason>,
    /// Best-effort `type` of an invalid payload, for display and filters.
    pub hint_kind: Option<String>,
    /// Best-effort `user_id` of an invalid payload.
    pub hint_user: Option<String>,
}

/// Payload keys shown in the ids column, with their short labels.
pub const KEY_IDS: [(&str, &str); 4] = [
    ("job_id", "job"),
    ("document_id", "doc"),
    ("message_id", "msg"),
    ("conversation_id", "conv"),
];

impl Event {
    fn new(
        channel: String,
        raw: String,
        received_at: DateTime<Utc>,
        size: usize,
        fragments: usize,
        outcome: Result<Envelope, DropReason>,
    ) -> Event {
        let (hint_kind, hint_user) = match &outcome {
            Ok(_) => (None, None),
            Err(_) => hints(&raw),
        };
        Event {
            received_at,
            channel,
            raw,
            size,
            fragments,
            outcome,
            hint_kind,
            hint_user,
        }
    }

    pub fn envelope(&self) -> Option<&Envelope> {
        self.outcome.as_ref().ok()
    }

    pub fn reason(&self) -> Option<DropReason> {
        self.outcome.as_ref().err().copied()
    }

    pub fn is_valid(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The event type, or what an invalid payload claimed to be.
    pub fn kind_label(&self) -> &str {
        match &self.outcome {
            Ok(env) => env.kind.as_str(),
            Err(_) => self.hint_kind.as_deref().unwrap_or("?"),
        }
    }

    pub fn user_label(&self) -> Option<String> {
        match &self.outcome {
            Ok(env) => Some(env.user_id.to_string()),
            Err(_) => self.hint_user.clone(),
        }
    }

    /// `received_at - ts` in milliseconds.
    pub fn delay_ms(&self) -> Option<i64> {
        self.envelope()
            .map(|env| (self.received_at - env.ts).num_milliseconds())
    }

    /// The key ids the payload carries, as (short label, id).
    pub fn key_ids(&self) -> Vec<(&'static str, &str)> {
        let Some(env) = self.envelope() else {
            return Vec::new();
        };
        KEY_IDS
            .iter()
            .filter_map(|(key, label)| Some((*label, env.payload.get(*key)?.as_str()?)))
            .collect()
    }

    pub fn status(&self) -> Option<&str> {
        self.envelope()?.payload.get("status")?.as_str()
    }

    /// The JSON Lines record for this event (`--no-tui` and `w`).
    pub fn record(&self) -> Record<'_> {
        Record {
            received_at: self.received_at,
            channel: &self.channel,
            valid: self.is_valid(),
            reason: self.reason().map(DropReason::as_str),
            envelope: self.envelope(),
            raw: &self.raw,
        }
    }
}

/// One line of JSON Lines output.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub received_at: DateTime<Utc>,
    pub channel: &'a str,
    pub valid: bool,
    pub reason: Option<&'static str>,
    pub envelope: Option<&'a Envelope>,
    pub raw: &'a str,
}

fn hints(raw: &str) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw) else {
        return (None, None);
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = text("type").or_else(|| map.contains_key("frag").then(|| "fragment".into()));
    (kind, text("user_id"))
}

struct Pending {
    started: Instant,
    received_at: DateTime<Utc>,
    channel: String,
    first_raw: String,
    bytes: usize,
    count: usize,
}

/// Turns notifications into [`Event`]s: validates them with
/// [`decode`](crate::events::decode) and joins fragments with a
/// [`Reassembler`], keeping the byte and fragment counts of each group.
pub struct Decoder {
    reassembler: Reassembler,
    pending: HashMap<Uuid, Pending>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            reassembler: Reassembler::new(FRAGMENT_GROUPS, FRAGMENT_TTL),
            pending: HashMap::new(),
        }
    }
}

impl Decoder {
    /// Fragment groups still waiting for parts.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Decodes one notification. Returns nothing for a fragment that does
    /// not complete its group, and may return more than one event when a
    /// new group evicts old ones.
    pub fn push(
        &mut self,
        channel: String,
        payload: String,
        received_at: DateTime<Utc>,
        now: Instant,
    ) -> Vec<Event> {
        let size = payload.len();
        let frag = match decode(&payload) {
            Ok(WireMessage::Envelope(env)) => {
                return vec![Event::new(channel, payload, received_at, size, 1, Ok(*env))];
            }
            Err(reason) => {
                return vec![Event::new(
                    channel,
                    payload,
                    received_at,
                    size,
                    1,
                    Err(reason),
                )];
            }
            Ok(WireMessage::Fragment(frag)) => frag,
        };
        let id = frag.frag.id;
        let entry = self.pending.entry(id).or_insert_with(|| Pending {
            started: now,
            received_at,
            channel: channel.clone(),
            first_raw: payload.clone(),
            bytes: 0,
            count: 0,
        });
        entry.bytes += size;
        entry.count += 1;
        let (result, evicted) = self.reassembler.push(frag, now);
        let mut out = Vec::new();
        if evicted > 0 {
            let mut older: Vec<(Instant, Uuid)> = self
                .pending
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(other, p)| (p.started, *other))
                .collect();
            older.sort();
            for (_, old) in older.into_iter().take(evicted) {
                if let Some(p) = self.pending.remove(&old) {
                    out.push(expired(p));
                }
            }
        }
        match result {
            Ok(None) => {}
            Ok(Some(env)) => {
                let p = self.pending.remove(&id);
                let (bytes, count) = p.map_or((size, 1), |p| (p.bytes, p.count));
                let raw = serde_json::to_string(&env).expect("an envelope always serialises");
                out.push(Event::new(channel, raw, received_at, bytes, count, Ok(env)));
            }
            Err(reason) => {
                let p = self.pending.remove(&id);
                let (bytes, count) = p.map_or((size, 1), |p| (p.bytes, p.count));
                out.push(Event::new(
                    channel,
                    payload,
                    received_at,
                    bytes,
                    count,
                    Err(reason),
                ));
            }
        }
        out
    }

    /// Drops fragment groups older than the TTL, one invalid event each.
    pub fn expire(&mut self, now: Instant) -> Vec<Event> {
        self.reassembler.expire(now);
        let mut gone: Vec<Uuid> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= FRAGMENT_TTL)
            .map(|(id, _)| *id)
            .collect();
        gone.sort_by_key(|id| self.pending[id].started);
        gone.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(expired)
            .collect()
    }
}

fn expired(p: Pending) -> Event {
    Event::new(
        p.channel,
        p.first_raw,
        p.received_at,
        p.bytes,
        p.count,
        Err(DropReason::FragmentExpired),
    )
}

/// A row of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Event(Box<Event>),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterField {
    User,
    Kind,
    Text,
}

impl FilterField {
    pub fn label(self) -> &'static str {
        match self {
            FilterField::User => "user",
            FilterField::Kind => "type",
            FilterField::Text => "text",
        }
    }
}

/// Active filters; an empty string is no filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Prefix of the user id.
    pub user: String,
    /// Substring of the type name, or `invalid` for invalid payloads only.
    pub kind: String,
    /// Substring of the raw payload (case-insensitive unless it has capitals).
    pub text: String,
}

impl Filters {
    pub fn get(&self, field: FilterField) -> &str {
        match field {
            FilterField::User => &self.user,
            FilterField::Kind => &self.kind,
            FilterField::Text => &self.text,
        }
    }

    fn get_mut(&mut self, field: FilterField) -> &mut String {
        match field {
            FilterField::User => &mut self.user,
            FilterField::Kind => &mut self.kind,
            FilterField::Text => &mut self.text,
        }
    }

    pub fn is_active(&self) -> bool {
        !(self.user.is_empty() && self.kind.is_empty() && self.text.is_empty())
    }

    /// Markers always pass: they are the user's own separators.
    pub fn matches(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Marker(_) => true,
            Entry::Event(ev) => self.matches_event(ev),
        }
    }

    fn matches_event(&self, ev: &Event) -> bool {
        if !self.user.is_empty() {
            let user = self.user.trim().to_ascii_lowercase();
            if !ev
                .user_label()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with(&user))
            {
                return false;
            }
        }
        if !self.kind.is_empty() {
            let kind = self.kind.trim();
            let ok = if kind.eq_ignore_ascii_case("invalid") {
                !ev.is_valid()
            } else {
                contains_ignore_case(ev.kind_label(), kind)
            };
            if !ok {
                return false;
            }
        }
        if !self.text.is_empty() {
            let ok = if self.text.chars().any(char::is_uppercase) {
                ev.raw.contains(&self.text)
            } else {
                contains_ignore_case(&ev.raw, &self.text)
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// What the type filter cycles through with Tab: every type, then invalid
/// payloads, then no filter.
pub fn kind_cycle() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    all.push("invalid");
    all.push("");
    all
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

/// Everything `update` can do, keys first mapped to these.
#[derive(Debug)]
pub enum Msg {
    /// A raw key, mapped by [`keymap`] according to the mode.
    Key(KeyEvent),
    Input(Input),
    Tick(Instant),
    Resize {
        width: u16,
        height: u16,
    },
    Quit,
    ScrollUp,
    ScrollDown,
    PageUp,
    PageDown,
    Top,
    /// Follow the newest rows again (`End`/`f`).
    Follow,
    TogglePause,
    ToggleDetail,
    ToggleRaw,
    DetailScroll(i16),
    ToggleHelp,
    /// Esc in normal mode: close help, else clear filters, else close detail.
    Back,
    Clear,
    Marker,
    Save,
    ClearFilters,
    EditFilter(FilterField),
    InputChar(char),
    InputBackspace,
    InputClear,
    InputCycle(bool),
    InputSubmit,
    InputCancel,
    /// Outcome of an [`Effect::Save`]: the path and rows written, or why not.
    Saved(Result<(PathBuf, usize), String>),
}

/// Side effects `update` asks the loop to perform.
#[derive(Debug, PartialEq)]
pub enum Effect {
    Quit,
    Save(PathBuf),
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
    pub counts: [u64; 5],
    pub invalid: u64,
    /// Events that arrived in fragments.
    pub fragmented: u64,
    /// Events per second, oldest first; the last bucket is `spark_head`.
    pub spark: VecDeque<u64>,
    pub spark_head: i64,
    pub toast: Option<Toast>,
    pub now: Instant,
    base: (Instant, DateTime<Utc>),
    decoder: Decoder,
    count_limit: Option<u64>,
    /// Events received (for `--count`).
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
            counts: [0; 5],
            invalid: 0,
            fragmented: 0,
            spark: std::iter::repeat_n(0, SPARK_SECS).collect(),
            spark_head: wall.timestamp(),
            toast: None,
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
        view::table_rows(self).max(1)
    }

    pub fn save_path(&self) -> PathBuf {
        if self.save_dir.extension().is_some_and(|e| e == "jsonl") {
            return self.save_dir.clone();
        }
        let name = format!("tap-{}.jsonl", self.wall_now().format("%Y%m%d-%H%M%S"));
        self.save_dir.join(name)
    }

    /// Writes every buffered row (filters ignored) as JSON Lines: events as
    /// in `--no-tui` output, markers as `{"marker":true,"received_at":..}`.
    pub fn write_jsonl<W: Write>(&self, mut w: W) -> io::Result<usize> {
        #[derive(Serialize)]
        struct Marker {
            marker: bool,
            received_at: DateTime<Utc>,
        }
        for row in &self.rows {
            match &row.entry {
                Entry::Event(ev) => serde_json::to_writer(&mut w, &ev.record())?,
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
        let matched = self.filters.matches(&entry);
        let is_event = matches!(entry, Entry::Event(_));
        self.rows.push_back(Row { seq, entry });
        if matched {
            self.matches.push_back(seq);
            if !self.follow && is_event {
                self.new_count += 1;
            }
        }
    }

    fn rebuild_matches(&mut self) {
        self.matches = self
            .rows
            .iter()
            .filter(|r| self.filters.matches(&r.entry))
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
        match self.count_limit {
            Some(n) if self.received >= n => Some(Effect::Quit),
            _ => None,
        }
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

/// Maps a key to a message according to the mode (help, filter input,
/// normal).
pub fn keymap(app: &App, key: KeyEvent) -> Option<Msg> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Msg::Quit);
    }
    if app.help {
        return match key.code {
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter => Some(Msg::ToggleHelp),
            KeyCode::Char('q') => Some(Msg::Quit),
            _ => None,
        };
    }
    if let Some(editing) = &app.editing {
        return match key.code {
            KeyCode::Esc => Some(Msg::InputCancel),
            KeyCode::Enter => Some(Msg::InputSubmit),
            KeyCode::Backspace => Some(Msg::InputBackspace),
            KeyCode::Char('u') if ctrl => Some(Msg::InputClear),
            KeyCode::Tab | KeyCode::Down if editing.field == FilterField::Kind => {
                Some(Msg::InputCycle(true))
            }
            KeyCode::BackTab | KeyCode::Up if editing.field == FilterField::Kind => {
                Some(Msg::InputCycle(false))
            }
            KeyCode::Char(c) if !ctrl => Some(Msg::InputChar(c)),
            _ => None,
        };
    }
    let msg = match key.code {
        KeyCode::Char('q') => Msg::Quit,
        KeyCode::Up | KeyCode::Char('k') => Msg::ScrollUp,
        KeyCode::Down | KeyCode::Char('j') => Msg::ScrollDown,
        KeyCode::Char('b') if ctrl => Msg::PageUp,
        KeyCode::Char('f') if ctrl => Msg::PageDown,
        KeyCode::PageUp => Msg::PageUp,
        KeyCode::PageDown => Msg::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Msg::Top,
        KeyCode::End | KeyCode::Char('G') | KeyCode::Char('f') => Msg::Follow,
        KeyCode::Char(' ') | KeyCode::Char('p') => Msg::TogglePause,
        KeyCode::Enter => Msg::ToggleDetail,
        KeyCode::Char('r') => Msg::ToggleRaw,
        KeyCode::Char('J') => Msg::DetailScroll(3),
        KeyCode::Char('K') => Msg::DetailScroll(-3),
        KeyCode::Char('?') => Msg::ToggleHelp,
        KeyCode::Char('c') => Msg::Clear,
        KeyCode::Char('m') => Msg::Marker,
        KeyCode::Char('w') => Msg::Save,
        KeyCode::Char('/') => Msg::EditFilter(FilterField::Text),
        KeyCode::Char('u') => Msg::EditFilter(FilterField::User),
        KeyCode::Char('t') => Msg::EditFilter(FilterField::Kind),
        KeyCode::Esc => Msg::Back,
        _ => return None,
    };
    Some(msg)
}

/// The only function that changes the state.
pub fn update(app: &mut App, msg: Msg) -> Option<Effect> {
    match msg {
        Msg::Key(key) => return keymap(app, key).and_then(|m| update(app, m)),
        Msg::Input(Input::Notification {
            channel,
            payload,
            received_at,
        }) => {
            let events = app.decoder.push(channel, payload, received_at, app.now);
            return app.ingest(events);
        }
        Msg::Input(Input::Status(status)) => {
            app.status = status;
            app.status_seen = true;
        }
        Msg::Tick(now) => {
            app.now = app.now.max(now);
            let expired = app.decoder.expire(app.now);
            let sec = app.wall_now().timestamp();
            app.spark_advance(sec);
            if app.toast.as_ref().is_some_and(|t| t.until <= app.now) {
                app.toast = None;
            }
            return app.ingest(expired);
        }
        Msg::Resize { width, height } => app.size = (width, height),
        Msg::Quit => return Some(Effect::Quit),
        Msg::ScrollUp => app.select(-1, None),
        Msg::ScrollDown => {
            if !app.follow {
                app.select(1, None);
            }
        }
        Msg::PageUp => {
            let page = app.page() as isize;
            app.select(-page, None);
        }
        Msg::PageDown => {
            if !app.follow {
                let page = app.page() as isize;
                app.select(page, None);
            }
        }
        Msg::Top => app.select(0, Some(0)),
        Msg::Follow => app.resume(),
        Msg::TogglePause => {
            if app.follow {
                app.pause();
            } else {
                app.resume();
            }
        }
        Msg::ToggleDetail => {
            app.detail = !app.detail;
            app.detail_scroll = 0;
        }
        Msg::ToggleRaw => {
            if app.detail {
                app.raw = !app.raw;
            } else {
                app.detail = true;
                app.raw = true;
            }
            app.detail_scroll = 0;
        }
        Msg::DetailScroll(delta) => {
            if app.detail {
                app.detail_scroll = app.detail_scroll.saturating_add_signed(delta);
            }
        }
        Msg::ToggleHelp => app.help = !app.help,
        Msg::Back => {
            if app.help {
                app.help = false;
            } else if app.filters.is_active() {
                return update(app, Msg::ClearFilters);
            } else if app.detail {
                app.detail = false;
            }
        }
        Msg::Clear => {
            app.rows.clear();
            app.matches.clear();
            app.counts = [0; 5];
            app.invalid = 0;
            app.fragmented = 0;
            app.new_count = 0;
            app.selected = None;
            app.top = None;
            app.detail_scroll = 0;
            app.toast("buffer cleared".into(), false);
        }
        Msg::Marker => {
            let at = app.wall_now();
            app.push_row(Entry::Marker(at));
        }
        Msg::Save => return Some(Effect::Save(app.save_path())),
        Msg::Saved(Ok((path, rows))) => {
            app.toast(format!("saved {rows} rows to {}", path.display()), false)
        }
        Msg::Saved(Err(e)) => app.toast(format!("save failed: {e}"), true),
        Msg::ClearFilters => {
            app.filters = Filters::default();
            app.editing = None;
            app.rebuild_matches();
            if !app.follow {
                app.new_count = 0;
            }
        }
        Msg::EditFilter(field) => {
            let before = app.filters.get(field).to_string();
            app.editing = Some(Editing {
                field,
                buf: before.clone(),
                before,
            });
        }
        Msg::InputChar(c) => edit(app, |buf| buf.push(c)),
        Msg::InputBackspace => edit(app, |buf| {
            buf.pop();
        }),
        Msg::InputClear => edit(app, String::clear),
        Msg::InputCycle(forward) => {
            let cycle = kind_cycle();
            edit(app, |buf| {
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
        Msg::InputSubmit => app.editing = None,
        Msg::InputCancel => {
            if let Some(editing) = app.editing.take() {
                app.set_filter(editing.field, editing.before);
            }
        }
    }
    None
}

/// Edits the filter being typed; the filter applies as it is typed.
fn edit(app: &mut App, f: impl FnOnce(&mut String)) {
    let Some(editing) = app.editing.as_mut() else {
        return;
    };
    f(&mut editing.buf);
    let (field, value) = (editing.field, editing.buf.clone());
    app.set_filter(field, value);
}

/// A one-line description of a status change worth telling a `--no-tui`
/// user about, or None when nothing notable changed.
pub fn status_line(prev: Option<&SourceStatus>, new: &SourceStatus) -> Option<String> {
    let notable = |s: &SourceStatus| (s.connected, s.listeners == Some(0), s.last_error.clone());
    if prev.is_some_and(|p| notable(p) == notable(new)) {
        return None;
    }
    let mut line = if new.connected {
        "connected".to_string()
    } else {
        match &new.last_error {
            Some(e) => format!("disconnected: {e}"),
            None => "disconnected".to_string(),
        }
    };
    if new.reconnects > 0 {
        line.push_str(&format!(" (reconnects: {})", new.reconnects));
    }
    if new.listeners == Some(0) {
        line.push_str(" — no API instance listening — events go nowhere");
    }
    Some(line)
}
