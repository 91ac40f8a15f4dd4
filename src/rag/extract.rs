//! Text extraction from uploaded documents (plain text, Markdown, HTML, PDF).
//!
//! Extraction is synchronous and CPU-bound, and its parsers face hostile
//! input: the worker runs it in a child process under limits
//! ([`super::sandbox`]), never in its own address space.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::html_depth::html_depth;

pub const TEXT_PLAIN: &str = "text/plain";
pub const TEXT_MARKDOWN: &str = "text/markdown";
pub const TEXT_HTML: &str = "text/html";
pub const APPLICATION_PDF: &str = "application/pdf";

/// Wrap width for HTML rendering; wide enough that prose is rarely re-wrapped.
const HTML_WIDTH: usize = 100;
/// Cap on free-form detail inside error messages: they are stored in a DB
/// column and shown to users, so they must stay short and single-line.
const MAX_DETAIL_CHARS: usize = 200;
const MAX_NAME_CHARS: usize = 60;
const SUPPORTED: &str = "supported formats are plain text, Markdown, HTML and PDF";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("unsupported file: {0}")]
    Unsupported(String),
    #[error("corrupt PDF: {0}")]
    Corrupt(String),
    #[error("could not convert HTML: {0}")]
    Html(String),
    /// `offset` is the byte offset in the uploaded file (BOM included).
    #[error("file is not valid UTF-8 text (invalid byte at offset {offset}); re-save it as UTF-8")]
    InvalidUtf8 { offset: usize },
    /// The message is complete on its own, e.g. "no extractable text (scanned PDF?)".
    #[error("{0}")]
    Empty(String),
    /// A size cap was hit; the message names it.
    #[error("{0}")]
    TooLarge(String),
}

