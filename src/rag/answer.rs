//! The answer to a question, from the passages `retrieve::decide` kept:
//! "I could not find that in your documents." below the relevance floor,
//! else an extractive answer or the LLM's, with the passages as sources.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::extractive;
use super::hit::Hit;
use super::retrieve::Decision;

/// The whole answer when nothing relevant was found; it cites no sources.
pub const NOT_FOUND: &str = "I could not find that in your documents.";

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

    /// Sends the passages in rank order, each under its `[n]` marker.
    async fn complete(&self, question: &str, passages: &[Hit]) -> Result<String, AnswerError> {
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

fn sources_of(passages: &[Hit]) -> Vec<Source> {
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

/// Answers `question` from the decision's passages (in rank order, `[n]` =
/// rank), with the LLM when one is configured. Not answerable: exactly
/// [`NOT_FOUND`], no sources, and the LLM is not asked.
pub async fn answer(
    question: &str,
    decision: &Decision,
    llm: Option<&LlmClient>,
) -> Result<Answer, AnswerError> {
    let passages = &decision.hits;
    if !decision.answerable || passages.is_empty() {
        return Ok(Answer {
            content: NOT_FOUND.to_string(),
            sources: vec![],
        });
    }
    let sources = sources_of(passages);
    let body = match llm {
        Some(llm) => llm.complete(question, passages).await?,
        None => extractive::extract(&decision.terms, passages),
    };
    Ok(Answer {
        content: format!("{body}\n\nSources:\n{}", source_list(&sources)),
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::fuse::tests::hit;
    use crate::rag::relevance::Signals;
    use crate::rag::relevance::tests::term;
    use crate::rag::retrieve::{ANSWERABLE, Mode};

    fn decision(hits: Vec<Hit>, answerable: bool) -> Decision {
        Decision {
            terms: vec![term("reimburs", 3.0), term("work", 20.0)],
            hits,
            answerable,
            why: ANSWERABLE,
            mode: Mode::Bm25,
            fell_back: false,
            signals: Signals::default(),
        }
    }

    #[tokio::test]
    async fn extractive_answer_cites_its_sources_in_rank_order() {
        let mut a = hit(
            1,
            "Refunds are paid within 30 days. Reimbursement needs a receipt. Lunch is free.",
        );
        a.filename = "handbook.pdf".into();
        a.chunk_index = 2;
        let b = hit(2, "Vacation days accrue monthly.");
        let a = answer(
            "How does reimbursement work?",
            &decision(vec![a, b], true),
            None,
        )
        .await
        .unwrap();
        assert!(
            a.content.starts_with(
                "From your documents:\n- Reimbursement needs a receipt. [1]\n\nSources:\n"
            ),
            "{}",
            a.content
        );
        assert!(
            a.content
                .contains("[1] handbook.pdf, chunk 2\n[2] doc2.md, chunk 2"),
            "{}",
            a.content
        );
        assert!(!a.content.contains("Lunch"), "{}", a.content);
        let names: Vec<_> = a
            .sources
            .iter()
            .map(|s| (s.n, s.filename.as_str()))
            .collect();
        assert_eq!(names, vec![(1, "handbook.pdf"), (2, "doc2.md")]);
    }

    #[tokio::test]
    async fn below_the_floor_says_so_without_sources_or_the_llm() {
        // An LLM that cannot be reached: asking it would fail the answer.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let llm = LlmClient::new("http://127.0.0.1:1/v1/chat/completions", "m", None);
        let d = decision(vec![hit(1, "Reimbursement needs a receipt.")], false);
        let a = answer("How does reimbursement work?", &d, Some(&llm))
            .await
            .unwrap();
        assert_eq!(a.content, NOT_FOUND);
        assert_eq!(a.content, "I could not find that in your documents.");
        assert!(a.sources.is_empty());
        assert_eq!(a.sources_json(), json!([]));
        let a = answer("anything?", &decision(vec![], true), None)
            .await
            .unwrap();
        assert_eq!(a.content, NOT_FOUND);
    }
}
