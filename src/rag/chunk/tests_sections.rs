//! Tests of heading-aware chunking.

use super::chunk_text;
use super::plain::chunk_plain;
use super::sections::{heading, sections};

fn sentences(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{prefix} sentence number {i} has some words."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn heading_lines_are_recognised_and_others_are_not() {
    assert_eq!(heading("# Install"), Some((1, "Install")));
    assert_eq!(heading("### Linux ###"), Some((3, "Linux")));
    assert_eq!(heading("#[derive(Debug)]"), None);
    assert_eq!(heading("####### seven"), None);
    assert_eq!(heading("#"), None);
    assert_eq!(heading("# "), None);
    assert_eq!(heading("#nospace"), None);
    assert_eq!(heading(&format!("# {}", "x".repeat(300))), None);
}

#[test]
fn every_chunk_starts_with_its_heading_path() {
    let text = "# Install\n\nRun the installer.\n\n## Linux\n\nUse the package.\n\n## Windows\n\nUse the MSI.";
    // Size small enough that each section is its own chunk.
    let chunks = chunk_text(text, 34, 0);
    assert_eq!(
        chunks,
        vec![
            "Install\nRun the installer.",
            "Install › Linux\nUse the package.",
            "Install › Windows\nUse the MSI."
        ]
    );
}

#[test]
fn nested_headings_pop_back_to_their_level() {
    let text = "# A\n\n## B\n\n### C\n\ndeep text\n\n## D\n\nback up\n\n# E\n\ntop again";
    let secs = sections(text).unwrap();
    let paths: Vec<&str> = secs.iter().map(|s| s.path.as_str()).collect();
    // A and B have no body of their own: only their children are kept.
    assert_eq!(paths, vec!["A › B › C", "A › D", "E"]);
    let chunks = chunk_text(text, 1000, 100);
    assert_eq!(
        chunks,
        vec!["A › B › C\ndeep text\n\nA › D\nback up\n\nE\ntop again"]
    );
}

#[test]
fn small_sections_share_a_chunk_but_each_keeps_its_heading() {
    let text = "intro words\n\n# One\n\nfirst body\n\n# Two\n\nsecond body";
    let chunks = chunk_text(text, 1000, 0);
    assert_eq!(
        chunks,
        vec!["intro words\n\nOne\nfirst body\n\nTwo\nsecond body"]
    );
}

#[test]
fn a_boundary_inside_a_long_section_repeats_the_heading() {
    let body = sentences("Linux", 40);
    let text = format!("# Install\n\n## Linux\n\n{body}\n\n## Mac\n\nshort");
    let (size, overlap) = (200, 50);
    let chunks = chunk_text(&text, size, overlap);
    let linux: Vec<&String> = chunks
        .iter()
        .filter(|c| c.starts_with("Install › Linux\n"))
        .collect();
    assert!(linux.len() > 5, "{chunks:#?}");
    for c in &chunks {
        assert!(
            c.chars().count() <= size,
            "{} > {size}: {c:?}",
            c.chars().count()
        );
        assert!(c.starts_with("Install › "), "no heading path: {c:?}");
    }
    // Consecutive pieces of the long section overlap (the last sentence
    // of one is repeated at the start of the next).
    let first_body = linux[0].lines().nth(1).unwrap();
    let last_words = first_body.split(' ').rev().take(3).collect::<Vec<_>>();
    assert!(
        last_words.iter().all(|w| linux[1].contains(w)),
        "{linux:#?}"
    );
    // Every sentence of the body is in some chunk.
    for i in 0..40 {
        let s = format!("sentence number {i} has");
        assert!(chunks.iter().any(|c| c.contains(&s)), "lost {s}");
    }
    assert_eq!(chunks.last().unwrap(), "Install › Mac\nshort");
}

#[test]
fn no_heading_means_no_prefix_and_the_old_chunker() {
    let text = sentences("Plain", 30);
    assert!(sections(&text).is_none());
    assert_eq!(chunk_text(&text, 120, 30), chunk_plain(&text, 120, 30));
}

#[test]
fn long_paths_and_tiny_sizes_stay_within_size() {
    let long = "y".repeat(150);
    let text = format!("# {long}\n\n{}", sentences("Tiny", 10));
    for size in [1, 5, 60, 100, 170] {
        for c in chunk_text(&text, size, size / 3) {
            assert!(c.chars().count() <= size, "{size}: {c:?}");
            assert!(!c.trim().is_empty());
        }
    }
}

#[test]
fn cjk_sections_without_spaces_still_split() {
    let body = "日本語のテキストには空白がありません。".repeat(20);
    let text = format!("# 概要\n\n{body}");
    let chunks = chunk_text(&text, 40, 8);
    assert!(chunks.len() > 5);
    for c in &chunks {
        assert!(c.starts_with("概要\n"), "{c:?}");
        assert!(c.chars().count() <= 40);
    }
    let joined: String = chunks.iter().map(|c| &c["概要\n".len()..]).collect();
    assert!(joined.matches('。').count() >= 20);
}
