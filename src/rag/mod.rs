//! Retrieval-augmented generation: text extraction from uploads, chunking,
//! and answering a question from retrieved passages: fusing the rankings
//! (`fuse`), the relevance floor (`relevance`, `retrieve::decide`), then an
//! extractive answer or an OpenAI-compatible chat-completions endpoint
//! (`answer`).

mod answer;
pub mod budget;
pub mod child;
pub mod chunk;
mod confine;
pub mod extract;
mod extractive;
pub mod fuse;
pub mod hit;
pub mod html_depth;
pub mod pdf_budget;
pub mod relevance;
pub mod retrieve;
pub mod sandbox;
mod seccomp;
pub mod self_test;
mod text;

pub use answer::{Answer, AnswerError, LlmClient, NOT_FOUND, Source, answer};
