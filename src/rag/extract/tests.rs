use super::*;

const TXT: &[u8] = include_bytes!("../../../fixtures/documents/handbook.txt");
const MD: &[u8] = include_bytes!("../../../fixtures/documents/handbook.md");
const HTML: &[u8] = include_bytes!("../../../fixtures/documents/handbook.html");
const PDF: &[u8] = include_bytes!("../../../fixtures/documents/handbook.pdf");
const SCANNED_PDF: &[u8] = include_bytes!("../../../fixtures/documents/scanned.pdf");
const BROKEN_PAGE_PDF: &[u8] = include_bytes!("../../../fixtures/documents/broken-page.pdf");
const CORRUPT_PDF: &[u8] = include_bytes!("../../../fixtures/documents/corrupt.pdf");
const PNG: &[u8] = include_bytes!("../../../fixtures/documents/image.png");
const EMPTY: &[u8] = include_bytes!("../../../fixtures/documents/empty.txt");

/// Distinctive word of each fixture (see fixtures/documents/README.md).
const WORDS: [(&str, &[u8], &str); 4] = [
    ("handbook.txt", TXT, "onboarding"),
    ("handbook.md", MD, "vacation"),
    ("handbook.html", HTML, "turnstile"),
    ("handbook.pdf", PDF, "reimbursement"),
];

fn extract_file(name: &str, bytes: &[u8]) -> Result<String, ExtractError> {
    extract_text(bytes, detect_mime(name, None, bytes)?)
}

#[test]
fn detects_fixture_types_by_extension_and_magic() {
    assert_eq!(detect_mime("handbook.txt", None, TXT).unwrap(), TEXT_PLAIN);
    assert_eq!(detect_mime("handbook.md", None, MD).unwrap(), TEXT_MARKDOWN);
    assert_eq!(detect_mime("handbook.html", None, HTML).unwrap(), TEXT_HTML);
    assert_eq!(
        detect_mime("handbook.pdf", None, PDF).unwrap(),
        APPLICATION_PDF
    );
    // Magic wins over a misleading name and declared type.
    assert_eq!(
        detect_mime("notes.txt", Some("text/plain"), PDF).unwrap(),
        APPLICATION_PDF
    );
    // Extension is case-insensitive; a path prefix is ignored.
    assert_eq!(
        detect_mime("dir/README.MD", None, MD).unwrap(),
        TEXT_MARKDOWN
    );
    assert_eq!(
        detect_mime("data.CSV", None, b"a,b\n1,2\n").unwrap(),
        TEXT_PLAIN
    );
    // Text that merely mentions the PDF header is still text.
    let script = b"#!/usr/bin/env python3\n# writes files starting with %PDF-1.4\n";
    assert_eq!(
        detect_mime("make_pdfs.py", None, script).unwrap(),
        TEXT_PLAIN
    );
    // A .pdf name is trusted so that a bad file reports as corrupt.
    assert_eq!(
        detect_mime("x.pdf", None, b"not really").unwrap(),
        APPLICATION_PDF
    );
}

#[test]
fn uses_declared_type_then_sniffs_content() {
    let octet = Some("application/octet-stream");
    assert_eq!(
        detect_mime("upload", Some("text/markdown"), MD).unwrap(),
        TEXT_MARKDOWN
    );
    assert_eq!(
        detect_mime("upload", Some("Text/HTML; charset=UTF-8"), HTML).unwrap(),
        TEXT_HTML
    );
    assert_eq!(
        detect_mime("upload", Some("application/pdf"), b"junk").unwrap(),
        APPLICATION_PDF
    );
    // Generic declared type is ignored: content decides.
    assert_eq!(detect_mime("upload", octet, HTML).unwrap(), TEXT_HTML);
    assert_eq!(detect_mime("upload", octet, TXT).unwrap(), TEXT_PLAIN);
    assert_eq!(
        detect_mime("notes.json", Some("application/json"), b"{\"a\": 1}").unwrap(),
        TEXT_PLAIN
    );
    let err = detect_mime("upload", Some("audio/mpeg"), b"ID3 text").unwrap_err();
    assert!(err.to_string().contains("audio/mpeg"), "{err}");
}

