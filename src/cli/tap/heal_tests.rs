//! Heal runs in tap: rows apart from events, their own counters, filters,
//! the detail pane, the status bar, saving and JSON Lines.

use crossterm::event::KeyCode;
use ratatui::style::Color;
use serde_json::Value;

use super::Input;
use super::app::{Entry, update};
use super::msg::{Effect, Msg};
use super::report::ReportKind;
use super::tests::*;
use super::{TapOptions, run_jsonl};
use crate::events::EventType;
use crate::events::ops::{HEAL_OP, HealOutcome, HealReport, OPS_CHANNEL, OPS_VERSION};

/// A heal run of `channel` that ended `n` seconds in, with `outcome`.
fn heal_on(channel: &str, n: i64, outcome: HealOutcome) -> HealReport {
    let failed = outcome == HealOutcome::Failed;
    HealReport {
        v: OPS_VERSION,
        op: HEAL_OP.into(),
        channel: channel.into(),
        instance: "api-host:4242".into(),
        reason: "listener_reconnected".into(),
        from: at(n * 1000 - 2_500),
        to: (!failed).then(|| at(n * 1000 - 40)),
        users: 20,
        sockets: 23,
        rows: 180,
        frames: 190,
        duration_ms: 12.5,
        outcome,
        error: failed.then(|| "canceling statement due to statement timeout".into()),
        at: at(n * 1000),
    }
}

fn heal(n: i64, outcome: HealOutcome) -> HealReport {
    heal_on("rag_events", n, outcome)
}

/// What the source hands over for `report` published on the ops channel
/// (`None` when it is not for tap's `rag_events`).
fn ops_input(report: &HealReport, received_ms: i64) -> Option<Input> {
    Input::from_notification(
        "rag_events",
        OPS_CHANNEL.into(),
        report.to_json(),
        at(received_ms),
    )
}

fn publish(app: &mut super::app::App, report: &HealReport) -> Option<Effect> {
    let received = (report.at - t0()).num_milliseconds() + 3;
    update(app, Msg::Input(ops_input(report, received).unwrap()))
}

fn reports(app: &super::app::App) -> Vec<&HealReport> {
    app.rows
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Report(r) => r.heal(),
            _ => None,
        })
        .collect()
}

#[test]
fn the_source_keeps_reports_of_its_own_channel_only() {
    let mine = heal(1, HealOutcome::Healed);
    match ops_input(&mine, 1_000) {
        Some(Input::Report(r)) => assert_eq!(r.heal(), Some(&mine)),
        other => panic!("not a report: {other:?}"),
    }
    assert_eq!(
        ops_input(&heal_on("other_events", 1, HealOutcome::Healed), 1_000),
        None
    );
    // Events pass untouched, and a tap of the ops channel itself sees
    // reports as the raw notifications they are.
    let event = Input::from_notification("rag_events", "rag_events".into(), "x".into(), t0());
    assert!(matches!(event, Some(Input::Notification { .. })));
    let raw = Input::from_notification(OPS_CHANNEL, OPS_CHANNEL.into(), mine.to_json(), t0());
    assert!(matches!(raw, Some(Input::Notification { .. })));
}

#[test]
fn heal_runs_are_rows_with_their_own_counts_never_events() {
    let mut app = app();
    five(&mut app);
    publish(&mut app, &heal(6, HealOutcome::Healed));
    publish(&mut app, &heal(7, HealOutcome::Overflow));
    publish(&mut app, &heal(8, HealOutcome::NoSockets));
    let newer = heal(9, HealOutcome::Healed).to_json().replace(
        &format!("\"v\":{OPS_VERSION}"),
        &format!("\"v\":{}", OPS_VERSION + 1),
    );
    let unknown = Input::from_notification("rag_events", OPS_CHANNEL.into(), newer, at(9_000));
    update(&mut app, Msg::Input(unknown.unwrap()));
    assert_eq!(app.rows.len(), 9);
    let outcomes: Vec<_> = reports(&app).iter().map(|r| r.outcome).collect();
    use HealOutcome::*;
    assert_eq!(outcomes, [Healed, Overflow, NoSockets]);
    assert_eq!(app.counts, [1; 5], "reports are not event types");
    assert_eq!(app.invalid, 0, "reports are not malformed events");
    assert_eq!(app.heals, [1, 1, 1, 0, 0]);
    assert_eq!(app.heal_runs(), 3);
    assert_eq!(app.heal_resyncs(), 1);
    assert_eq!(app.last_heal, Some((12.5, HealOutcome::NoSockets)));
    assert_eq!(app.unknown_reports, 1);
    assert_eq!(app.received, 9);
    assert_eq!(selected_kind(&app).as_deref(), Some("ops?"));
    match &app.rows.back().unwrap().entry {
        Entry::Report(r) => assert!(matches!(r.kind, ReportKind::Unknown { v: Some(2), .. })),
        other => panic!("{other:?}"),
    }
    // The sparkline counts events only.
    assert_eq!(app.spark.iter().sum::<u64>(), 5);
    // `c` starts every count afresh.
    chr(&mut app, 'c');
    assert_eq!(app.heal_runs(), 0);
    assert_eq!(app.last_heal, None);
    assert_eq!(app.unknown_reports, 0);
}

