//! What the terminal printers share: whether to colour at all, and which
//! tone a status gets. `ws-client` paints tones as ANSI codes, `tap` as
//! ratatui colours; the mapping from status to tone is this one.

use std::io::IsTerminal;

/// True when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Colour on `stream`: it is a terminal and `NO_COLOR` is unset.
pub fn color_for(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && !no_color()
}

/// How a status reads at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Done and well: parsed, ingested, success, completed.
    Good,
    /// Failed: error, failed.
    Bad,
    /// Under way: parsing, ingesting, running, pending.
    Busy,
    /// Anything else (queued, uploaded, unknown).
    Other,
}

/// The tone of a document, job or message status.
pub fn status_tone(status: &str) -> Tone {
    match status {
        "parsed" | "ingested" | "success" | "completed" => Tone::Good,
        "error" | "failed" => Tone::Bad,
        "parsing" | "ingesting" | "running" | "pending" => Tone::Busy,
        _ => Tone::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_the_same_in_both_printers() {
        let tones = |list: &[&str]| list.iter().map(|s| status_tone(s)).collect::<Vec<_>>();
        use Tone::*;
        // Document, job and message statuses of the event contract.
        assert_eq!(
            tones(&[
                "uploaded",
                "parsing",
                "parsed",
                "ingesting",
                "ingested",
                "error"
            ]),
            [Other, Busy, Good, Busy, Good, Bad]
        );
        assert_eq!(
            tones(&["queued", "running", "success", "failed"]),
            [Other, Busy, Good, Bad]
        );
        assert_eq!(tones(&["pending", "completed", "error"]), [Busy, Good, Bad]);
    }
}