#[test]
fn png_is_unsupported_even_with_a_text_name() {
    for (name, declared) in [
        ("image.png", Some("image/png")),
        ("notes.txt", Some("text/plain")),
    ] {
        let err = detect_mime(name, declared, PNG).unwrap_err();
        assert!(matches!(err, ExtractError::Unsupported(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("PNG image") && msg.contains(name), "{msg}");
    }
}

#[test]
fn office_and_binary_uploads_are_unsupported() {
    let docx = b"PK\x03\x04\x14\x00\x06\x00rest-of-zip";
    let err = detect_mime("report.docx", None, docx).unwrap_err();
    assert!(err.to_string().contains("ZIP archive"), "{err}");
    let err = detect_mime("old.doc", None, b"plain-looking bytes").unwrap_err();
    assert!(
        err.to_string().contains(".doc files are not supported"),
        "{err}"
    );
    let err = detect_mime("blob", None, &[0x01, 0xC3, 0x28, 0xFF]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not UTF-8") && msg.contains("offset 1"),
        "{msg}"
    );
    let err = detect_mime("notes.txt", None, b"abc\x00\x00def").unwrap_err();
    assert!(err.to_string().contains("binary data"), "{err}");
    let err = detect_mime("u16.txt", None, b"\xFF\xFEh\x00i\x00").unwrap_err();
    assert!(err.to_string().contains("UTF-16"), "{err}");
}

#[test]
fn error_messages_are_single_line_and_short() {
    let long_name = format!("{}\nevil\r\t.png", "x".repeat(500));
    let err = detect_mime(&long_name, None, PNG).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains(['\n', '\r', '\t']), "{msg:?}");
    assert!(
        msg.chars().count() < 300,
        "{} chars: {msg}",
        msg.chars().count()
    );
}

#[test]
fn each_fixture_yields_its_own_distinctive_word_only() {
    for (name, bytes, word) in WORDS {
        let text = extract_file(name, bytes).unwrap();
        assert!(
            text.to_lowercase().contains(word),
            "{name} lacks {word}: {text}"
        );
        for (other, _, other_word) in WORDS {
            if other != name {
                assert!(
                    !text.to_lowercase().contains(other_word),
                    "{name} unexpectedly contains {other}'s word {other_word}"
                );
            }
        }
    }
}

#[test]
fn markdown_keeps_text_and_code_but_drops_markup() {
    let text = extract_file("handbook.md", MD).unwrap();
    assert!(
        text.starts_with("# Employee Handbook: Time Off\n\n"),
        "{text}"
    );
    assert!(
        text.contains("receives 25 vacation days per calendar year."),
        "{text}"
    );
    assert!(
        text.contains("Open the HR portal and choose Request leave."),
        "{text}"
    );
    assert!(text.contains("leave_balance = 25 - days_taken"), "{text}");
    assert!(
        text.contains("See the HR portal for your balance."),
        "{text}"
    );
    // Headings stay as `#` lines (the chunker's sections); other markup goes.
    assert!(text.contains("\n\n## Requesting leave\n\n"), "{text}");
    for markup in ["**", "```", "](", "https://", "> Tip"] {
        assert!(!text.contains(markup), "markup {markup:?} left in {text}");
    }
    // List items stay on separate lines.
    assert!(text.contains("short note.\nYour manager"), "{text}");
}

#[test]
fn markdown_tables_and_tasks_become_readable_lines() {
    let md = "| Day | Hours |\n|---|---|\n| Mon | 8 |\n\n- [x] done\n- [ ] todo\n";
    let text = extract_text(md.as_bytes(), TEXT_MARKDOWN).unwrap();
    assert_eq!(text, "Day | Hours\nMon | 8\n\n[x] done\n[ ] todo");
}

#[test]
fn html_nested_too_deep_is_refused_before_parsing() {
    let nested = |n: usize| {
        format!(
            "<html><body>{}deep text{}</body></html>",
            "<div><span>".repeat(n / 2),
            "</span></div>".repeat(n / 2)
        )
    };
    assert_eq!(html_depth(&nested(1000), MAX_HTML_DEPTH), 1000);
    let text = extract_file("ok.html", nested(1000).as_bytes()).unwrap();
    assert!(text.contains("deep text"), "{text}");
    // Far past the limit (the scan stops early): a clear error, at once.
    let err = extract_file("deep.html", nested(200_000).as_bytes()).unwrap_err();
    assert!(
        err.to_string()
            .contains("nested more than 1024 deep; flatten the HTML"),
        "{err}"
    );
}

#[test]
fn html_depth_ignores_optional_end_tags_void_elements_and_script_text() {
    // 5,000 unclosed paragraphs and list items are siblings, not nesting.
    let sloppy = format!(
        "<html><body><ul>{}</ul>{}<br><img src=x></body></html>",
        "<li>item".repeat(5000),
        "<p>para".repeat(5000)
    );
    assert_eq!(html_depth(&sloppy, MAX_HTML_DEPTH), 1);
    assert!(extract_file("sloppy.html", sloppy.as_bytes()).is_ok());
    let script = format!(
        "<html><head><script>var s = '{}';</script></head><body><div>x</div></body></html>",
        "<div>".repeat(5000)
    );
    assert_eq!(html_depth(&script, MAX_HTML_DEPTH), 1);
    assert!(html_depth(std::str::from_utf8(HTML).unwrap(), MAX_HTML_DEPTH) < 20);
}

#[test]
fn html_drops_tags_scripts_and_link_urls() {
    let text = extract_file("handbook.html", HTML).unwrap();
    assert!(text.contains("Employee Handbook: Office Access"), "{text}");
    assert!(text.contains("security badges"), "{text}");
    assert!(
        text.contains("Never lend your badge to a colleague."),
        "{text}"
    );
    for junk in ["<", "analytics", "font-family", "https://", "[1]"] {
        assert!(!text.contains(junk), "{junk:?} left in {text}");
    }
    // h1-h6 become `#` lines.
    assert!(
        text.contains("# Employee Handbook: Office Access\n"),
        "{text}"
    );
    assert!(text.contains("## Lost badges\n"), "{text}");
}

#[test]
fn heading_lookalikes_in_code_are_not_headings() {
    let md = "# Build\n\n```sh\n# install first\nmake\n```\n\nDone.\n";
    let text = extract_text(md.as_bytes(), TEXT_MARKDOWN).unwrap();
    assert_eq!(text, "# Build\n\n # install first\nmake\n\nDone.");
    let html =
        "<h3 class=x>Setup</h3><pre>#  define X 1\n#include &lt;a.h&gt;</pre><p>a &lt; b</p>";
    let text = extract_text(html.as_bytes(), TEXT_HTML).unwrap();
    assert!(text.starts_with("### Setup\n"), "{text}");
    assert!(text.contains(" #  define X 1\n#include <a.h>"), "{text}");
    assert!(text.contains("a < b"), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| crate::rag::chunk::is_heading_line(l))
        .collect();
    assert_eq!(lines, vec!["### Setup"]);
}

#[test]
fn html_heading_marks_skip_look_alike_tags_and_comments() {
    let html = "<html><head><title>T</title></head><body><header>top</header><!-- <h1>no</h1> -->\
                <hr><h1>Real</h1><p>body</p></body></html>";
    let text = extract_text(html.as_bytes(), TEXT_HTML).unwrap();
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(heads, vec!["# Real"], "{text}");
}

#[test]
fn pdf_text_comes_back_from_both_pages() {
    let text = extract_file("handbook.pdf", PDF).unwrap();
    assert!(text.contains("Employee Handbook - Refund Policy"), "{text}");
    // TJ arrays with kerning are joined without losing the space.
    assert!(
        text.contains("Submit each claim within 30 days of the purchase date."),
        "{text}"
    );
    assert!(text.contains("Reimbursement Timeline"), "{text}");
    assert!(
        text.contains("Rejected claims can be appealed to your line manager."),
        "{text}"
    );
    assert!(
        !text.contains("\n\n\n") && !text.starts_with('\n'),
        "{text:?}"
    );
}

#[test]
fn corrupt_pdf_is_an_error_not_a_panic() {
    let err = extract_file("corrupt.pdf", CORRUPT_PDF).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("corrupt PDF: "), "{msg}");
    let err = extract_text(b"%PDF-1.7 nothing else", APPLICATION_PDF).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt(_)), "{err:?}");
}

