//! Heading-aware chunking: a document's `#`-heading lines (Markdown
//! headings, and HTML `h1`–`h6`, which extraction turns into such lines)
//! split it into sections; every chunk starts with the heading path of its
//! section on its own line (`Install › Linux`), so a passage knows where it
//! comes from, for BM25, embeddings and the reader alike.

use super::plain::chunk_plain;

/// Joins the titles of a heading path.
pub const PATH_SEPARATOR: &str = " › ";
/// A `#` line longer than this is prose, not a heading.
const MAX_HEADING_CHARS: usize = 200;

/// A section: its heading path (empty before the first heading) and body.
#[derive(Debug, PartialEq)]
pub(super) struct Section<'a> {
    pub path: String,
    pub body: &'a str,
}

/// The title of a heading line (`## Title` → level 2, "Title").
pub(super) fn heading(line: &str) -> Option<(usize, &str)> {
    let hashes = line.len() - line.trim_start_matches('#').len();
    let rest = &line[hashes..];
    let title = rest.strip_prefix(' ')?.trim();
    let ok = (1..=6).contains(&hashes)
        && !title.is_empty()
        && title.chars().count() <= MAX_HEADING_CHARS;
    ok.then_some((hashes, title.trim_end_matches(['#', ' '])))
        .filter(|(_, t)| !t.is_empty())
}

/// Splits `text` at its heading lines; `None` when it has none.
pub(super) fn sections(text: &str) -> Option<Vec<Section<'_>>> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, &str)> = Vec::new();
    let mut body_start = 0;
    let mut path = String::new();
    let mut offset = 0;
    let mut any = false;
    for line in text.split_inclusive('\n') {
        if let Some((level, title)) = heading(line.trim_end()) {
            any = true;
            out.push(Section {
                path: std::mem::take(&mut path),
                body: text[body_start..offset].trim(),
            });
            stack.retain(|&(l, _)| l < level);
            stack.push((level, title));
            path = stack
                .iter()
                .map(|&(_, t)| t)
                .collect::<Vec<_>>()
                .join(PATH_SEPARATOR);
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    out.push(Section {
        path,
        body: text[body_start..].trim(),
    });
    out.retain(|s| !s.body.is_empty());
    any.then_some(out)
}

/// Chunks of a document with headings: consecutive small sections share a
/// chunk (each with its own path line); a long one is split with overlap
/// and every piece repeats its path. Never more than `size` chars.
pub(super) fn chunk_sections(sections: &[Section<'_>], size: usize, overlap: usize) -> Vec<String> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut pack = String::new();
    for s in sections {
        let block = with_path(&s.path, s.body);
        let sep = if pack.is_empty() { 0 } else { 2 };
        if chars(&pack) + sep + chars(&block) <= size {
            if sep > 0 {
                pack.push_str("\n\n");
            }
            pack.push_str(&block);
            continue;
        }
        if !pack.is_empty() {
            out.push(std::mem::take(&mut pack));
        }
        if chars(&block) <= size {
            pack = block;
            continue;
        }
        out.extend(split_long(&s.path, s.body, size, overlap));
    }
    if !pack.is_empty() {
        out.push(pack);
    }
    out
}

/// A long section in pieces, each `path\npiece`; the path is cut to half
/// the size at most so the body keeps room.
fn split_long(path: &str, body: &str, size: usize, overlap: usize) -> Vec<String> {
    if path.is_empty() {
        return chunk_plain(body, size, overlap);
    }
    let path: String = path.chars().take(size / 2).collect();
    let path = path.trim_end();
    let budget = size.saturating_sub(chars(path) + 1).max(1);
    let overlap = overlap.min(budget / 2);
    chunk_plain(body, budget, overlap)
        .into_iter()
        .map(|piece| with_path(path, &piece))
        .collect()
}

fn with_path(path: &str, body: &str) -> String {
    if path.is_empty() {
        body.to_string()
    } else {
        format!("{path}\n{body}")
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}