/// Decides which extractor handles an upload. Order: content magic (which
/// cannot lie), then the file extension, then the declared multipart type,
/// then content sniffing. A generic `application/octet-stream` is ignored.
pub fn detect_mime(
    filename: &str,
    declared: Option<&str>,
    bytes: &[u8],
) -> Result<&'static str, ExtractError> {
    let name = display_name(filename);
    if bytes.is_empty() {
        return Err(ExtractError::Empty(format!("{name} is empty")));
    }
    if is_pdf(bytes) {
        return Ok(APPLICATION_PDF);
    }
    if let Some(kind) = binary_kind(bytes) {
        return Err(unsupported(format!("{name} is {kind}")));
    }
    if let Some(kind) = utf16_or_32_bom(bytes) {
        return Err(unsupported(format!(
            "{name} is {kind} text; re-save it as UTF-8"
        )));
    }

    let ext = extension(filename);
    match ext.as_deref() {
        Some("pdf") => return Ok(APPLICATION_PDF),
        Some("md" | "markdown" | "mdown" | "mkd") => return Ok(TEXT_MARKDOWN),
        Some("html" | "htm" | "xhtml") => return Ok(TEXT_HTML),
        Some("txt" | "text" | "log" | "csv" | "tsv") => {
            // Non-UTF-8 but textual files (e.g. Latin-1) are let through so
            // extract_text can report the exact offset; NULs mean binary.
            return if has_nul(bytes) {
                Err(unsupported(format!("{name} contains binary data")))
            } else {
                Ok(TEXT_PLAIN)
            };
        }
        Some(
            e @ ("doc" | "docx" | "odt" | "rtf" | "xls" | "xlsx" | "ods" | "ppt" | "pptx" | "odp"
            | "epub" | "png" | "jpg" | "jpeg" | "gif" | "webp" | "svg" | "zip" | "gz" | "tar"
            | "7z" | "exe"),
        ) => return Err(unsupported(format!("{name}: .{e} files are not supported"))),
        _ => {}
    }

    if let Some(declared) = declared.map(base_mime).filter(|d| !is_generic_mime(d)) {
        match declared.as_str() {
            "application/pdf" => return Ok(APPLICATION_PDF),
            "text/markdown" | "text/x-markdown" => return Ok(TEXT_MARKDOWN),
            "text/html" | "application/xhtml+xml" => return Ok(TEXT_HTML),
            d if is_textual_mime(d) => {} // decided by sniffing below
            d => {
                return Err(unsupported(format!(
                    "{name} has content type {}",
                    clean_detail(d)
                )));
            }
        }
    }

    match std::str::from_utf8(bytes) {
        Ok(text) if !has_nul(bytes) => {
            if looks_like_html(text) {
                Ok(TEXT_HTML)
            } else {
                Ok(TEXT_PLAIN)
            }
        }
        Ok(_) => Err(unsupported(format!("{name} contains binary data"))),
        Err(e) => Err(unsupported(format!(
            "{name} is binary data, not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))),
    }
}

/// Extracts normalised plain text. `mime` is normally a value returned by
/// [`detect_mime`]; parameters such as `; charset=utf-8` are tolerated.
pub fn extract_text(bytes: &[u8], mime: &str) -> Result<String, ExtractError> {
    extract_text_capped(bytes, mime, u64::MAX)
}

/// [`extract_text`], refusing a PDF whose drawing streams inflate to more
/// than `max_inflated` bytes (see [`super::pdf_budget`]).
pub fn extract_text_capped(
    bytes: &[u8],
    mime: &str,
    max_inflated: u64,
) -> Result<String, ExtractError> {
    let raw = match base_mime(mime).as_str() {
        TEXT_PLAIN => decode_utf8(bytes)?.to_owned(),
        TEXT_MARKDOWN | "text/x-markdown" => markdown_to_text(decode_utf8(bytes)?),
        TEXT_HTML | "application/xhtml+xml" => html_to_text(decode_utf8(bytes)?)?,
        APPLICATION_PDF => pdf_to_text(bytes, max_inflated)?,
        other => {
            return Err(unsupported(format!("content type {}", clean_detail(other))));
        }
    };
    let text = normalize(&raw);
    if !text.is_empty() {
        return Ok(text);
    }
    Err(ExtractError::Empty(if base_mime(mime) == APPLICATION_PDF {
        "no extractable text (scanned PDF?)".to_owned()
    } else if bytes.is_empty() {
        "file is empty".to_owned()
    } else {
        "document contains no text".to_owned()
    }))
}

fn unsupported(what: String) -> ExtractError {
    ExtractError::Unsupported(format!("{what}; {SUPPORTED}"))
}

/// Strips a UTF-8 BOM and validates; the reported offset counts the BOM so it
/// matches what a hex editor shows for the uploaded file.
fn decode_utf8(bytes: &[u8]) -> Result<&str, ExtractError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let (skip, body) = match bytes.strip_prefix(BOM) {
        Some(rest) => (BOM.len(), rest),
        None => (0, bytes),
    };
    std::str::from_utf8(body).map_err(|e| ExtractError::InvalidUtf8 {
        offset: skip + e.valid_up_to(),
    })
}

fn markdown_to_text(md: &str) -> String {
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut out = String::with_capacity(md.len());
    let mut in_code = false;
    for event in Parser::new_ext(md, opts) {
        match event {
            Event::Text(t) if in_code => out.push_str(&headings::escape_code(&t)),
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => {
                out.push_str(&t)
            }
            // Headings stay `# Title` lines: the chunker's section marks.
            Event::Start(Tag::Heading { level, .. }) => {
                paragraph_break(&mut out);
                out.push_str(&headings::marker(level as usize));
            }
            Event::Start(Tag::CodeBlock(_)) => {
                in_code = true;
                line_break(&mut out);
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code = false;
                paragraph_break(&mut out);
            }
            // Soft breaks are source wrapping inside a paragraph, not content.
            Event::SoftBreak => out.push(' '),
            Event::HardBreak => out.push('\n'),
            Event::Rule => paragraph_break(&mut out),
            Event::TaskListMarker(done) => out.push_str(if done { "[x] " } else { "[ ] " }),
            // Raw HTML and footnote markers are markup, not prose.
            Event::Html(_) | Event::InlineHtml(_) | Event::FootnoteReference(_) => {}
            Event::Start(Tag::TableCell) => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push_str(" | ");
                }
            }
            Event::Start(tag) => {
                if is_block(&TagEnd::from(tag)) {
                    line_break(&mut out);
                }
            }
            Event::End(TagEnd::Item | TagEnd::TableHead | TagEnd::TableRow) => line_break(&mut out),
            Event::End(tag) => {
                if is_block(&tag) {
                    paragraph_break(&mut out);
                }
            }
        }
    }
    out
}