#[test]
fn pdf_extract_panic_becomes_corrupt() {
    // Prove the fixture really panics inside pdf-extract...
    let raw = quiet_catch_unwind(|| pdf_extract::extract_text_from_mem(BROKEN_PAGE_PDF));
    assert_eq!(raw.err().as_deref(), Some("MediaBox"));
    // ...and that extract_text turns it into a typed error.
    let err = extract_text(BROKEN_PAGE_PDF, APPLICATION_PDF).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt(_)), "{err:?}");
    assert_eq!(err.to_string(), "corrupt PDF: parser crashed: MediaBox");
    // The quiet flag is reset afterwards.
    assert!(!QUIET_PANICS.with(Cell::get));
}

#[test]
fn panics_on_other_threads_still_reach_the_previous_hook() {
    let _ = quiet_catch_unwind(|| ()); // make sure our hook is installed
    let other = std::thread::spawn(|| panic!("boom")).join();
    let msg = other.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom"));
    assert!(!QUIET_PANICS.with(Cell::get));
}

#[test]
fn encrypted_pdf_errors_are_reported_as_unsupported() {
    let err = classify_pdf_error("PDF error: invalid password for encrypted PDF");
    assert!(
        err.to_string().contains("encrypted or password-protected"),
        "{err}"
    );
    let err = classify_pdf_error("PDF error: invalid file trailer");
    assert_eq!(err.to_string(), "corrupt PDF: invalid file trailer");
}

