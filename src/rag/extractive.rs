//! The extractive answer (no LLM configured): the window of 1–3 adjacent
//! sentences, in the passages that answer, that covers the most of the
//! question's IDF mass, marked with its passage's `[n]` (n = rank). If a
//! second window elsewhere adds a quarter of the mass or more (a question
//! with two parts), it follows; windows are listed top-ranked passage first.
//!
//! A section's heading line (its path, e.g. `Install › Linux`) is context:
//! its terms count for every window of that section and it prefixes the
//! quote, but it is never quoted alone. A window stays inside one section
//! (a chunk may pack several). Question terms are PostgreSQL `english`
//! lexemes, matched to words by [`text::is_form_of`].

use std::cmp::Ordering;

use super::hit::{Hit, QueryTerm};
use super::text;

/// Sentences in a window, at most.
const MAX_WINDOW: usize = 3;
/// A second window must add this share of the question's mass.
const SECOND_SHARE: f32 = 0.25;
/// Terms matched, at most: the rarest ones. A question is at most 16,000
/// characters; this keeps its cost at words × 64.
const MAX_TERMS: usize = 64;

/// A passage, read: headings, sentences (with their section) and which
/// terms each one holds.
struct Read {
    headings: Vec<String>,
    heading_terms: Vec<Vec<bool>>,
    sentences: Vec<String>,
    section: Vec<Option<usize>>,
    matched: Vec<Vec<bool>>,
}

impl Read {
    /// Whether the window's section heading holds term `i`.
    fn heading_holds(&self, w: &Window, i: usize) -> bool {
        self.section[w.start].is_some_and(|h| self.heading_terms[h][i])
    }

    fn holds(&self, w: &Window, i: usize) -> bool {
        (w.start..w.start + w.len).any(|s| self.matched[s][i])
    }

    fn one_section(&self, start: usize, len: usize) -> bool {
        self.section[start..start + len]
            .iter()
            .all(|s| *s == self.section[start])
    }
}

#[derive(Clone, Copy)]
struct Window {
    rank: usize,
    start: usize,
    len: usize,
    /// Mass of the not yet covered terms in the window and its heading.
    gain: f32,
}

/// The answer body: quoted windows with their `[n]` markers. `hits` are the
/// passages in rank order.
pub fn extract(terms: &[QueryTerm], hits: &[Hit]) -> String {
    let terms = dedup(terms);
    let weights: Vec<f32> = terms.iter().map(|t| t.idf.max(1e-3)).collect();
    let total: f32 = weights.iter().sum();
    let read: Vec<Read> = hits.iter().map(|h| read(&h.content, &terms)).collect();
    let mut covered = vec![false; terms.len()];
    let mut picked: Vec<Window> = Vec::new();
    while picked.len() < 2 {
        let Some(w) = best_window(&read, &weights, &covered, &picked) else {
            break;
        };
        if !picked.is_empty() && w.gain < SECOND_SHARE * total {
            break;
        }
        cover(&read[w.rank], w, &mut covered);
        picked.push(w);
    }
    if picked.is_empty() {
        return fallback(&read);
    }
    picked.sort_by_key(|w| (w.rank, w.start));
    let lines: Vec<String> = picked.iter().map(|w| quote(&read[w.rank], *w)).collect();
    format!("From your documents:\n{}", lines.join("\n"))
}

/// One term per lexeme (the highest IDF), so a repeated word counts once;
/// the `MAX_TERMS` rarest.
fn dedup(terms: &[QueryTerm]) -> Vec<QueryTerm> {
    let mut out: Vec<QueryTerm> = terms.to_vec();
    out.sort_by(|a, b| a.lexeme.cmp(&b.lexeme).then(b.idf.total_cmp(&a.idf)));
    out.dedup_by(|later, first| later.lexeme == first.lexeme);
    out.sort_by(|a, b| b.idf.total_cmp(&a.idf).then(a.lexeme.cmp(&b.lexeme)));
    out.truncate(MAX_TERMS);
    out
}

