//! Chunking text without headings: windows of at most `size` chars that
//! end at the best break. A leaf; `sections` splits each section with it.

use std::ops::Range;

/// Splits `text` into chunks of at most `size` characters (Unicode scalar
/// values, never bytes), trimmed of surrounding whitespace and never empty.
///
/// Each chunk ends at the last paragraph break (blank line) in its window,
/// else the last sentence end, else the last whitespace; only text without
/// any of those is cut mid-word. Breaks in the first half of the window (or
/// within its first `overlap` chars, if more) are ignored, so chunks stay
/// reasonably full and every step moves forward.
///
/// The next chunk starts about `overlap` characters before the previous one
/// ended, moved forward to the next word start so it never begins mid-word;
/// the actual overlap is therefore at most `overlap`. If the overlap region
/// holds no word start (one long word) the overlap is dropped, except in text
/// without spaces (e.g. CJK), where the overlap is kept as a character cut.
///
/// Degenerate parameters are clamped rather than rejected: `size == 0` is
/// treated as 1, and `overlap >= size` as `size / 2`.
pub fn chunk_plain(text: &str, size: usize, overlap: usize) -> Vec<String> {
    chunk_ranges(text, size, overlap)
        .into_iter()
        .map(|r| text[r].to_owned())
        .collect()
}

/// Byte ranges of the chunks in `text`; always on char boundaries.
pub(super) fn chunk_ranges(text: &str, size: usize, overlap: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    let overlap = if overlap >= size { size / 2 } else { overlap };
    // A chunk is at least `overlap + 1` chars so every step moves forward.
    let min_len = (size / 2).max(overlap + 1).min(size);

    let mut ranges = Vec::new();
    // (byte offset relative to the window start, char) for size + 1 chars:
    // the extra one tells whether the window's end falls on whitespace.
    let mut chars: Vec<(usize, char)> = Vec::with_capacity(size.saturating_add(1).min(1 << 16));
    let mut start = skip_whitespace(text, 0);
    while start < text.len() {
        let window = &text[start..];
        chars.clear();
        chars.extend(window.char_indices().take(size.saturating_add(1)));

        if chars.len() <= size {
            // The remainder fits: last chunk.
            push_trimmed(&mut ranges, text, start, text.len());
            break;
        }

        let end = best_break(&chars, min_len, size);
        let end_byte = start + chars[end].0;
        push_trimmed(&mut ranges, text, start, end_byte);
        if text[end_byte..].trim().is_empty() {
            break;
        }

        let mut next = end - overlap; // >= 1 because end >= min_len > overlap
        if next < end && !chars[next].1.is_whitespace() && !chars[next - 1].1.is_whitespace() {
            // Mid-word: move to the next word start if the overlap has one.
            if let Some(ws) = (next..end).find(|&i| chars[i].1.is_whitespace()) {
                next = ws;
            } else if chars[end].1.is_whitespace() || chars[end - 1].1.is_whitespace() {
                // The chunk ended at a word boundary: start the next one
                // there rather than inside the word before it.
                next = end;
            }
        }
        start = skip_whitespace(text, start + chars[next].0);
    }
    ranges
}

/// Chooses the chunk end (exclusive char index into `chars`) in
/// `min_len..=size`, preferring paragraph, then sentence, then word breaks.
fn best_break(chars: &[(usize, char)], min_len: usize, size: usize) -> usize {
    let (mut para, mut sentence, mut space) = (None, None, None);
    for end in min_len..=size {
        let (_, next) = chars[end];
        let prev = chars[end - 1].1;
        if prev == '\n' && is_blank_line_end(chars, end - 1) {
            para = Some(end);
        }
        if is_sentence_end(prev, next) {
            sentence = Some(end);
        }
        if next.is_whitespace() {
            space = Some(end);
        }
    }
    para.or(sentence).or(space).unwrap_or(size)
}

/// Whether the newline at `nl` closes a blank line ("\n\n", "\n \t\r\n").
fn is_blank_line_end(chars: &[(usize, char)], nl: usize) -> bool {
    chars[..nl]
        .iter()
        .rev()
        .map(|&(_, c)| c)
        .find(|c| !matches!(c, ' ' | '\t' | '\r'))
        == Some('\n')
}

fn is_sentence_end(prev: char, next: char) -> bool {
    match prev {
        '.' | '!' | '?' | '…' => next.is_whitespace(),
        // CJK full-width punctuation is not followed by a space.
        '。' | '！' | '？' => true,
        _ => false,
    }
}

fn skip_whitespace(text: &str, from: usize) -> usize {
    let rest = &text[from..];
    from + (rest.len() - rest.trim_start().len())
}

fn push_trimmed(ranges: &mut Vec<Range<usize>>, text: &str, start: usize, end: usize) {
    let trimmed_end = start + text[start..end].trim_end().len();
    if trimmed_end > start {
        ranges.push(start..trimmed_end);
    }
}