#[test]
fn filters_show_and_hide_heal_rows() {
    let mut app = app();
    five(&mut app);
    publish(&mut app, &heal(6, HealOutcome::Healed));
    publish(&mut app, &heal(7, HealOutcome::Failed));
    update(&mut app, note("not json", at(8_000)));
    let shown = |app: &super::app::App| app.matches.len();
    update(&mut app, Msg::EditFilter(super::filter::FilterField::Kind));
    typed(&mut app, "heal");
    assert_eq!(shown(&app), 2);
    assert_eq!(selected_kind(&app).as_deref(), Some("heal"));
    update(&mut app, Msg::InputClear);
    typed(&mut app, "!");
    assert_eq!(shown(&app), 8, "a lone ! filters nothing yet");
    typed(&mut app, "heal");
    assert_eq!(shown(&app), 6, "everything but heal runs");
    update(&mut app, Msg::InputClear);
    typed(&mut app, "invalid");
    assert_eq!(shown(&app), 1, "a report is never invalid");
    update(&mut app, Msg::InputClear);
    typed(&mut app, "!invalid");
    assert_eq!(shown(&app), 7);
    update(&mut app, Msg::InputClear);
    typed(&mut app, "document");
    assert_eq!(shown(&app), 2, "an event type hides heal runs");
    key(&mut app, KeyCode::Enter);
    // A heal run spans users: a user filter hides it.
    key(&mut app, KeyCode::Esc);
    chr(&mut app, 'u');
    typed(&mut app, "1111");
    assert_eq!(shown(&app), 3);
    key(&mut app, KeyCode::Esc);
    // The text filter reads the raw report.
    chr(&mut app, '/');
    typed(&mut app, "statement timeout");
    assert_eq!(shown(&app), 1);
    assert_eq!(selected_kind(&app).as_deref(), Some("heal"));
}

#[test]
fn a_paused_tap_counts_heal_arrivals_and_count_includes_them() {
    let mut app = app();
    five(&mut app);
    chr(&mut app, ' ');
    publish(&mut app, &heal(6, HealOutcome::Healed));
    assert_eq!(app.new_count, 1);
    let (mut app, _) = app_with(&TapOptions {
        count: Some(2),
        ..opts()
    });
    send(
        &mut app,
        &envelope(1, USER_A, EventType::DocumentCreated),
        1,
    );
    assert_eq!(
        publish(&mut app, &heal(2, HealOutcome::Healed)),
        Some(Effect::Quit)
    );
}

#[test]
fn save_writes_heal_runs_as_report_records() {
    let mut app = app();
    send(
        &mut app,
        &envelope(1, USER_A, EventType::DocumentCreated),
        7,
    );
    let run = heal(2, HealOutcome::Overflow);
    publish(&mut app, &run);
    let mut out = Vec::new();
    assert_eq!(app.write_jsonl(&mut out).unwrap(), 2);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[0].get("op"), None);
    assert_eq!(lines[1]["op"], "bridge.heal");
    assert_eq!(lines[1]["channel"], "ragctl_ops");
    assert_eq!(lines[1]["received_at"], "2026-11-28T10:00:02.003Z");
    assert_eq!(
        serde_json::from_value::<HealReport>(lines[1]["heal"].clone()).unwrap(),
        run
    );
    assert_eq!(lines[1]["raw"], run.to_json());
    assert_eq!(lines[1].get("valid"), None);
}

