//! One progress line on stderr; every phase reports through it.

pub(super) fn progress(line: &str) {
    eprintln!("bench: {line}");
}
