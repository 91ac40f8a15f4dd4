//! Keys to messages. What a key does depends on what is on screen: the
//! help overlay, a filter being typed, or the table.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::filter::FilterField;
use super::msg::Msg;

/// What is taking the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Help,
    /// A filter of this field is being typed.
    Editing(FilterField),
    Normal,
}

/// Maps a key to a message according to the mode.
pub fn keymap(mode: Mode, key: KeyEvent) -> Option<Msg> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Msg::Quit);
    }
    match mode {
        Mode::Help => help_key(key.code),
        Mode::Editing(field) => editing_key(field, key.code, ctrl),
        Mode::Normal => normal_key(key.code, ctrl),
    }
}

fn help_key(code: KeyCode) -> Option<Msg> {
    match code {
        KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter => Some(Msg::ToggleHelp),
        KeyCode::Char('q') => Some(Msg::Quit),
        _ => None,
    }
}

fn editing_key(field: FilterField, code: KeyCode, ctrl: bool) -> Option<Msg> {
    let kind = field == FilterField::Kind;
    match code {
        KeyCode::Esc => Some(Msg::InputCancel),
        KeyCode::Enter => Some(Msg::InputSubmit),
        KeyCode::Backspace => Some(Msg::InputBackspace),
        KeyCode::Char('u') if ctrl => Some(Msg::InputClear),
        KeyCode::Tab | KeyCode::Down if kind => Some(Msg::InputCycle(true)),
        KeyCode::BackTab | KeyCode::Up if kind => Some(Msg::InputCycle(false)),
        KeyCode::Char(c) if !ctrl => Some(Msg::InputChar(c)),
        _ => None,
    }
}

fn normal_key(code: KeyCode, ctrl: bool) -> Option<Msg> {
    let msg = match code {
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
