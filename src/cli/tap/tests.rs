//! Update logic, screens (TestBackend snapshots) and JSON Lines output.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use serde_json::{Value, json};
use uuid::Uuid;

use super::app::{App, Entry, update};
use super::filter::FilterField;
use super::msg::{Effect, Msg};
use super::source::SourceStatus;
use super::{Input, TapOptions, run_jsonl, view};
use crate::events::{DropReason, Envelope, EventType, encode_notifications};

pub(super) const USER_A: Uuid = Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111);
pub(super) const USER_B: Uuid = Uuid::from_u128(0x2222_2222_2222_4222_8222_2222_2222_2222);
pub(super) const DOC: Uuid = Uuid::from_u128(0xd0c0_0001_0000_4000_8000_0000_0000_0001);
pub(super) const JOB: Uuid = Uuid::from_u128(0x30b0_0001_0000_4000_8000_0000_0000_0001);
pub(super) const MSG: Uuid = Uuid::from_u128(0x3e55_0001_0000_4000_8000_0000_0000_0001);
pub(super) const CONV: Uuid = Uuid::from_u128(0xc0b0_0001_0000_4000_8000_0000_0000_0001);

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
}

pub(super) fn at(ms: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::milliseconds(ms)
}

/// A fixed envelope; `n` varies its id and timestamp.
pub(super) fn envelope(n: u128, user: Uuid, kind: EventType) -> Envelope {
    let ts = at(n as i64 * 1000);
    let payload = match kind {
        EventType::DocumentCreated => json!({
            "document_id": DOC, "filename": "report.pdf", "mime_type": "application/pdf",
            "size_bytes": 48213, "status": "uploaded", "created_at": ts,
        }),
        EventType::DocumentStatusUpdated => json!({
            "document_id": DOC, "status": "parsed", "error_message": null, "updated_at": ts,
        }),
        EventType::JobStatusUpdated => json!({
            "job_id": JOB, "document_id": DOC, "kind": "parse", "status": "running",
            "retry_count": 0, "error_message": null, "updated_at": ts,
        }),
        EventType::MessageCreated => json!({
            "message_id": MSG, "conversation_id": CONV, "role": "user",
            "content": "what does the report say?", "status": "completed", "created_at": ts,
        }),
        EventType::MessageStatusUpdated => json!({
            "message_id": MSG, "conversation_id": CONV, "status": "completed",
            "content": "It says the budget grew.", "updated_at": ts,
        }),
    };
    Envelope {
        v: 1,
        id: Uuid::from_u128(0xe0e0_0000_0000_4000_8000_0000_0000_0000 + n),
        user_id: user,
        kind,
        payload,
        ts,
        origin: "worker-1".into(),
    }
}

pub(super) fn opts() -> TapOptions {
    TapOptions {
        save_dir: PathBuf::from("/tmp/taps"),
        ..TapOptions::default()
    }
}

pub(super) fn app_with(opts: &TapOptions) -> (App, Instant) {
    let start = Instant::now();
    (App::new(opts, start, t0()), start)
}

pub(super) fn app() -> App {
    app_with(&opts()).0
}

pub(super) fn notification(payload: impl Into<String>, received_at: DateTime<Utc>) -> Input {
    Input::Notification {
        channel: "rag_events".into(),
        payload: payload.into(),
        received_at,
    }
}

pub(super) fn note(payload: impl Into<String>, received_at: DateTime<Utc>) -> Msg {
    Msg::Input(notification(payload, received_at))
}

/// Publishes `env` as it would arrive, `delay_ms` after its `ts`.
pub(super) fn send(app: &mut App, env: &Envelope, delay_ms: i64) -> Option<Effect> {
    let mut effect = None;
    for p in encode_notifications(env).unwrap() {
        effect = update(
            app,
            note(p, env.ts + chrono::Duration::milliseconds(delay_ms)),
        );
    }
    effect
}

pub(super) fn status(app: &mut App, listeners: i64) {
    update(
        app,
        Msg::Input(Input::Status(SourceStatus {
            connected: true,
            reconnects: 1,
            queue_usage: Some(0.000_125),
            listeners: Some(listeners),
            last_error: None,
        })),
    );
}

