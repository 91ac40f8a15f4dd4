//! Headings survive extraction as `# Title` lines (the chunker's section
//! marks, see `rag::chunk`); code that merely looks like one (`# comment`,
//! `#  define X`) is indented by a space so it is not taken for a heading.

use std::borrow::Cow;

use crate::rag::chunk::is_heading_line;

/// `# ` … `###### `, by heading level (1–6).
pub(super) fn marker(level: usize) -> String {
    format!("{} ", "#".repeat(level.clamp(1, 6)))
}

/// `code` with every line that would read as a heading indented by one space.
pub(super) fn escape_code(code: &str) -> Cow<'_, str> {
    if !code.split('\n').any(is_heading_line) {
        return Cow::Borrowed(code);
    }
    let lines: Vec<Cow<str>> = code
        .split('\n')
        .map(|l| match is_heading_line(l) {
            true => Cow::Owned(format!(" {l}")),
            false => Cow::Borrowed(l),
        })
        .collect();
    Cow::Owned(lines.join("\n"))
}

/// `html` with `# `… inserted at the start of each `h1`–`h6` element's text
/// (html2text's plain decorator drops heading marks), and the heading-like
/// lines of `<pre>` blocks escaped.
pub(super) fn mark_html(html: &str) -> Cow<'_, str> {
    let lower = html.to_ascii_lowercase();
    if !lower.contains("<h") && !lower.contains("<pre") {
        return Cow::Borrowed(html);
    }
    let mut out = String::with_capacity(html.len() + 64);
    let mut at = 0;
    while let Some(rel) = lower[at..].find('<') {
        let start = at + rel;
        let Some(end) = tag_end(&lower, start) else {
            break;
        };
        out.push_str(&html[at..end]);
        let tag = &lower[start + 1..end];
        at = end;
        if let Some(level) = heading_level(tag) {
            out.push_str(&marker(level));
        } else if is_open(tag, "pre") {
            let close = lower[at..].find("</pre").map_or(html.len(), |i| at + i);
            out.push_str(&escape_code(&html[at..close]));
            at = close;
        }
    }
    out.push_str(&html[at..]);
    Cow::Owned(out)
}

/// Byte index just past the `>` closing the tag opened at `start`.
fn tag_end(lower: &str, start: usize) -> Option<usize> {
    if lower[start..].starts_with("<!--") {
        return lower[start..].find("-->").map(|i| start + i + 3);
    }
    let mut quote = None;
    for (i, c) in lower[start..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(start + i + 1),
            _ => {}
        }
    }
    None
}

/// `h1`…`h6` (with or without attributes) → its level.
fn heading_level(tag: &str) -> Option<usize> {
    let b = tag.as_bytes();
    let level = match (b.first(), b.get(1)) {
        (Some(b'h'), Some(d @ b'1'..=b'6')) => usize::from(d - b'0'),
        _ => return None,
    };
    matches!(b.get(2), None | Some(b'>' | b' ' | b'\t' | b'\n' | b'\r')).then_some(level)
}

fn is_open(tag: &str, name: &str) -> bool {
    tag.strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['>', ' ', '\t', '\n', '\r']))
}
