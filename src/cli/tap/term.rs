//! The terminal and the event loop: raw mode and the alternate screen (put
//! back on exit, error and panic), keys read on a thread of their own,
//! inputs drained in bounded batches, and redraws capped at ~30 fps.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use crossterm::terminal::{
    Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

use super::app::{App, TapOptions, update};
use super::msg::{Effect, Msg};
use super::source::{Input, SourceStatus};
use super::view;

/// Inputs applied before the screen gets a chance to redraw.
const MAX_DRAIN: usize = 2_000;
/// Shortest time between two frames (~30 fps).
const FRAME: Duration = Duration::from_millis(33);
/// Clock tick: sparkline buckets, toasts, fragment expiry.
const TICK: Duration = Duration::from_millis(250);
/// How long the key thread waits for a terminal event before checking
/// whether it should stop.
const KEY_POLL: Duration = Duration::from_millis(50);

/// Whether the terminal is in raw mode on the alternate screen (so the
/// panic hook knows whether there is anything to restore).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Restores the terminal before the previous hook prints the panic, so the
/// message lands on the normal screen.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Restores the terminal when the loop ends, however it ends.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

fn spawn_keys(tx: mpsc::Sender<TermEvent>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(KEY_POLL) {
                Ok(true) => match event::read() {
                    Ok(TermEvent::Key(k)) if k.kind == KeyEventKind::Release => {}
                    Ok(ev @ (TermEvent::Key(_) | TermEvent::Resize(..))) => {
                        if tx.blocking_send(ev).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                Ok(false) => {}
                Err(_) => break,
            }
        }
    })
}

pub async fn run(
    mut rx: mpsc::Receiver<Input>,
    opts: TapOptions,
    color: bool,
) -> anyhow::Result<()> {
    let mut app = App::new(&opts, Instant::now(), Utc::now());
    app.color = color;
    install_panic_hook();
    enable_raw_mode().context("cannot put the terminal in raw mode")?;
    ACTIVE.store(true, Ordering::SeqCst);
    let guard = Guard;
    // `Terminal::clear` would ask the terminal for the cursor position,
    // which not every terminal answers; the fresh alternate screen only
    // needs wiping.
    execute!(
        io::stdout(),
        EnterAlternateScreen,
        cursor::Hide,
        Clear(ClearType::All)
    )?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let size = terminal.size()?;
    update(
        &mut app,
        Msg::Resize {
            width: size.width,
            height: size.height,
        },
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (key_tx, mut key_rx) = mpsc::channel(64);
    let keys = spawn_keys(key_tx, stop.clone());
    let result = event_loop(&mut terminal, &mut app, &mut rx, &mut key_rx).await;
    stop.store(true, Ordering::Relaxed);
    drop(key_rx);
    let _ = tokio::task::spawn_blocking(move || keys.join()).await;
    drop(terminal);
    drop(guard);
    result
}

type Term = Terminal<CrosstermBackend<io::Stdout>>;

async fn event_loop(
    terminal: &mut Term,
    app: &mut App,
    rx: &mut mpsc::Receiver<Input>,
    key_rx: &mut mpsc::Receiver<TermEvent>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut dirty = true;
    let mut next_frame = tokio::time::Instant::now();
    let mut source_open = true;
    loop {
        if dirty && tokio::time::Instant::now() >= next_frame {
            terminal.draw(|f| view::view(app, f))?;
            dirty = false;
            next_frame = tokio::time::Instant::now() + FRAME;
        }
        let effects = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            key = key_rx.recv() => on_key(app, key)?,
            input = rx.recv(), if source_open => {
                source_open = input.is_some();
                on_input(app, rx, input)
            }
            _ = tick.tick() => update(app, Msg::Tick(Instant::now())).into_iter().collect(),
            _ = tokio::time::sleep_until(next_frame), if dirty => continue,
        };
        dirty = true;
        if apply(terminal, app, effects)? {
            return Ok(());
        }
    }
}

fn on_key(app: &mut App, key: Option<TermEvent>) -> anyhow::Result<Vec<Effect>> {
    let msg = match key {
        Some(TermEvent::Key(k)) => Msg::Key(k),
        Some(TermEvent::Resize(width, height)) => Msg::Resize { width, height },
        Some(_) => return Ok(Vec::new()),
        None => anyhow::bail!("lost the terminal's input"),
    };
    Ok(update(app, msg).into_iter().collect())
}

/// Applies `input` and whatever else is queued, up to [`MAX_DRAIN`]; the
/// end of the source (`None`) shows as a disconnection.
fn on_input(app: &mut App, rx: &mut mpsc::Receiver<Input>, input: Option<Input>) -> Vec<Effect> {
    let Some(input) = input else {
        let status = SourceStatus {
            connected: false,
            last_error: Some("the listener stopped".into()),
            ..app.status.clone()
        };
        return update(app, Msg::Input(Input::Status(status)))
            .into_iter()
            .collect();
    };
    let mut effects: Vec<Effect> = update(app, Msg::Input(input)).into_iter().collect();
    let mut drained = 1;
    while drained < MAX_DRAIN && !effects.contains(&Effect::Quit) {
        let Ok(input) = rx.try_recv() else { break };
        effects.extend(update(app, Msg::Input(input)));
        drained += 1;
    }
    effects
}

/// Performs the effects; true when the loop should end.
fn apply(terminal: &mut Term, app: &mut App, effects: Vec<Effect>) -> anyhow::Result<bool> {
    for effect in effects {
        match effect {
            Effect::Quit => {
                // Leave with the last state on screen (e.g. `--count`).
                terminal.draw(|f| view::view(app, f))?;
                return Ok(true);
            }
            Effect::Save(path) => {
                let saved = save(app, &path);
                update(app, Msg::Saved(saved));
            }
        }
    }
    Ok(false)
}

/// Writes the buffer to `path` through a temporary file, so a failed save
/// leaves no half-written file behind.
fn save(app: &App, path: &Path) -> Result<(PathBuf, usize), String> {
    let tmp = path.with_extension("jsonl.tmp");
    let write = || -> io::Result<usize> {
        let file = File::create(&tmp)?;
        let rows = app.write_jsonl(BufWriter::new(&file))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(rows)
    };
    match write() {
        Ok(rows) => Ok((path.to_path_buf(), rows)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!("{}: {e}", path.display()))
        }
    }
}