pub(super) fn key(app: &mut App, code: KeyCode) -> Option<Effect> {
    update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

pub(super) fn chr(app: &mut App, c: char) -> Option<Effect> {
    key(app, KeyCode::Char(c))
}

pub(super) fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        chr(app, c);
    }
}

fn events(app: &App) -> Vec<&super::decode::Event> {
    app.rows
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Event(ev) => Some(&**ev),
            Entry::Report(_) | Entry::Marker(_) => None,
        })
        .collect()
}

pub(super) fn selected_kind(app: &App) -> Option<String> {
    match &app.selected_row()?.entry {
        Entry::Event(ev) => Some(ev.kind_label().to_string()),
        Entry::Report(r) => Some(r.kind_label().to_string()),
        Entry::Marker(_) => Some("marker".into()),
    }
}

/// Five events of every type, alternating users, delays 12..16 ms.
pub(super) fn five(app: &mut App) {
    for (i, kind) in EventType::ALL.into_iter().enumerate() {
        let user = if i % 2 == 0 { USER_A } else { USER_B };
        send(app, &envelope(i as u128, user, kind), 12 + i as i64);
    }
}

pub(super) fn render(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
    terminal.draw(|f| view::view(app, f)).unwrap();
    terminal.backend().to_string()
}

pub(super) fn buffer(app: &App) -> ratatui::buffer::Buffer {
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
    terminal.draw(|f| view::view(app, f)).unwrap();
    terminal.backend().buffer().clone()
}

// ---- update logic ----------------------------------------------------------

#[test]
fn follows_then_pause_counts_new_rows() {
    let mut app = app();
    five(&mut app);
    assert!(app.follow);
    assert_eq!(app.selected_pos(), Some(4));
    assert_eq!(chr(&mut app, ' '), None);
    assert!(!app.follow);
    assert_eq!(
        selected_kind(&app).as_deref(),
        Some("message.status_updated")
    );
    send(
        &mut app,
        &envelope(10, USER_A, EventType::JobStatusUpdated),
        5,
    );
    send(
        &mut app,
        &envelope(11, USER_A, EventType::JobStatusUpdated),
        5,
    );
    assert_eq!(app.new_count, 2);
    // The selection stays where it was while paused.
    assert_eq!(app.selected_pos(), Some(4));
    chr(&mut app, 'f');
    assert!(app.follow);
    assert_eq!(app.new_count, 0);
    assert_eq!(app.selected_pos(), Some(6));
    // Space toggles back and forth; End resumes too.
    chr(&mut app, 'p');
    assert!(!app.follow);
    key(&mut app, KeyCode::End);
    assert!(app.follow);
}

#[test]
fn scrolling_up_pauses_and_down_stays_paused() {
    let mut app = app();
    five(&mut app);
    key(&mut app, KeyCode::Up);
    assert!(!app.follow);
    assert_eq!(app.selected_pos(), Some(3));
    chr(&mut app, 'k');
    assert_eq!(app.selected_pos(), Some(2));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    assert_eq!(app.selected_pos(), Some(4));
    assert!(
        !app.follow,
        "reaching the bottom does not resume; End/f does"
    );
    key(&mut app, KeyCode::Home);
    assert_eq!(app.selected_pos(), Some(0));
    // Down in follow mode is a no-op and does not pause.
    chr(&mut app, 'G');
    key(&mut app, KeyCode::Down);
    assert!(app.follow);
}

#[test]
fn paging_keeps_selection_visible() {
    let mut app = app();
    for i in 0..100 {
        send(
            &mut app,
            &envelope(i, USER_A, EventType::JobStatusUpdated),
            1,
        );
    }
    let page = app.page();
    assert_eq!(page, 21, "120x30 leaves 21 table rows");
    key(&mut app, KeyCode::PageUp);
    assert_eq!(app.selected_pos(), Some(99 - page));
    let start = app.window_start(page);
    assert!(start <= 99 - page && 99 - page < start + page);
    key(&mut app, KeyCode::PageUp);
    key(&mut app, KeyCode::PageDown);
    assert_eq!(app.selected_pos(), Some(99 - page));
    key(&mut app, KeyCode::Home);
    assert_eq!(app.window_start(page), 0);
}

