//! Throughput of the local embedding model (`embed::local`): chunks/s for
//! 1000-character chunks at several batch sizes and thread counts, chunks/s
//! with two callers at once (two `spawn_blocking` embeds), and the latency
//! of one short question.
//!
//! `cargo bench --bench embed` (release profile). The model is
//! `$RAG_TEST_EMBED_MODEL`, else `target/model/all-MiniLM-L6-v2`
//! (`bash scripts/model.sh target/model`). Threads are candle's rayon pool:
//! each row runs in a pool of that size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ragctl::embed::local::LocalModel;

/// Distinct, prose-like 1000-character chunks (the chunker's default size).
fn chunks(n: usize) -> Vec<String> {
    const WORDS: &str = "install the server requires a configuration file and network access \
        before starting pressure valve inspection quarterly report revenue grew license terms \
        apply to users";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    (0..n)
        .map(|i| {
            let mut text = String::new();
            let mut k = i;
            while text.len() < 1000 {
                k = k.wrapping_mul(2_654_435_761).wrapping_add(12_345);
                text.push_str(words[(k >> 7) % words.len()]);
                text.push(if k % 11 == 0 { '.' } else { ' ' });
            }
            text.truncate(1000);
            text
        })
        .collect()
}

fn model_dir() -> PathBuf {
    std::env::var_os("RAG_TEST_EMBED_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/model/all-MiniLM-L6-v2")
        })
}

/// chunks/s embedding `texts` in calls of `batch` texts each.
fn throughput(model: &LocalModel, texts: &[&str], batch: usize) -> f64 {
    let start = Instant::now();
    for slice in texts.chunks(batch) {
        model.embed(slice).expect("embed");
    }
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

/// Two callers at once (two threads outside the pool, as two
/// `spawn_blocking` tasks are), each embedding half of `texts`.
fn two_callers(pool: &rayon::ThreadPool, model: &LocalModel, texts: &[&str], batch: usize) -> f64 {
    let start = Instant::now();
    let (a, b) = texts.split_at(texts.len() / 2);
    std::thread::scope(|s| {
        for half in [a, b] {
            s.spawn(move || pool.install(|| throughput(model, half, batch)));
        }
    });
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

fn question_latency(model: &LocalModel) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        model
            .embed(&["How often must the pressure valve be inspected?"])
            .expect("embed");
        best = best.min(start.elapsed());
    }
    best
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

fn main() {
    let model = LocalModel::load(&model_dir())
        .expect("load the model (bash scripts/model.sh target/model)");
    let owned = chunks(128);
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    println!(
        "model {} ({} dims), {} chunks of 1000 chars",
        model.id(),
        model.dims(),
        texts.len()
    );
    model.embed(&texts[..8]).expect("warm-up");
    println!(
        "candle splits work in {} parts",
        candle_core::utils::get_num_threads()
    );
    for threads in [1, 2] {
        let pool = pool(threads);
        pool.install(|| {
            for batch in [1, 8, 32] {
                let rate = throughput(&model, &texts, batch);
                println!("threads {threads} batch {batch:>2}: {rate:7.1} chunks/s");
            }
            println!(
                "threads {threads} question latency: {:?}",
                question_latency(&model)
            );
        });
        let rate = two_callers(&pool, &model, &texts, 32);
        println!("threads {threads} two callers, batch 32: {rate:7.1} chunks/s");
    }
}
