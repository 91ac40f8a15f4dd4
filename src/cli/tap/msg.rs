//! The messages `update` takes and the effects it asks for.

use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::KeyEvent;

use super::filter::FilterField;
use super::source::Input;

/// Everything `update` can do, keys first mapped to these.
#[derive(Debug)]
pub enum Msg {
    /// A raw key, mapped to one of the others by `keymap` according to
    /// the mode.
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