#[test]
fn filters_apply_while_paused() {
    let mut app = app();
    five(&mut app);
    chr(&mut app, ' ');
    // Type filter, typed: applies as it is typed.
    chr(&mut app, 't');
    typed(&mut app, "message");
    assert_eq!(app.matches.len(), 2);
    key(&mut app, KeyCode::Enter);
    assert!(app.editing.is_none());
    assert_eq!(app.filters.kind, "message");
    assert!(!app.follow, "still paused");
    // Only matching arrivals count towards the badge.
    send(
        &mut app,
        &envelope(20, USER_A, EventType::JobStatusUpdated),
        1,
    );
    send(
        &mut app,
        &envelope(21, USER_A, EventType::MessageCreated),
        1,
    );
    assert_eq!(app.new_count, 1);
    assert_eq!(app.matches.len(), 3);
    // User filter by prefix narrows further.
    chr(&mut app, 'u');
    typed(&mut app, "2222");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.matches.len(), 1);
    assert_eq!(selected_kind(&app).as_deref(), Some("message.created"));
    // Esc clears every filter, still paused.
    key(&mut app, KeyCode::Esc);
    assert!(!app.filters.is_active());
    assert_eq!(app.matches.len(), 7);
    assert!(!app.follow);
}

#[test]
fn text_filter_is_smart_case_and_esc_cancels_typing() {
    let mut app = app();
    five(&mut app);
    chr(&mut app, '/');
    typed(&mut app, "report.pdf");
    assert_eq!(app.matches.len(), 1);
    key(&mut app, KeyCode::Enter);
    // Lower case matches any case; a capital makes it exact.
    update(&mut app, Msg::EditFilter(FilterField::Text));
    update(&mut app, Msg::InputClear);
    typed(&mut app, "BUDGET");
    assert_eq!(app.matches.len(), 0);
    update(&mut app, Msg::InputClear);
    typed(&mut app, "budget");
    assert_eq!(app.matches.len(), 1);
    // Esc while typing restores the filter as it was before.
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.filters.text, "report.pdf");
    assert_eq!(app.matches.len(), 1);
    key(&mut app, KeyCode::Backspace); // normal mode: no effect
    assert_eq!(app.filters.text, "report.pdf");
}

#[test]
fn type_filter_cycles_with_tab() {
    let mut app = app();
    five(&mut app);
    send(
        &mut app,
        &envelope(9, USER_A, EventType::JobStatusUpdated),
        1,
    );
    update(&mut app, note("garbage", at(9_000)));
    chr(&mut app, 't');
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.filters.kind, "document.created");
    for _ in 0..2 {
        key(&mut app, KeyCode::Tab);
    }
    assert_eq!(app.filters.kind, "job.status_updated");
    assert_eq!(app.matches.len(), 2);
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.filters.kind, "");
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.filters.kind, "!heal");
    assert_eq!(app.matches.len(), 7, "no heal runs here: everything shows");
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.filters.kind, "heal");
    assert_eq!(app.matches.len(), 0);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.filters.kind, "invalid");
    assert_eq!(app.matches.len(), 1);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.filters.kind, "invalid");
}

