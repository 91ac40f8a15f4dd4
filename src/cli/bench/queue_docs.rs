//! The documents of the queue benchmark: small Markdown notes for the
//! honest users, text PDFs for the parse-bound sub-phase, and the CPU bomb.
//! A leaf.

use std::fmt::Write as _;

/// The hostile user's file: 9 levels of forms each drawing the next 10
/// times (fixtures/hostile/xobject-fanout.pdf, 2.4 KB). It spins the parser
/// until its size-scaled CPU budget (the 1 s floor by default) ends it.
pub(super) const BOMB: &[u8] = include_bytes!("../../../fixtures/hostile/xobject-fanout.pdf");

const WORDS: [&str; 16] = [
    "invoice", "travel", "receipt", "budget", "approval", "manager", "policy", "refund", "portal",
    "expense", "review", "payment", "salary", "claim", "finance", "office",
];

/// A line of ten words that differs with `seed`.
fn line(seed: usize) -> String {
    let mut s = String::new();
    for k in 0..10 {
        let w = WORDS[(seed.wrapping_mul(7) + k * 3 + seed / 16) % WORDS.len()];
        let _ = write!(s, "{w} ");
    }
    s.push_str(&format!("#{seed}."));
    s
}

/// An honest user's note, about 2.5 KB: a heading and 40 lines.
pub(super) fn note(doc: usize) -> Vec<u8> {
    let mut s = format!("# Note {doc}\n\n");
    for i in 0..40 {
        s.push_str(&line(doc * 40 + i));
        s.push('\n');
        if i % 8 == 7 {
            s.push('\n');
        }
    }
    s.into_bytes()
}

/// A valid PDF 1.4 of `pages` pages of Helvetica text (40 lines each),
/// with an exact cross-reference table; it parses without error.
pub(super) fn text_pdf(doc: usize, pages: usize) -> Vec<u8> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    let kids: Vec<String> = (0..pages).map(|p| format!("{} 0 R", 4 + 2 * p)).collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objects.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            kids.join(" ")
        )
        .into_bytes(),
    );
    objects.push(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    );
    for p in 0..pages {
        let stream = page_stream(doc * 1000 + p * 40);
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                5 + 2 * p
            )
            .into_bytes(),
        );
        let mut content = format!("<< /Length {} >>\nstream\n", stream.len()).into_bytes();
        content.extend_from_slice(stream.as_bytes());
        content.extend_from_slice(b"endstream");
        objects.push(content);
    }
    assemble(&objects)
}

/// One page: 40 lines, 14 pt apart.
fn page_stream(seed: usize) -> String {
    let mut s = String::from("BT\n/F1 11 Tf\n");
    for i in 0..40 {
        let _ = writeln!(s, "1 0 0 1 72 {} Tm\n({}) Tj", 760 - 14 * i, line(seed + i));
    }
    s.push_str("ET\n");
    s
}

/// Objects 1.. in order, the xref table and the trailer.
fn assemble(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref_at = out.len();
    let mut xref = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for o in offsets {
        let _ = writeln!(xref, "{o:010} 00000 n ");
    }
    let _ = write!(
        xref,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
        objects.len() + 1
    );
    out.extend_from_slice(xref.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_a_few_kb_and_differ() {
        let (a, b) = (note(1), note(2));
        assert!((2_000..4_000).contains(&a.len()), "{}", a.len());
        assert_ne!(a, b);
        assert!(std::str::from_utf8(&a).is_ok());
    }

    #[test]
    fn the_generated_pdf_extracts_its_text() {
        let pdf = text_pdf(3, 2);
        let text = pdf_extract::extract_text_from_mem(&pdf).expect("a valid PDF");
        assert!(text.contains(&line(3000)), "{text}");
        assert!(text.contains(&line(3000 + 40 + 39)), "{text}");
    }

    #[test]
    fn the_bomb_is_the_fixture() {
        assert!(BOMB.starts_with(b"%PDF"));
        assert_eq!(BOMB.len(), 2434);
    }
}
