//! Splitting extracted text into overlapping chunks for embedding.

mod plain;
mod sections;
#[cfg(test)]
mod tests_sections;

pub use plain::chunk_plain;
pub use sections::PATH_SEPARATOR;

/// Whether `line` is a heading line (`#` to `######`, a space, a title of
/// at most 200 chars): what starts a section.
pub fn is_heading_line(line: &str) -> bool {
    sections::heading(line.trim_end()).is_some()
}

/// Splits extracted text into chunks of at most `size` characters.
///
/// A document with heading lines (`# Title` … `###### Title`, which
/// extraction emits for Markdown and HTML headings) is split by section:
/// every chunk's first line is its section's heading path (`Install ›
/// Linux`), consecutive small sections share a chunk (each behind its own
/// path line, so no section starts mid-chunk without its heading), and a
/// long section is split as below with its path repeated on every piece.
/// Text without headings is split as [`chunk_plain`] describes.
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<String> {
    match sections::sections(text) {
        Some(secs) => sections::chunk_sections(&secs, size, overlap),
        None => chunk_plain(text, size, overlap),
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::plain::chunk_ranges;
    use super::*;

    const VIETNAMESE: &str = "Chính sách nghỉ phép của công ty áp dụng cho tất cả nhân viên. \
        Mỗi nhân viên được hưởng mười hai ngày nghỉ phép có lương mỗi năm. \
        Đơn xin nghỉ phải được gửi trước ít nhất ba ngày làm việc.\n\n\
        Trường hợp khẩn cấp, hãy liên hệ trực tiếp với quản lý của bạn. \
        Ngày nghỉ không sử dụng sẽ được chuyển sang quý đầu tiên của năm sau. \
        Việc nghỉ ốm kéo dài hơn hai ngày cần có giấy xác nhận của bác sĩ.";

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    /// Every non-whitespace char of `text` lies inside some chunk range, and
    /// ranges are in order, on char boundaries, and match the returned text.
    fn assert_covers(text: &str, size: usize, overlap: usize) -> Vec<Range<usize>> {
        let ranges = chunk_ranges(text, size, overlap);
        let chunks = chunk_text(text, size, overlap);
        assert_eq!(ranges.len(), chunks.len());
        let mut covered = vec![false; text.len()];
        let mut prev_start = None;
        for (r, chunk) in ranges.iter().zip(&chunks) {
            assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
            assert_eq!(&text[r.clone()], chunk);
            assert!(!chunk.trim().is_empty());
            assert_eq!(chunk.trim(), chunk, "chunk not trimmed: {chunk:?}");
            assert!(
                chars(chunk) <= size.max(1),
                "{} > {size}: {chunk:?}",
                chars(chunk)
            );
            assert!(prev_start < Some(r.start), "chunks out of order");
            prev_start = Some(r.start);
            covered[r.clone()].iter_mut().for_each(|c| *c = true);
        }
        for (i, c) in text.char_indices() {
            assert!(
                c.is_whitespace() || covered[i],
                "char {c:?} at byte {i} not in any chunk"
            );
        }
        ranges
    }

    #[test]
    fn short_text_is_one_trimmed_chunk() {
        assert_eq!(chunk_text("  hello world \n", 100, 10), vec!["hello world"]);
    }

    #[test]
    fn empty_or_blank_text_has_no_chunks() {
        assert!(chunk_text("", 100, 10).is_empty());
        assert!(chunk_text(" \n\n\t ", 100, 10).is_empty());
    }

    #[test]
    fn prefers_paragraph_breaks() {
        let text = "First paragraph is here. It has two sentences.\n\n\
                    Second paragraph follows with more words in it.";
        let chunks = chunk_text(text, 70, 0);
        assert_eq!(
            chunks,
            vec![
                "First paragraph is here. It has two sentences.",
                "Second paragraph follows with more words in it."
            ]
        );
    }

    #[test]
    fn prefers_sentence_over_word_breaks() {
        let text = "One two three four five. Six seven eight nine ten eleven twelve.";
        let chunks = chunk_text(text, 40, 0);
        assert_eq!(chunks[0], "One two three four five.");
        assert_eq!(chunks[1], "Six seven eight nine ten eleven twelve.");
    }

    #[test]
    fn falls_back_to_word_breaks_and_never_splits_words() {
        let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let ranges = assert_covers(&text, 50, 10);
        for (i, r) in ranges.iter().enumerate() {
            assert!(
                r.start == 0 || text[..r.start].ends_with(' '),
                "starts mid-word"
            );
            assert!(
                r.end == text.len() || text[r.end..].starts_with(' '),
                "ends mid-word"
            );
            // Only the remainder may be shorter than half the window.
            let last = i + 1 == ranges.len();
            assert!(last || chars(&text[r.clone()]) >= 25, "chunk too small");
        }
    }

    #[test]
    fn consecutive_chunks_overlap_by_about_overlap_chars() {
        let words: Vec<String> = (0..300).map(|i| format!("w{i:03}")).collect();
        let text = words.join(" "); // 4-char words, 5-char period
        let (size, overlap) = (60, 20);
        let ranges = assert_covers(&text, size, overlap);
        assert!(ranges.len() > 10);
        for pair in ranges.windows(2) {
            let shared = pair[0].end.saturating_sub(pair[1].start);
            // Word alignment may shorten the overlap by up to one word.
            assert!(
                (overlap - 5..=overlap).contains(&shared),
                "overlap {shared}"
            );
        }
    }

    #[test]
    fn overlap_is_dropped_rather_than_starting_mid_word() {
        assert_eq!(chunk_text("hello world", 5, 1), vec!["hello", "world"]);
        let text = "tiny supercalifragilistic words here";
        let ranges = assert_covers(text, 25, 5);
        for r in &ranges {
            assert!(
                r.start == 0 || text[..r.start].ends_with(' '),
                "{:?}",
                &text[r.clone()]
            );
        }
    }

    #[test]
    fn zero_overlap_chunks_are_disjoint() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
        let ranges = assert_covers(text, 20, 0);
        for pair in ranges.windows(2) {
            assert!(pair[0].end <= pair[1].start);
        }
    }

    #[test]
    fn vietnamese_multibyte_text_splits_on_char_boundaries() {
        assert!(
            VIETNAMESE.len() > chars(VIETNAMESE),
            "fixture must be multibyte"
        );
        for (size, overlap) in [(80, 20), (50, 10), (7, 3), (1, 0)] {
            let ranges = assert_covers(VIETNAMESE, size, overlap);
            assert!(ranges.len() > 1, "size {size}");
        }
        // The first chunk ends on a sentence boundary within its window.
        let chunks = chunk_text(VIETNAMESE, 80, 20);
        assert_eq!(
            chunks[0],
            "Chính sách nghỉ phép của công ty áp dụng cho tất cả nhân viên."
        );
        // The paragraph break is honoured when it falls inside the window.
        let chunks = chunk_text(VIETNAMESE, 250, 0);
        assert!(chunks[0].ends_with("ba ngày làm việc."), "{:?}", chunks[0]);
        assert!(
            chunks[1].starts_with("Trường hợp khẩn cấp"),
            "{:?}",
            chunks[1]
        );
    }

    #[test]
    fn text_without_spaces_is_hard_cut_on_char_boundaries() {
        let text = "日本語のテキストには空白がありません".repeat(5);
        let ranges = assert_covers(&text, 16, 4);
        for pair in ranges.windows(2) {
            assert_eq!(text[pair[1].start..pair[0].end].chars().count(), 4);
        }
        let emoji = "👍🏽".repeat(30); // 4-byte chars and a modifier
        assert_covers(&emoji, 7, 2);
    }

    #[test]
    fn degenerate_parameters_do_not_panic_or_loop() {
        let text = "some words to split into many tiny chunks";
        // overlap >= size is treated as size / 2.
        assert_eq!(chunk_ranges(text, 10, 10), chunk_ranges(text, 10, 5));
        assert_eq!(
            chunk_ranges(text, 10, usize::MAX),
            chunk_ranges(text, 10, 5)
        );
        assert_covers(text, 10, 99);
        // size 0 is treated as 1.
        assert_eq!(chunk_text("abc", 0, 0), vec!["a", "b", "c"]);
        assert_covers(text, 0, 0);
        assert_covers(text, usize::MAX, usize::MAX);
        // Overlap of size - 1 still makes progress.
        assert_covers(text, 6, 5);
    }

    #[test]
    fn trailing_whitespace_does_not_create_a_duplicate_chunk() {
        let text = format!("{}{}", "abcd ".repeat(4), " ".repeat(40));
        // Without the check the overlap tail "abcd" would become a 4th chunk.
        assert_eq!(chunk_text(&text, 10, 4), vec!["abcd abcd"; 3]);
    }
}