#[test]
fn ring_buffer_evicts_oldest_and_counts_drops() {
    let opts = TapOptions {
        capacity: 3,
        ..opts()
    };
    let (mut app, _) = app_with(&opts);
    for i in 0..5 {
        send(
            &mut app,
            &envelope(i, USER_A, EventType::JobStatusUpdated),
            1,
        );
    }
    assert_eq!(app.rows.len(), 3);
    assert_eq!(app.dropped, 2);
    assert_eq!(app.rows.front().unwrap().seq, 2);
    assert_eq!(
        app.matches.iter().copied().collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    // A paused selection that gets evicted moves to the oldest row left.
    key(&mut app, KeyCode::Home);
    assert_eq!(app.selected, Some(2));
    send(
        &mut app,
        &envelope(5, USER_A, EventType::JobStatusUpdated),
        1,
    );
    assert_eq!(app.dropped, 3);
    assert_eq!(app.selected_pos(), Some(0));
    assert_eq!(app.selected_row().unwrap().seq, 3);
    // Markers take room in the buffer too.
    chr(&mut app, 'm');
    assert_eq!(app.dropped, 4);
    assert_eq!(app.rows.len(), 3);
}

#[test]
fn invalid_payloads_keep_their_reason() {
    let good = serde_json::to_value(envelope(1, USER_A, EventType::DocumentStatusUpdated)).unwrap();
    let cases = crate::events::malformed_variants(&good, DOC);
    let mut app = app();
    for (payload, _) in &cases {
        update(&mut app, note(payload.clone(), at(5)));
    }
    let got: Vec<_> = events(&app).iter().map(|e| e.reason()).collect();
    let want: Vec<_> = cases.iter().map(|(_, r)| Some(*r)).collect();
    assert_eq!(got, want);
    assert_eq!(app.invalid, 7);
    assert_eq!(app.counts, [0; 5]);
    // An invalid payload keeps what it claimed to be, for display and filters.
    let bad_payload = events(&app)[4];
    assert_eq!(bad_payload.kind_label(), "document.status_updated");
    assert_eq!(bad_payload.user_label(), Some(USER_A.to_string()));
    assert_eq!(bad_payload.raw, cases[4].0);
    assert_eq!(bad_payload.size, cases[4].0.len());
}

#[test]
fn fragments_are_reassembled_into_one_row() {
    let mut app = app();
    let mut env = envelope(3, USER_B, EventType::MessageStatusUpdated);
    env.payload["content"] = json!("x".repeat(12_000));
    let notes = encode_notifications(&env).unwrap();
    assert_eq!(notes.len(), 3);
    let total: usize = notes.iter().map(String::len).sum();
    for (i, p) in notes.iter().enumerate() {
        update(&mut app, note(p.clone(), at(3_000 + 40 + i as i64)));
        let expect_rows = usize::from(i == notes.len() - 1);
        assert_eq!(app.rows.len(), expect_rows);
    }
    let ev = events(&app)[0];
    assert_eq!(ev.envelope(), Some(&env));
    assert_eq!(ev.fragments, 3);
    assert_eq!(ev.size, total);
    assert_eq!(ev.raw, serde_json::to_string(&env).unwrap());
    assert_eq!(ev.delay_ms(), Some(42));
    assert_eq!(app.fragmented, 1);
    assert_eq!(app.counts[4], 1);
    assert_eq!(app.fragments_in_flight(), 0);
}

#[test]
fn failed_and_expired_reassembly_show_as_invalid() {
    let (mut app, start) = app_with(&opts());
    let mut env = envelope(3, USER_B, EventType::MessageStatusUpdated);
    env.payload["content"] = json!("y".repeat(12_000));
    let notes = encode_notifications(&env).unwrap();
    // A duplicated fragment breaks its group.
    update(&mut app, note(notes[0].clone(), at(1)));
    update(&mut app, note(notes[0].clone(), at(2)));
    let ev = events(&app)[0];
    assert_eq!(ev.reason(), Some(DropReason::BadFragment));
    assert_eq!(ev.fragments, 2);
    assert_eq!(ev.kind_label(), "fragment");
    // A group that never completes expires after the TTL.
    update(&mut app, note(notes[1].clone(), at(3)));
    assert_eq!(app.fragments_in_flight(), 1);
    update(&mut app, Msg::Tick(start + Duration::from_secs(29)));
    assert_eq!(app.rows.len(), 1);
    update(&mut app, Msg::Tick(start + Duration::from_secs(31)));
    assert_eq!(app.rows.len(), 2);
    let ev = events(&app)[1];
    assert_eq!(ev.reason(), Some(DropReason::FragmentExpired));
    assert_eq!(ev.raw, notes[1]);
    assert_eq!(app.fragments_in_flight(), 0);
    assert_eq!(app.invalid, 2);
}

#[test]
fn marker_and_clear() {
    let (mut app, start) = app_with(&opts());
    five(&mut app);
    update(&mut app, Msg::Tick(start + Duration::from_millis(7_250)));
    chr(&mut app, 'm');
    assert_eq!(app.rows.back().unwrap().entry, Entry::Marker(at(7_250)));
    // Markers pass every filter.
    update(&mut app, Msg::EditFilter(FilterField::Kind));
    typed(&mut app, "job");
    assert_eq!(app.matches.len(), 2);
    key(&mut app, KeyCode::Enter);
    chr(&mut app, 'c');
    assert!(app.rows.is_empty());
    assert!(app.matches.is_empty());
    assert_eq!(app.counts, [0; 5]);
    assert_eq!(app.toast.as_ref().unwrap().text, "buffer cleared");
    assert_eq!(
        app.filters.kind, "job",
        "clearing the buffer keeps the filters"
    );
    update(&mut app, Msg::Tick(start + Duration::from_secs(20)));
    assert!(app.toast.is_none(), "toasts expire");
}

#[test]
fn save_writes_every_row_as_json_lines() {
    let (mut app, start) = app_with(&opts());
    send(
        &mut app,
        &envelope(1, USER_A, EventType::DocumentCreated),
        7,
    );
    update(&mut app, note("oops", at(1_500)));
    update(&mut app, Msg::Tick(start + Duration::from_secs(2)));
    chr(&mut app, 'm');
    // A filter hides rows from the table, not from the file.
    update(&mut app, Msg::EditFilter(FilterField::Kind));
    typed(&mut app, "invalid");
    assert_eq!(
        chr(&mut app, 'w'),
        None,
        "typing a w into the filter is not a save"
    );
    key(&mut app, KeyCode::Enter);
    let effect = chr(&mut app, 'w');
    assert_eq!(
        effect,
        Some(Effect::Save(PathBuf::from(
            "/tmp/taps/tap-20261128-100002.jsonl"
        )))
    );
    let mut out = Vec::new();
    assert_eq!(app.write_jsonl(&mut out).unwrap(), 3);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[0]["reason"], Value::Null);
    assert_eq!(lines[0]["channel"], "rag_events");
    assert_eq!(lines[0]["received_at"], "2026-11-28T10:00:01.007Z");
    assert_eq!(lines[0]["envelope"]["type"], "document.created");
    assert_eq!(lines[0]["envelope"]["user_id"], USER_A.to_string());
    let raw = lines[0]["raw"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Envelope>(raw).unwrap(),
        envelope(1, USER_A, EventType::DocumentCreated)
    );
    assert_eq!(lines[1]["valid"], false);
    assert_eq!(lines[1]["reason"], "not_json");
    assert_eq!(lines[1]["envelope"], Value::Null);
    assert_eq!(lines[1]["raw"], "oops");
    assert_eq!(
        lines[2],
        json!({"marker": true, "received_at": "2026-11-28T10:00:02Z"})
    );
    // The loop reports back; a toast shows the path or the error.
    update(
        &mut app,
        Msg::Saved(Ok((PathBuf::from("/tmp/taps/x.jsonl"), 3))),
    );
    assert_eq!(
        app.toast.as_ref().unwrap().text,
        "saved 3 rows to /tmp/taps/x.jsonl"
    );
    update(&mut app, Msg::Saved(Err("/nope/x.jsonl: denied".into())));
    let toast = app.toast.as_ref().unwrap();
    assert!(toast.error);
    assert_eq!(toast.text, "save failed: /nope/x.jsonl: denied");
    // A save path ending in .jsonl is used as is.
    let (app, _) = app_with(&TapOptions {
        save_dir: PathBuf::from("out/tap.jsonl"),
        ..opts()
    });
    assert_eq!(app.save_path(), PathBuf::from("out/tap.jsonl"));
}