fn is_block(tag: &TagEnd) -> bool {
    matches!(
        tag,
        TagEnd::Paragraph
            | TagEnd::Heading(_)
            | TagEnd::BlockQuote(_)
            | TagEnd::CodeBlock
            | TagEnd::HtmlBlock
            | TagEnd::List(_)
            | TagEnd::Item
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::Table
            | TagEnd::TableHead
            | TagEnd::TableRow
            | TagEnd::MetadataBlock(_)
    )
}

fn line_break(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn paragraph_break(out: &mut String) {
    line_break(out);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
}

/// Deepest element nesting accepted. html5ever's tree builder walks the
/// stack of open elements for each element, so parse time grows with the
/// square of the depth (8,000 nested `<div>`s: 0.3 s; the 25 MiB upload limit
/// would allow hours). Browsers cap the depth too (Chromium at 512).
pub const MAX_HTML_DEPTH: usize = 1024;

fn html_to_text(html: &str) -> Result<String, ExtractError> {
    use html2text::render::TrivialDecorator;
    let depth = html_depth(html, MAX_HTML_DEPTH);
    if depth > MAX_HTML_DEPTH {
        return Err(ExtractError::Html(format!(
            "elements are nested more than {MAX_HTML_DEPTH} deep; flatten the HTML or upload its text"
        )));
    }
    // TrivialDecorator drops link brackets, heading hashes and list bullets
    // (`mark_html` puts our own `# ` heading marks in the text first);
    // footnotes off so URLs don't pollute the embedded text.
    let config = html2text::config::with_decorator(TrivialDecorator::new())
        .link_footnotes(false)
        .no_table_borders()
        .allow_width_overflow();
    let html = headings::mark_html(html);
    quiet_catch_unwind(|| config.string_from_read(html.as_bytes(), HTML_WIDTH))
        .map_err(|panic| ExtractError::Html(format!("converter crashed: {panic}")))?
        .map_err(|e| ExtractError::Html(clean_detail(&e.to_string())))
}

fn pdf_to_text(bytes: &[u8], max_inflated: u64) -> Result<String, ExtractError> {
    match quiet_catch_unwind(|| pdf_text_within(bytes, max_inflated)) {
        Ok(result) => result,
        Err(panic) => Err(ExtractError::Corrupt(format!("parser crashed: {panic}"))),
    }
}

/// `pdf_extract::extract_text_from_mem`, with the inflation budget checked
/// between loading and drawing.
fn pdf_text_within(bytes: &[u8], max_inflated: u64) -> Result<String, ExtractError> {
    use pdf_extract::{Document, PlainTextOutput};
    let pdf_error = |e: &dyn std::fmt::Display| classify_pdf_error(&e.to_string());
    let mut doc = Document::load_mem(bytes).map_err(|e| pdf_error(&e))?;
    if doc.is_encrypted() {
        // Like pdf-extract: only the empty password is tried.
        doc.decrypt("").map_err(|e| pdf_error(&e))?;
    }
    if super::pdf_budget::check(&doc, max_inflated).is_err() {
        return Err(ExtractError::TooLarge(format!(
            "the PDF's drawing instructions inflate to more than {} MiB (limit); file rejected",
            max_inflated >> 20
        )));
    }
    let mut text = String::new();
    pdf_extract::output_doc(&doc, &mut PlainTextOutput::new(&mut text))
        .map_err(|e| pdf_error(&e))?;
    Ok(text)
}

/// pdf-extract only tries the empty password; anything else encrypted fails
/// with a lopdf decryption error, which deserves a clearer message than
/// "corrupt".
fn classify_pdf_error(msg: &str) -> ExtractError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("decryption")
        || lower.contains("encrypted pdf")
        || lower.contains("security handler")
    {
        return unsupported("the PDF is encrypted or password-protected".to_owned());
    }
    let detail = msg.strip_prefix("PDF error: ").unwrap_or(msg);
    ExtractError::Corrupt(clean_detail(detail))
}

