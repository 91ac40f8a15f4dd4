//! Asking the QA set's questions and judging each answer's sources
//! against the chunks in the database (shared by the run and `--scale`).

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client as Db;
use uuid::Uuid;

use super::retrieval_client::{Client, Reply};
use super::retrieval_set::{Outcome, QaSet, contains_phrase, rank_of};

/// Asks every question; each one's outcome and request latency.
pub(super) async fn ask_all(
    client: &Client,
    db: &Db,
    set: &QaSet,
) -> anyhow::Result<(Vec<Outcome>, Vec<Duration>)> {
    let mut outcomes = Vec::new();
    let mut latencies = Vec::new();
    for q in &set.questions {
        let reply = client
            .ask(&q.question)
            .await
            .with_context(|| format!("question {}", q.id))?;
        latencies.push(reply.latency);
        outcomes.push(judge(db, &reply, q.answer.as_deref()).await?);
    }
    Ok((outcomes, latencies))
}

async fn judge(db: &Db, reply: &Reply, answer: Option<&str>) -> anyhow::Result<Outcome> {
    let Some(phrase) = answer else {
        return Ok(Outcome::Unanswerable {
            sources: reply.sources.len(),
        });
    };
    let mut texts = Vec::new();
    for s in &reply.sources {
        let row = db
            .query_opt(
                "SELECT content FROM chunks WHERE document_id = $1 AND chunk_index = $2",
                &[&s.document_id, &s.chunk_index],
            )
            .await?;
        texts.push(row.map(|r| r.get::<_, String>(0)).unwrap_or_default());
    }
    Ok(Outcome::Answerable {
        rank: rank_of(&texts, phrase),
        sources: texts.len(),
        stated: contains_phrase(&reply.content, phrase),
    })
}

pub(super) async fn count_chunks(db: &Db, user: Uuid) -> anyhow::Result<u64> {
    let row = db
        .query_one("SELECT count(*) FROM chunks WHERE user_id = $1", &[&user])
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