#[tokio::test]
async fn jsonl_mode_prints_heal_runs_as_their_own_records() {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let run = heal(1, HealOutcome::Healed);
    tx.send(ops_input(&run, 1_002).unwrap()).await.unwrap();
    tx.send(notification("{\"v\":9}", at(1_500))).await.unwrap();
    tx.send(notification("never read: --count stops first", at(3_000)))
        .await
        .unwrap();
    let mut out = Vec::new();
    run_jsonl(rx, &mut out, Some(2)).await.unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "a heal run counts towards --count");
    let mut keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["channel", "heal", "op", "raw", "received_at"]);
    assert_eq!(lines[0]["op"], "bridge.heal");
    assert_eq!(lines[0]["heal"]["users"], 20);
    assert_eq!(
        serde_json::from_value::<HealReport>(lines[0]["heal"].clone()).unwrap(),
        run
    );
    assert_eq!(lines[1]["reason"], "unknown_version");
    drop(tx);
}

// ---- styles and screens ----------------------------------------------------

#[test]
fn outcomes_are_coloured_by_tone_and_not_under_no_color() {
    let mut app = app();
    status(&mut app, 2);
    publish(&mut app, &heal(1, HealOutcome::Healed));
    publish(&mut app, &heal(2, HealOutcome::Overflow));
    publish(&mut app, &heal(3, HealOutcome::Disabled));
    let buf = buffer(&app);
    let x = |y: u16, needle: &str| -> u16 {
        (0..buf.area.width)
            .find(|x| {
                let rest: String = (*x..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect();
                rest.starts_with(needle)
            })
            .unwrap()
    };
    for (needle, color) in [
        ("healed", Color::Green),
        ("overflow", Color::Red),
        ("disabled", Color::DarkGray),
    ] {
        let y = row_of(&buf, &format!("{needle} "));
        assert_eq!(buf[(x(y, needle), y)].fg, color, "{needle}");
        // The rest of a heal row is cyan, apart from events.
        assert_eq!(buf[(x(y, "heal"), y)].fg, Color::Cyan, "{needle}");
    }
    app.color = false;
    key(&mut app, KeyCode::Enter);
    let buf = buffer(&app);
    assert!(row_of(&buf, "HEAL disabled") > 0);
    for cell in buf.content() {
        assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "NO_COLOR");
        let m = cell.modifier - ratatui::style::Modifier::REVERSED;
        assert!(m.is_empty(), "NO_COLOR: only reverse video, got {m:?}");
    }
}

#[test]
fn screen_heal_rows_and_status() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    publish(&mut app, &heal(6, HealOutcome::Healed));
    publish(&mut app, &heal(7, HealOutcome::Overflow));
    send(
        &mut app,
        &envelope(8, USER_A, EventType::JobStatusUpdated),
        4,
    );
    let mut idle = heal(9, HealOutcome::NoSockets);
    (idle.users, idle.sockets, idle.rows, idle.frames) = (0, 0, 0, 0);
    idle.duration_ms = 0.4;
    publish(&mut app, &idle);
    let newer = r#"{"v":2,"op":"bridge.heal","channel":"rag_events"}"#;
    let unknown =
        Input::from_notification("rag_events", OPS_CHANNEL.into(), newer.into(), at(9_500));
    update(&mut app, Msg::Input(unknown.unwrap()));
    let screen = render(&app);
    assert!(screen.contains("ops?"), "{screen}");
    assert!(
        screen.contains(" heals 3 (1 resync) · last 0.4ms no_sockets · ops? 1 "),
        "{screen}"
    );
    assert!(screen.contains("heal 10:00:03→10:00:05"), "{screen}");
    assert!(screen.contains("180 rows 190 frames 23 sock"), "{screen}");
    assert!(screen.contains("invalid 0"), "{screen}");
    insta::assert_snapshot!("heal_rows", screen);
}

#[test]
fn screen_heal_detail() {
    let mut app = app();
    status(&mut app, 2);
    five(&mut app);
    publish(&mut app, &heal(6, HealOutcome::Failed));
    key(&mut app, KeyCode::Enter);
    let screen = render(&app);
    assert!(
        screen.contains("HEAL failed — the query failed: realtime.resync went out instead"),
        "{screen}"
    );
    assert!(
        screen.contains("error: canceling statement due to statement timeout"),
        "{screen}"
    );
    insta::assert_snapshot!("heal_detail", screen);
    // The raw view shows the exact payload.
    chr(&mut app, 'r');
    let screen = render(&app);
    let raw = heal(6, HealOutcome::Failed).to_json();
    assert!(
        screen.contains(&format!("raw NOTIFY payload · {} bytes", raw.len())),
        "{screen}"
    );
    assert!(screen.contains(&raw[..100]), "{screen}");
}