thread_local! {
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, converting a panic into `Err(message)`. Parsers of untrusted
/// input may panic; the message is kept off stderr for this thread only: the
/// hook installed once wraps (and delegates to) whatever hook was in place,
/// so panics on other threads are reported exactly as before. If someone
/// installs another hook later, panics are merely printed again.
fn quiet_catch_unwind<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(Cell::get) {
                previous(info);
            }
        }));
    });

    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            QUIET_PANICS.with(|q| q.set(self.0));
        }
    }
    let _reset = Reset(QUIET_PANICS.with(|q| q.replace(true)));

    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        clean_detail(&msg)
    })
}

/// Line endings to `\n`, control characters removed (Postgres TEXT rejects
/// NUL), trailing whitespace trimmed per line, at most one blank line in a
/// row, and no leading/trailing blank lines.
fn normalize(raw: &str) -> String {
    let unified = raw
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\x0C', "\n\n");
    let mut out = String::with_capacity(unified.len());
    let mut blank_run = 0usize;
    for line in unified.split('\n') {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

fn is_pdf(bytes: &[u8]) -> bool {
    // Readers tolerate junk before the header, but scanning for it would
    // misread text that merely mentions "%PDF-"; a .pdf name still wins.
    bytes.trim_ascii_start().starts_with(b"%PDF-")
}

fn binary_kind(bytes: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"GIF87a", "a GIF image"),
        (b"GIF89a", "a GIF image"),
        (b"II*\x00", "a TIFF image"),
        (b"MM\x00*", "a TIFF image"),
        (
            b"PK\x03\x04",
            "a ZIP archive (e.g. .docx, .xlsx, .odt, .epub)",
        ),
        (
            b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1",
            "a legacy Office document (.doc/.xls/.ppt)",
        ),
        (b"\x1F\x8B", "a gzip archive"),
        (b"7z\xBC\xAF\x27\x1C", "a 7-Zip archive"),
        (b"Rar!\x1A\x07", "a RAR archive"),
        // Windows "MZ" is omitted: too short to tell from text; PE files
        // contain NULs and are rejected as binary data anyway.
        (b"\x7FELF", "an executable"),
        (b"{\\rtf", "an RTF document"),
    ];
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" {
        return Some(match &bytes[8..12] {
            b"WEBP" => "a WebP image",
            b"WAVE" => "a WAV audio file",
            _ => "a RIFF media file",
        });
    }
    MAGIC
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, kind)| *kind)
}

fn utf16_or_32_bom(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\xFF\xFE\x00\x00") || bytes.starts_with(b"\x00\x00\xFE\xFF") {
        Some("UTF-32")
    } else if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        Some("UTF-16")
    } else {
        None
    }
}

fn has_nul(bytes: &[u8]) -> bool {
    bytes.contains(&0)
}

fn looks_like_html(text: &str) -> bool {
    let start = text.trim_start_matches('\u{FEFF}').trim_start();
    let head: String = start.chars().take(15).collect::<String>().to_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}

/// "text/HTML; charset=utf-8" -> "text/html".
fn base_mime(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_generic_mime(mime: &str) -> bool {
    matches!(
        mime,
        "" | "application/octet-stream" | "binary/octet-stream" | "application/unknown"
    )
}

/// Declared types whose payload is text we can index as plain text.
fn is_textual_mime(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.ends_with("+xml")
        || mime.ends_with("+json")
        || matches!(
            mime,
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-yaml"
                | "application/yaml"
                | "application/toml"
                | "application/x-sh"
                | "application/sql"
        )
}

fn extension(filename: &str) -> Option<String> {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let (stem, ext) = base.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// Quoted, shortened, control-free file name for messages.
fn display_name(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    if base.trim().is_empty() {
        return "the upload".to_owned();
    }
    format!("\"{}\"", truncate_single_line(base, MAX_NAME_CHARS))
}

fn clean_detail(detail: &str) -> String {
    truncate_single_line(detail, MAX_DETAIL_CHARS)
}

/// Collapses all whitespace/control runs to one space and caps the length in
/// characters (never splitting a UTF-8 sequence).
fn truncate_single_line(s: &str, max_chars: usize) -> String {
    let flat = s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let mut cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

mod headings;
#[cfg(test)]
mod tests;