#[test]
fn scanned_pdf_is_empty() {
    let err = extract_file("scanned.pdf", SCANNED_PDF).unwrap_err();
    assert!(matches!(err, ExtractError::Empty(_)), "{err:?}");
    assert_eq!(err.to_string(), "no extractable text (scanned PDF?)");
}

#[test]
fn empty_and_whitespace_inputs_are_empty() {
    let err = detect_mime("empty.txt", None, EMPTY).unwrap_err();
    assert_eq!(err.to_string(), "\"empty.txt\" is empty");
    let err = extract_text(EMPTY, TEXT_PLAIN).unwrap_err();
    assert_eq!(err.to_string(), "file is empty");
    for (bytes, mime) in [
        (&b" \n\t \r\n"[..], TEXT_PLAIN),
        (b"<html><body> <p>  </p></body></html>", TEXT_HTML),
        (b"<!-- only a comment -->\n\n---\n", TEXT_MARKDOWN),
    ] {
        let err = extract_text(bytes, mime).unwrap_err();
        assert!(matches!(err, ExtractError::Empty(_)), "{mime}: {err:?}");
    }
}

#[test]
fn invalid_utf8_reports_the_byte_offset() {
    let err = extract_text(b"caf\xE9 au lait", TEXT_PLAIN).unwrap_err();
    assert!(
        matches!(err, ExtractError::InvalidUtf8 { offset: 3 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("offset 3"), "{err}");
    // The offset counts the BOM, i.e. it is a position in the uploaded file.
    let err = extract_text(b"\xEF\xBB\xBFab\xFF", TEXT_MARKDOWN).unwrap_err();
    assert!(
        matches!(err, ExtractError::InvalidUtf8 { offset: 5 }),
        "{err:?}"
    );
}

#[test]
fn plain_text_strips_bom_and_normalises_whitespace() {
    let raw = "\u{FEFF}Title  \r\n\r\n\r\n\r\nBody line\t \x00\nnext\x0Cpage two\n\n\n";
    let text = extract_text(raw.as_bytes(), TEXT_PLAIN).unwrap();
    assert_eq!(text, "Title\n\nBody line\nnext\n\npage two");
}

#[test]
fn unknown_mime_in_extract_text_is_unsupported() {
    let err = extract_text(b"x", "image/png").unwrap_err();
    assert!(matches!(err, ExtractError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("image/png"), "{err}");
}