#[test]
fn count_quits_after_n_events_and_q_quits() {
    let (mut app, _) = app_with(&TapOptions {
        count: Some(2),
        ..opts()
    });
    assert_eq!(
        send(
            &mut app,
            &envelope(1, USER_A, EventType::DocumentCreated),
            1
        ),
        None
    );
    assert_eq!(
        send(
            &mut app,
            &envelope(2, USER_A, EventType::DocumentCreated),
            1
        ),
        Some(Effect::Quit)
    );
    let mut app = super::app::App::new(&opts(), Instant::now(), t0());
    assert_eq!(chr(&mut app, 'q'), Some(Effect::Quit));
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    update(&mut app, Msg::EditFilter(FilterField::Text));
    assert_eq!(update(&mut app, Msg::Key(ctrl_c)), Some(Effect::Quit));
}

#[test]
fn initial_filters_come_from_options() {
    let (mut app, _) = app_with(&TapOptions {
        user: Some(USER_B),
        kind: Some("document".into()),
        text: None,
        ..opts()
    });
    five(&mut app);
    assert_eq!(app.matches.len(), 1);
    assert_eq!(
        selected_kind(&app).as_deref(),
        Some("document.status_updated")
    );
}

#[test]
fn sparkline_buckets_by_second() {
    let (mut app, start) = app_with(&opts());
    for ms in [100, 200, 1_100, 1_200, 1_300, 3_000] {
        send(
            &mut app,
            &envelope(0, USER_A, EventType::JobStatusUpdated),
            ms,
        );
    }
    update(&mut app, Msg::Tick(start + Duration::from_millis(4_100)));
    let tail: Vec<u64> = app.spark.iter().rev().take(5).copied().collect();
    assert_eq!(tail, vec![0, 1, 0, 3, 2]);
    assert_eq!(app.rate(), 1);
    update(&mut app, Msg::Tick(start + Duration::from_secs(200)));
    assert!(app.spark.iter().all(|n| *n == 0));
}

