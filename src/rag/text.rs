//! Text helpers of the extractive answer: a chunk's heading line, its
//! sentences, and whether a word is a form of a PostgreSQL lexeme.

/// A chunk read for quoting: its section headings and its sentences, each
/// with the index of the heading it sits under.
#[derive(Debug, Default, PartialEq)]
pub struct Sections {
    pub headings: Vec<String>,
    pub sentences: Vec<(Option<usize>, String)>,
}

/// Reads a chunk. The chunker starts every section with its path line
/// (`Install › Linux`), at the chunk's start or after a blank line when
/// small sections share a chunk; such a line is a heading for the
/// paragraphs after it (see [`split_heading`]).
pub fn sections(content: &str) -> Sections {
    let mut out = Sections::default();
    let mut current = None;
    for para in paragraphs(content) {
        let (heading, body) = split_heading(&para);
        if let Some(h) = heading {
            out.headings.push(h);
            current = Some(out.headings.len() - 1);
        }
        out.sentences
            .extend(sentences(body).into_iter().map(|s| (current, s)));
    }
    out
}

/// Runs of non-blank lines.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push(cur.join("\n"));
    }
    out
}

/// Splits a paragraph into its heading line and the body. A first line
/// with text under it is a heading when it carries `›` (a section path) or
/// starts with `#`, or when it is short (≤ 10 words, ≤ 80 chars), starts
/// with a capital or a digit, ends without punctuation, and the next line
/// does not continue it in lower case (wrapped prose does).
pub fn split_heading(para: &str) -> (Option<String>, &str) {
    let para = para.trim_start();
    let Some((first, rest)) = para.split_once('\n') else {
        return (None, para);
    };
    let line = first.trim();
    let marked = line.contains('›') || line.starts_with('#');
    let short = line.chars().count() <= 80
        && line.split_whitespace().count() <= 10
        && line.starts_with(|c: char| c.is_uppercase() || c.is_ascii_digit())
        && !line.ends_with(|c: char| ".!?;:,".contains(c))
        && !rest.trim_start().starts_with(char::is_lowercase);
    if line.is_empty() || rest.trim().is_empty() || !(marked || short) {
        return (None, para);
    }
    let heading = line.trim_start_matches('#').trim().to_string();
    (Some(heading), rest)
}

/// The sentences of a text, in order, whitespace collapsed. A sentence ends
/// at `.`, `!` or `?` followed by a space or the end (not after a common
/// abbreviation such as `e.g.`, nor a list's `1.`), at a blank line, and
/// before a line that starts a list item; single line breaks (wrapped text)
/// are spaces. A Markdown heading line inside the text (`## Linux`) is
/// context, not a sentence: it ends the one before and is left out.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || is_list_item(t) || t.starts_with('#') {
            flush(&mut cur, &mut out);
        }
        if t.starts_with('#') {
            continue;
        }
        for word in t.split_whitespace() {
            let first = cur.is_empty();
            if !first {
                cur.push(' ');
            }
            cur.push_str(word);
            let number = word
                .trim_end_matches('.')
                .chars()
                .all(|c| c.is_ascii_digit());
            if ends_sentence(word) && !(first && number) {
                flush(&mut cur, &mut out);
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

fn flush(cur: &mut String, out: &mut Vec<String>) {
    let s = std::mem::take(cur);
    if s.chars().filter(|c| c.is_alphanumeric()).count() >= 2 {
        out.push(s);
    }
}

fn is_list_item(line: &str) -> bool {
    let bullet = ["- ", "* ", "• ", "+ "].iter().any(|b| line.starts_with(b));
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    let numbered = digits > 0 && matches!(line[digits..].chars().next(), Some('.' | ')'));
    bullet || numbered
}

const ABBREVIATIONS: &[&str] = &[
    "e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "fig.", "approx.", "cf.",
    "al.",
];

fn ends_sentence(word: &str) -> bool {
    let w = word.trim_end_matches(['"', '\'', ')', ']', '”', '’']);
    if !w.ends_with(['.', '!', '?']) {
        return false;
    }
    let lower = w
        .trim_start_matches(['"', '\'', '(', '[', '“', '‘'])
        .to_lowercase();
    // An initial ("J.") is not an end either.
    let initial = w.len() <= 2 && w.starts_with(char::is_uppercase);
    !ABBREVIATIONS.contains(&lower.as_str()) && !initial
}

/// The words of a text, lowercased: runs of letters and digits, and each
/// hyphenated compound whole too (PostgreSQL indexes `e-mail` as `e-mail`,
/// `e` and `mail`).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in text.split(|c: char| !(c.is_alphanumeric() || c == '-')) {
        let token = token.trim_matches('-').to_lowercase();
        if token.is_empty() {
            continue;
        }
        if token.contains('-') {
            out.extend(
                token
                    .split('-')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            );
        }
        out.push(token);
    }
    out
}

/// Inflection endings a short lexeme (≤ 3 letters) may carry: a prefix
/// test alone would let `run` match `rung` and `art` match `article`.
const SHORT_ENDINGS: &[&str] = &["", "s", "es", "e", "ed", "d", "ing", "er", "ers", "y", "ly"];