fn read(content: &str, terms: &[QueryTerm]) -> Read {
    let s = text::sections(content);
    let (section, sentences): (Vec<_>, Vec<_>) = s.sentences.into_iter().unzip();
    Read {
        heading_terms: s.headings.iter().map(|h| holds(h, terms)).collect(),
        matched: sentences.iter().map(|s| holds(s, terms)).collect(),
        headings: s.headings,
        sentences,
        section,
    }
}

/// Which terms occur in `text`.
fn holds(text: &str, terms: &[QueryTerm]) -> Vec<bool> {
    let words = text::words(text);
    terms
        .iter()
        .map(|t| words.iter().any(|w| text::is_form_of(w, &t.lexeme)))
        .collect()
}

/// The window with the most uncovered mass among its own sentences (it
/// must hold one, a heading alone is not an answer); ties go to the shorter
/// window, then the better-ranked passage, then the earlier sentence.
fn best_window(
    read: &[Read],
    weights: &[f32],
    covered: &[bool],
    picked: &[Window],
) -> Option<Window> {
    let mut best: Option<Window> = None;
    for (rank, r) in read.iter().enumerate() {
        for start in 0..r.sentences.len() {
            for len in 1..=MAX_WINDOW.min(r.sentences.len() - start) {
                if !r.one_section(start, len) {
                    break;
                }
                let mut w = Window {
                    rank,
                    start,
                    len,
                    gain: 0.0,
                };
                let mass = |with_heading: bool| -> f32 {
                    (0..weights.len())
                        .filter(|&i| {
                            !covered[i]
                                && (r.holds(&w, i) || (with_heading && r.heading_holds(&w, i)))
                        })
                        .map(|i| weights[i])
                        .sum()
                };
                let (own, gain) = (mass(false), mass(true));
                w.gain = gain;
                if own <= 0.0 || overlaps(&w, picked) {
                    continue;
                }
                if best.is_none_or(|b| better(&w, &b)) {
                    best = Some(w);
                }
            }
        }
    }
    best
}

fn better(a: &Window, b: &Window) -> bool {
    let order = b
        .gain
        .total_cmp(&a.gain)
        .then(a.len.cmp(&b.len))
        .then(a.rank.cmp(&b.rank))
        .then(a.start.cmp(&b.start));
    order == Ordering::Less
}

fn overlaps(w: &Window, picked: &[Window]) -> bool {
    picked
        .iter()
        .any(|p| p.rank == w.rank && w.start < p.start + p.len && p.start < w.start + w.len)
}

fn cover(r: &Read, w: Window, covered: &mut [bool]) {
    for (i, c) in covered.iter_mut().enumerate() {
        *c |= r.heading_holds(&w, i) || r.holds(&w, i);
    }
}

/// `- Section › Sub — sentence sentence [n]`
fn quote(r: &Read, w: Window) -> String {
    let body = r.sentences[w.start..w.start + w.len].join(" ");
    match r.section[w.start].map(|h| &r.headings[h]) {
        Some(h) => format!("- {h} — {body} [{}]", w.rank + 1),
        None => format!("- {body} [{}]", w.rank + 1),
    }
}