#[test]
fn status_lines_for_no_tui_mode() {
    use super::jsonl::status_line;
    let up = SourceStatus {
        connected: true,
        listeners: Some(0),
        ..SourceStatus::default()
    };
    assert_eq!(
        status_line(None, &up).unwrap(),
        "connected — no API instance listening — events go nowhere"
    );
    let same = SourceStatus {
        queue_usage: Some(0.5),
        ..up.clone()
    };
    assert_eq!(status_line(Some(&up), &same), None);
    let down = SourceStatus {
        connected: false,
        reconnects: 2,
        last_error: Some("connection refused".into()),
        ..SourceStatus::default()
    };
    assert_eq!(
        status_line(Some(&up), &down).unwrap(),
        "disconnected: connection refused (reconnects: 2)"
    );
}

// ---- styles ----------------------------------------------------------------

pub(super) fn row_of(buf: &ratatui::buffer::Buffer, needle: &str) -> u16 {
    (0..buf.area.height)
        .find(|y| {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, *y)].symbol().to_string())
                .collect();
            line.contains(needle)
        })
        .unwrap_or_else(|| panic!("{needle} not on screen"))
}

#[test]
fn invalid_rows_are_red_and_no_color_means_no_colour() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    update(&mut app, note("not json at all", at(6_000)));
    let buf = buffer(&app);
    let y = row_of(&buf, "not_json");
    assert_eq!(buf[(2, y)].fg, Color::Red);
    app.color = false;
    chr(&mut app, 'k');
    let buf = buffer(&app);
    let mut reversed = 0;
    for cell in buf.content() {
        assert_eq!(cell.fg, Color::Reset, "NO_COLOR: no foreground colour");
        assert_eq!(cell.bg, Color::Reset, "NO_COLOR: no background colour");
        let m = cell.modifier - ratatui::style::Modifier::REVERSED;
        assert!(m.is_empty(), "NO_COLOR: only reverse video, got {m:?}");
        if cell.modifier.contains(ratatui::style::Modifier::REVERSED) {
            reversed += 1;
        }
    }
    assert!(
        reversed > 0,
        "the selection is still shown in reverse video"
    );
}