/// Whether `word` (lowercase) is a form of `lexeme`, a PostgreSQL `english`
/// (Snowball) stem. Not a stemmer, a cheap approximation of one:
/// - the word starts with the lexeme (`inspected`/`inspect`,
///   `valves`/`valv`, `generalization`/`general`); for lexemes of three
///   letters or fewer only with an inflection ending (`runs`, not `rung`),
///   allowing a doubled consonant (`running`);
/// - a final consonant + `y` becomes `i` (`policy`/`polici`);
/// - `-ing`/`-ed` replaced by `e` (`using`/`use`, `hoping`/`hope`).
pub fn is_form_of(word: &str, lexeme: &str) -> bool {
    if lexeme.is_empty() {
        return false;
    }
    if prefixed(word, lexeme) {
        return true;
    }
    if let Some(stem) = word.strip_suffix('y') {
        let consonant = stem.ends_with(|c: char| c.is_alphabetic() && !"aeiouy".contains(c));
        if consonant && stem.len() >= 2 && prefixed(&format!("{stem}i"), lexeme) {
            return true;
        }
    }
    ["ing", "ed"]
        .iter()
        .filter_map(|s| word.strip_suffix(s))
        .any(|stem| stem.len() >= 2 && format!("{stem}e") == lexeme)
}

fn prefixed(word: &str, lexeme: &str) -> bool {
    let Some(rest) = word.strip_prefix(lexeme) else {
        return false;
    };
    if lexeme.chars().count() > 3 {
        return true;
    }
    // A doubled final consonant (`running`, `planned`) is part of the ending.
    let rest = match (lexeme.chars().last(), rest.chars().next()) {
        (Some(a), Some(b)) if a == b && a.is_alphabetic() => &rest[b.len_utf8()..],
        _ => rest,
    };
    SHORT_ENDINGS.contains(&rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_english_stems() {
        for (word, lexeme) in [
            ("inspected", "inspect"),
            ("valve", "valv"),
            ("valves", "valv"),
            ("pressure", "pressur"),
            ("policy", "polici"),
            ("policies", "polici"),
            ("using", "use"),
            ("hoping", "hope"),
            ("running", "run"),
            ("runs", "run"),
            ("30", "30"),
            ("e-mail", "e-mail"),
        ] {
            assert!(is_form_of(word, lexeme), "{word} ~ {lexeme}");
        }
        for (word, lexeme) in [
            ("rung", "run"),
            ("article", "art"),
            ("day", "dai"),
            ("valve", "valves"),
            ("x", ""),
        ] {
            assert!(!is_form_of(word, lexeme), "{word} !~ {lexeme}");
        }
    }

    #[test]
    fn sentences_end_at_punctuation_blank_lines_and_list_items() {
        let text = "Refunds take 30 days, (e.g. for books) first. Ask Dr. Smith!\nWrapped\nline here.\n\nNo stop here\n- item one\n- item two\n## Steps\n1. Open it\n2. Close it.";
        assert_eq!(
            sentences(text),
            vec![
                "Refunds take 30 days, (e.g. for books) first.",
                "Ask Dr. Smith!",
                "Wrapped line here.",
                "No stop here",
                "- item one",
                "- item two",
                "1. Open it",
                "2. Close it.",
            ]
        );
        assert_eq!(
            sentences("Version 3.5 is out. Yes."),
            vec!["Version 3.5 is out.", "Yes."]
        );
    }

    #[test]
    fn headings_are_recognised_and_prose_is_not() {
        let (h, body) = split_heading("Install › Linux\nRun the installer. Then reboot.");
        assert_eq!(h.as_deref(), Some("Install › Linux"));
        assert_eq!(body, "Run the installer. Then reboot.");
        let (h, _) = split_heading("## Refund policy\nRefunds are paid.");
        assert_eq!(h.as_deref(), Some("Refund policy"));
        let (h, _) = split_heading("Refunds are paid within 30 days.\nThen more.");
        assert_eq!(h, None);
        let (h, _) = split_heading("of the licence, the licensee shall\nnot copy.");
        assert_eq!(h, None, "a wrapped line in lower case is prose");
        let (h, _) = split_heading("The pressure valve on the boiler\nis inspected yearly.");
        assert_eq!(h, None, "a line continued in lower case is prose");
        let (h, body) = split_heading("Install › Linux");
        assert_eq!((h, body), (None, "Install › Linux"), "nothing under it");
    }

    #[test]
    fn packed_sections_keep_their_own_headings() {
        // Two small sections in one chunk, as the chunker packs them.
        let s = sections(
            "Install › Linux\nRun apt.\n\nMore on Linux.\n\nInstall › macOS\nRun brew. Done.",
        );
        assert_eq!(s.headings, vec!["Install › Linux", "Install › macOS"]);
        assert_eq!(
            s.sentences,
            vec![
                (Some(0), "Run apt.".to_string()),
                (Some(0), "More on Linux.".to_string()),
                (Some(1), "Run brew.".to_string()),
                (Some(1), "Done.".to_string()),
            ]
        );
        let plain = sections("No heading here. Two sentences.");
        assert!(plain.headings.is_empty());
        assert_eq!(plain.sentences.len(), 2);
    }

    #[test]
    fn words_split_and_keep_compounds() {
        assert_eq!(
            words("Send an E-mail, now!"),
            vec!["send", "an", "e", "mail", "e-mail", "now"]
        );
    }
}
