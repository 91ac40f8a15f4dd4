//! The `--scale N` phase of `bench --retrieval`: one user with about N
//! chunks (documents made of the corpus's paragraphs, shuffled, uploaded
//! through REST; two other users with documents of their own), then the
//! QA set's questions asked as that user for the latency at that size.

use std::time::Duration;

use tokio_postgres::Client as Db;
use uuid::Uuid;

use super::crowd::token;
use super::progress::progress;
use super::retrieval_ask::{ask_all, count_chunks};
use super::retrieval_client::Client;
use super::retrieval_set::QaSet;

/// Characters of each generated document.
const DOC_CHARS: usize = 100_000;
/// Users besides the big one (each gets a tenth of its documents, at
/// least one).
const OTHERS: usize = 2;

/// The big user's chunk count and the questions' latencies.
pub(super) async fn run(
    api: &str,
    secret: &str,
    db: &Db,
    set: &QaSet,
    target: u64,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let paragraphs = paragraphs(set)?;
    let per_chunk = chars_per_chunk(db).await?;
    let mut docs_gen = Generator {
        paragraphs,
        seed: 0x9e37_79b9_7f4a_7c15,
    };
    for _ in 0..OTHERS {
        let other = Client::new(api, &token(secret, Uuid::new_v4())?)?;
        let docs = (target as f64 * per_chunk / DOC_CHARS as f64 / 10.0)
            .ceil()
            .max(1.0);
        upload_docs(&other, &mut docs_gen, docs as usize).await?;
    }
    let big = Uuid::new_v4();
    let client = Client::new(api, &token(secret, big)?)?;
    // Top up until the user has the target (the estimate is rough).
    let mut chunks = 0;
    while chunks < target * 95 / 100 {
        let missing = (target - chunks) as f64 * per_chunk;
        let docs = (missing / DOC_CHARS as f64).ceil().max(1.0) as usize;
        progress(&format!(
            "scale: {chunks} chunks; uploading {docs} more documents"
        ));
        upload_docs(&client, &mut docs_gen, docs).await?;
        chunks = count_chunks(db, big).await?;
    }
    progress(&format!("scale: {chunks} chunks; asking the questions"));
    let (_, latencies) = ask_all(&client, db, set).await?;
    Ok((chunks, latencies))
}

async fn upload_docs(client: &Client, docs_gen: &mut Generator, n: usize) -> anyhow::Result<()> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, text) = docs_gen.next_doc();
        ids.push(client.upload(&name, text.as_bytes()).await?);
    }
    client.wait_ingested(&ids).await
}

/// Characters of extracted text per chunk so far (the step between chunk
/// starts: length minus about the overlap).
async fn chars_per_chunk(db: &Db) -> anyhow::Result<f64> {
    let row = db
        .query_one(
            "SELECT coalesce(avg(length(content)), 800)::float8 FROM chunks",
            &[],
        )
        .await?;
    Ok((row.get::<_, f64>(0) * 0.85).max(50.0))
}

/// The corpus's Markdown and text files, split on blank lines.
fn paragraphs(set: &QaSet) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for p in &set.corpus {
        if p.extension().is_some_and(|e| e == "html" || e == "pdf") {
            continue;
        }
        let text = std::fs::read_to_string(p)?;
        out.extend(
            text.split("\n\n")
                .map(str::trim)
                .filter(|s| s.len() > 40)
                .map(str::to_string),
        );
    }
    anyhow::ensure!(
        !out.is_empty(),
        "--scale: the corpus has no text paragraphs"
    );
    Ok(out)
}

/// Documents of shuffled paragraphs (xorshift: reproducible, no state
/// beyond the seed).
struct Generator {
    paragraphs: Vec<String>,
    seed: u64,
}

impl Generator {
    fn next_doc(&mut self) -> (String, String) {
        let mut text = String::with_capacity(DOC_CHARS + 1000);
        while text.len() < DOC_CHARS {
            let i = (self.next() % self.paragraphs.len() as u64) as usize;
            text.push_str(&self.paragraphs[i]);
            text.push_str("\n\n");
        }
        (format!("scale-{:016x}.txt", self.next()), text)
    }

    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }
}