// ---- screens ---------------------------------------------------------------

#[test]
fn screen_empty_with_no_listener_warning() {
    let mut app = app();
    status(&mut app, 0);
    let screen = render(&app);
    assert!(
        screen.contains("no API instance listening — events go nowhere"),
        "{screen}"
    );
    insta::assert_snapshot!("empty_no_listener", screen);
}

#[test]
fn screen_following() {
    let (mut app, start) = app_with(&opts());
    status(&mut app, 2);
    five(&mut app);
    update(&mut app, Msg::Tick(start + Duration::from_millis(5_500)));
    chr(&mut app, 'm');
    let mut big = envelope(6, USER_B, EventType::MessageStatusUpdated);
    big.payload["content"] = json!("z".repeat(12_000));
    send(&mut app, &big, 230);
    update(&mut app, Msg::Tick(start + Duration::from_millis(7_300)));
    let screen = render(&app);
    assert!(screen.contains("FOLLOW"), "{screen}");
    insta::assert_snapshot!("following", screen);
}

#[test]
fn screen_paused_with_new_badge() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    for i in 10..13 {
        send(
            &mut app,
            &envelope(i, USER_A, EventType::JobStatusUpdated),
            3,
        );
    }
    let screen = render(&app);
    assert!(screen.contains("PAUSED · 3 new"), "{screen}");
    insta::assert_snapshot!("paused_new_badge", screen);
}

#[test]
fn screen_filter_active() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    chr(&mut app, 't');
    typed(&mut app, "message");
    key(&mut app, KeyCode::Enter);
    chr(&mut app, 'u');
    typed(&mut app, "2222");
    key(&mut app, KeyCode::Enter);
    let screen = render(&app);
    assert!(
        screen.contains("filter: user=2222 type~message"),
        "{screen}"
    );
    insta::assert_snapshot!("filter_active", screen);
}

#[test]
fn screen_typing_a_filter() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    chr(&mut app, '/');
    typed(&mut app, "budget");
    let screen = render(&app);
    assert!(screen.contains("text filter: budget"), "{screen}");
    insta::assert_snapshot!("filter_typing", screen);
}

#[test]
fn screen_detail_pretty_json() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Enter);
    assert!(app.detail);
    let screen = render(&app);
    assert!(
        screen.contains("\"job_id\": \"30b00001-0000-4000-8000-000000000001\""),
        "{screen}"
    );
    insta::assert_snapshot!("detail_pretty", screen);
}

#[test]
fn screen_raw_view() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    key(&mut app, KeyCode::Enter);
    chr(&mut app, 'r');
    assert!(app.raw);
    let screen = render(&app);
    assert!(screen.contains("raw NOTIFY payload"), "{screen}");
    insta::assert_snapshot!("raw_view", screen);
}

#[test]
fn screen_invalid_payload() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    let mut bad =
        serde_json::to_value(envelope(7, USER_A, EventType::DocumentStatusUpdated)).unwrap();
    bad["payload"].as_object_mut().unwrap().remove("updated_at");
    update(&mut app, note(bad.to_string(), at(7_020)));
    update(&mut app, note("{\"v\":1,\"hello\"", at(7_030)));
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Enter);
    let screen = render(&app);
    assert!(screen.contains("✗ bad_payload"), "{screen}");
    assert!(screen.contains("✗ not_json"), "{screen}");
    assert!(
        screen.contains("payload of document.status_updated is missing `updated_at`"),
        "{screen}"
    );
    insta::assert_snapshot!("invalid_payload", screen);
}

#[test]
fn screen_help_overlay() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    chr(&mut app, '?');
    assert!(app.help);
    let screen = render(&app);
    insta::assert_snapshot!("help_overlay", screen);
    key(&mut app, KeyCode::Esc);
    assert!(!app.help);
}

