//! TEMPORARY stub of the LLM seam (the real module lands with the engine on `main`; on
//! merge, take main's version of this file).

use crate::engine::chat::ChatMessage;
use crate::engine::sampling::SamplingParams;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// One chat request: a conversation and how to sample its reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    StopString,
    Length,
    ContextFull,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where one request's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// A language model that completes batches of chat requests.
pub trait Llm: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// The context window, in tokens.
    fn context_length(&self) -> usize;
    /// How many tokens `text` takes.
    fn count_tokens(&self, text: &str) -> Result<usize>;
    /// Completes every request; per-request results in order.
    fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>>;
}