/// No sentence holds a question term (the index matched forms this crude
/// matching misses): the top passage's first sentences.
fn fallback(read: &[Read]) -> String {
    let Some(top) = read.first() else {
        return String::new();
    };
    let len = (1..=top.sentences.len().min(2))
        .rev()
        .find(|&len| top.one_section(0, len));
    let Some(len) = len else {
        return String::new();
    };
    let w = Window {
        rank: 0,
        start: 0,
        len,
        gain: 0.0,
    };
    format!("From your documents:\n{}", quote(top, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::fuse::tests::hit;
    use crate::rag::relevance::tests::{pressure_valve, term};

    #[test]
    fn the_rare_term_s_window_beats_a_sentence_repeating_common_words() {
        let terms = pressure_valve();
        let hits = vec![
            hit(
                1,
                "You must sign in. You must, must, must wear shoes. Lunch is late.",
            ),
            hit(
                2,
                "Coffee is free. The pressure valve is inspected every six months. Ask Sam.",
            ),
        ];
        let a = extract(&terms, &hits);
        assert_eq!(
            a,
            "From your documents:\n- The pressure valve is inspected every six months. [2]"
        );
    }

    #[test]
    fn a_window_of_adjacent_sentences_covers_what_one_sentence_cannot() {
        let terms = vec![
            term("refund", 3.0),
            term("receipt", 2.0),
            term("lunch", 40.0),
        ];
        let hits = vec![hit(
            1,
            "Lunch is served at noon. Refunds are paid in 30 days. A receipt is needed. Parking is free.",
        )];
        let a = extract(&terms, &hits);
        // The window that holds all three terms; not the sentence after it.
        assert!(
            a.contains(
                "- Lunch is served at noon. Refunds are paid in 30 days. A receipt is needed. [1]"
            ),
            "{a}"
        );
    }

    #[test]
    fn the_heading_is_context_never_the_quote() {
        let terms = vec![term("instal", 4.0), term("linux", 6.0)];
        let hits = vec![hit(
            1,
            "Install › Linux\nRun the script as root. Then reboot the machine.",
        )];
        let a = extract(&terms, &hits);
        // Only the heading holds the terms: the fallback quotes the body.
        assert_eq!(
            a,
            "From your documents:\n- Install › Linux — Run the script as root. Then reboot the machine. [1]"
        );
        let hits = vec![hit(
            1,
            "Install › Linux\nDownload it first. On Linux run the script as root.",
        )];
        let a = extract(&terms, &hits);
        assert_eq!(
            a,
            "From your documents:\n- Install › Linux — On Linux run the script as root. [1]"
        );
    }

    #[test]
    fn a_window_stays_in_its_section_and_quotes_that_section_s_heading() {
        let terms = vec![term("brew", 5.0), term("maco", 5.0)];
        let hits = vec![hit(
            1,
            "Install › Linux\nRun apt as root.\n\nInstall › macOS\nUse brew. It takes a minute.",
        )];
        assert_eq!(
            extract(&terms, &hits),
            "From your documents:\n- Install › macOS — Use brew. [1]"
        );
    }

    #[test]
    fn markers_follow_rank_order_and_a_second_part_is_answered() {
        let terms = vec![term("refund", 3.0), term("vacat", 3.0)];
        let hits = vec![
            hit(1, "Vacation days accrue monthly. Unrelated words."),
            hit(2, "Nothing here. Refunds are paid within 30 days."),
        ];
        let a = extract(&terms, &hits);
        // The top-ranked passage's window first, each with its rank's marker.
        assert_eq!(
            a,
            "From your documents:\n- Vacation days accrue monthly. [1]\n- Refunds are paid within 30 days. [2]"
        );
    }

    #[test]
    fn repeated_terms_count_once_and_only_the_rarest_are_kept() {
        let mut terms = vec![
            term("refund", 3.0),
            term("refund", 3.0),
            term("receipt", 2.0),
        ];
        terms.extend((0..100).map(|i| term(&format!("w{i}"), 100.0)));
        let kept = dedup(&terms);
        assert_eq!(kept.len(), MAX_TERMS);
        assert_eq!(kept[0].lexeme, "receipt");
        assert_eq!(kept[1].lexeme, "refund");
        let hits = vec![hit(1, "A refund. A refund again. The receipt is kept.")];
        assert_eq!(
            extract(&terms, &hits),
            "From your documents:\n- A refund again. The receipt is kept. [1]"
        );
    }

    #[test]
    fn equal_windows_go_to_the_better_ranked_passage() {
        let terms = vec![term("refund", 3.0)];
        let hits = vec![
            hit(1, "Refunds take a week."),
            hit(2, "Refunds take a day."),
        ];
        assert_eq!(
            extract(&terms, &hits),
            "From your documents:\n- Refunds take a week. [1]"
        );
    }

    #[test]
    fn no_matching_word_quotes_the_top_passage_and_nothing_is_empty() {
        let terms = vec![term("zzz", 0.0)];
        let hits = vec![hit(1, "First sentence. Second one. Third.")];
        assert_eq!(
            extract(&terms, &hits),
            "From your documents:\n- First sentence. Second one. [1]"
        );
        assert_eq!(extract(&terms, &[]), "");
    }
}