#[test]
fn screen_disconnected_with_toast() {
    let mut app = app();
    five(&mut app);
    update(
        &mut app,
        Msg::Input(Input::Status(SourceStatus {
            connected: false,
            reconnects: 3,
            queue_usage: None,
            listeners: None,
            last_error: Some("connection refused".into()),
        })),
    );
    update(
        &mut app,
        Msg::Saved(Ok((PathBuf::from("./tap-20261128-100000.jsonl"), 5))),
    );
    let screen = render(&app);
    insta::assert_snapshot!("disconnected_toast", screen);
}

// ---- JSON Lines mode -------------------------------------------------------

#[tokio::test]
async fn jsonl_mode_prints_one_object_per_notification() {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let first = envelope(1, USER_A, EventType::JobStatusUpdated);
    let mut big = envelope(2, USER_B, EventType::MessageStatusUpdated);
    big.payload["content"] = json!("w".repeat(12_000));
    tx.send(Input::Status(SourceStatus::default()))
        .await
        .unwrap();
    for p in encode_notifications(&first).unwrap() {
        tx.send(notification(p, at(1_010))).await.unwrap();
    }
    tx.send(notification("{\"v\":9}", at(1_500))).await.unwrap();
    for p in encode_notifications(&big).unwrap() {
        tx.send(notification(p, at(2_020))).await.unwrap();
    }
    tx.send(notification("never read: --count stops first", at(3_000)))
        .await
        .unwrap();
    let mut out = Vec::new();
    run_jsonl(rx, &mut out, Some(3)).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "received_at",
        "channel",
        "valid",
        "reason",
        "envelope",
        "raw",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[0]["reason"], Value::Null);
    assert_eq!(lines[0]["received_at"], "2026-11-28T10:00:01.010Z");
    assert_eq!(
        serde_json::from_value::<Envelope>(lines[0]["envelope"].clone()).unwrap(),
        first
    );
    assert_eq!(lines[1]["valid"], false);
    assert_eq!(lines[1]["reason"], "unknown_version");
    assert_eq!(lines[1]["envelope"], Value::Null);
    assert_eq!(lines[1]["raw"], "{\"v\":9}");
    // Fragments come out as the one envelope they carried.
    assert_eq!(
        serde_json::from_value::<Envelope>(lines[2]["envelope"].clone()).unwrap(),
        big
    );
    assert!(text.ends_with('\n'));
    drop(tx);
}

#[tokio::test]
async fn jsonl_mode_ends_with_the_channel_and_quietly_on_broken_pipe() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(notification("x", t0())).await.unwrap();
    drop(tx);
    let mut out = Vec::new();
    run_jsonl(rx, &mut out, None).await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);

    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(notification("x", t0())).await.unwrap();
    let result = run_jsonl(rx, Closed, None).await;
    assert!(result.is_ok(), "{result:?}");
    drop(tx);

    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(notification("x", t0())).await.unwrap();
    let err = run_jsonl(rx, Full, None).await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn raw_view_cuts_lines_exactly() {
    let text = |lines: Vec<ratatui::text::Line>| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    };
    let raw = "abcdefghij\nxyz";
    assert_eq!(
        text(view::raw_lines(raw, 4, 0, 10)),
        ["abcd", "efgh", "ij", "xyz"]
    );
    assert_eq!(text(view::raw_lines(raw, 4, 1, 2)), ["efgh", "ij"]);
    assert_eq!(text(view::raw_lines("ééééé", 2, 0, 9)), ["éé", "éé", "é"]);
    // J/K scroll the detail pane, raw view included.
    let mut app = app();
    send(
        &mut app,
        &envelope(1, USER_A, EventType::DocumentCreated),
        1,
    );
    chr(&mut app, 'r');
    assert!(app.detail && app.raw);
    chr(&mut app, 'J');
    assert_eq!(app.detail_scroll, 3);
    let screen = render(&app);
    let first = &envelope(1, USER_A, EventType::DocumentCreated);
    let raw = serde_json::to_string(first).unwrap();
    let line4: String = raw.chars().skip(3 * 118).take(118).collect();
    assert!(screen.contains(&line4), "{screen}");
    chr(&mut app, 'K');
    chr(&mut app, 'K');
    assert_eq!(app.detail_scroll, 0);
}
