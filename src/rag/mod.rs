//! Retrieval-augmented generation: text extraction from uploads, chunking,
//! and answering a question from retrieved passages, extractively or with an
//! OpenAI-compatible chat-completions endpoint.

pub mod budget;
pub mod child;
pub mod chunk;
mod confine;
pub mod extract;
pub mod hit;
mod html_depth;
mod pdf_budget;
pub mod sandbox;
mod seccomp;
pub mod self_test;

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::db::chat::Passage;

/// A cited source of an answer; `n` is the `[n]` marker in the text.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub n: usize,
    pub document_id: uuid::Uuid,
    pub filename: String,
    pub chunk_index: i32,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub content: String,
    pub sources: Vec<Source>,
}

impl Answer {
    pub fn sources_json(&self) -> Value {
        serde_json::to_value(&self.sources).expect("sources serialise")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("LLM request failed: {0}")]
    Llm(String),
}

#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

impl LlmClient {
    pub fn new(url: &str, model: &str, api_key: Option<String>) -> LlmClient {
        LlmClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a client with only a timeout always builds"),
            url: url.to_string(),
            model: model.to_string(),
            api_key,
        }
    }

    async fn complete(&self, question: &str, passages: &[Passage]) -> Result<String, AnswerError> {
        let mut context = String::new();
        for (i, p) in passages.iter().enumerate() {
            context.push_str(&format!(
                "[{}] ({}, chunk {})\n{}\n\n",
                i + 1,
                p.filename,
                p.chunk_index,
                p.content
            ));
        }
        let body = json!({
            "model": self.model,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "Answer only from the numbered sources. Cite each claim with its marker, like [1]. If the sources do not answer the question, say so."},
                {"role": "user", "content": format!("Sources:\n{context}Question: {question}")}
            ]
        });
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AnswerError::Llm(e.to_string()))?;
        let status = resp.status();
        let value: Value = resp
            .json()
            .await
            .map_err(|e| AnswerError::Llm(format!("HTTP {status}, unreadable body: {e}")))?;
        if !status.is_success() {
            return Err(AnswerError::Llm(format!("HTTP {status}: {value}")));
        }
        value["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AnswerError::Llm("response has no choices[0].message.content".into()))
    }
}

fn sources_of(passages: &[Passage]) -> Vec<Source> {
    passages
        .iter()
        .enumerate()
        .map(|(i, p)| Source {
            n: i + 1,
            document_id: p.document_id,
            filename: p.filename.clone(),
            chunk_index: p.chunk_index,
        })
        .collect()
}

fn source_list(sources: &[Source]) -> String {
    sources
        .iter()
        .map(|s| format!("[{}] {}, chunk {}", s.n, s.filename, s.chunk_index))
        .collect::<Vec<_>>()
        .join("\n")
}

const NOTHING_FOUND: &str = "I could not find anything about that in your ingested documents.";

/// Answers `question` from `passages`, with the LLM when one is configured.
pub async fn answer(
    question: &str,
    passages: &[Passage],
    llm: Option<&LlmClient>,
) -> Result<Answer, AnswerError> {
    if passages.is_empty() {
        return Ok(Answer {
            content: NOTHING_FOUND.to_string(),
            sources: vec![],
        });
    }
    let sources = sources_of(passages);
    let body = match llm {
        Some(llm) => llm.complete(question, passages).await?,
        None => extractive(question, passages),
    };
    Ok(Answer {
        content: format!("{body}\n\nSources:\n{}", source_list(&sources)),
        sources,
    })
}

const STOPWORDS: &[&str] = &[
    "the", "and", "for", "are", "what", "how", "does", "with", "that", "this", "from", "our",
    "your", "you", "can", "who", "when", "where", "which", "about", "is", "do", "of", "to", "in",
    "a", "an", "on", "it", "be", "i", "we", "my", "me", "any", "there", "many", "much",
];

fn terms(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 2 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Picks the sentences that share the most words with the question, each
/// marked with its passage number, in passage order.
fn extractive(question: &str, passages: &[Passage]) -> String {
    let wanted = terms(question);
    let mut scored: Vec<(usize, usize, usize, String)> = Vec::new(); // score, passage, position, sentence
    for (pi, p) in passages.iter().enumerate() {
        for (si, sentence) in sentences(&p.content).into_iter().enumerate() {
            let score = terms(&sentence).intersection(&wanted).count();
            if score > 0 {
                scored.push((score, pi, si, sentence));
            }
        }
    }
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    scored.truncate(3);
    if scored.is_empty() {
        // Full-text search matched on stems; fall back to the best passage.
        let first = sentences(&passages[0].content)
            .into_iter()
            .take(2)
            .collect::<Vec<_>>();
        return format!("From your documents: {} [1]", first.join(" "));
    }
    scored.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
    let lines: Vec<String> = scored
        .into_iter()
        .map(|(_, pi, _, s)| format!("- {s} [{}]", pi + 1))
        .collect();
    format!("From your documents:\n{}", lines.join("\n"))
}

fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c == '\n' && cur.trim().is_empty() {
            continue;
        }
        cur.push(if c == '\n' { ' ' } else { c });
        if matches!(c, '.' | '!' | '?') || (c == '\n' && cur.len() > 200) {
            let s = cur.split_whitespace().collect::<Vec<_>>().join(" ");
            if s.chars().count() > 3 {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 3 {
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(name: &str, idx: i32, content: &str) -> Passage {
        Passage {
            document_id: uuid::Uuid::nil(),
            filename: name.into(),
            chunk_index: idx,
            content: content.into(),
            rank: 1.0,
        }
    }

    #[tokio::test]
    async fn extractive_answer_cites_its_sources() {
        let ps = vec![
            passage(
                "handbook.pdf",
                2,
                "Refunds are paid within 30 days. Reimbursement needs a receipt. Lunch is free.",
            ),
            passage("handbook.md", 0, "Vacation days accrue monthly."),
        ];
        let a = answer("How does reimbursement of refunds work?", &ps, None)
            .await
            .unwrap();
        assert!(
            a.content.contains("Reimbursement needs a receipt. [1]"),
            "{}",
            a.content
        );
        assert!(
            a.content.contains("[1] handbook.pdf, chunk 2"),
            "{}",
            a.content
        );
        assert!(!a.content.contains("Lunch"), "{}", a.content);
        assert_eq!(a.sources.len(), 2);
        assert_eq!(a.sources[0].filename, "handbook.pdf");
    }

    #[tokio::test]
    async fn no_passages_says_so() {
        let a = answer("anything?", &[], None).await.unwrap();
        assert_eq!(a.content, NOTHING_FOUND);
        assert!(a.sources.is_empty());
    }
}
