//! The seam between the optimizer and whatever runs the language model.
//!
//! The optimizer sees only [`Llm`]: submit many chat requests at once, get each completion
//! back with its usage. The embedded [`Engine`] implements it, and so does
//! [`openai::OpenAiLlm`], a client of OpenAI-compatible servers (vLLM, SGLang, llama.cpp),
//! so a user can move to a bigger machine without touching the optimizer. A model spec
//! ([`spec::ModelSpec`]) says which: `NAME@URL[,URL...]` is remote, anything else local.

pub mod identity;
pub mod notes;
pub mod openai;
pub mod retry;
pub mod spec;
pub mod wire;

use crate::engine::chat::ChatMessage;
use crate::engine::generate::{Engine, GenerationRequest, Prompt};
use crate::engine::sampling::SamplingParams;
use crate::engine::scheduler::StepStats;
use crate::error::Result;

pub use crate::engine::generate::{Completion, FinishReason, Timings, Usage};

/// One chat request: a conversation and how to sample its reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
}

/// A language model that completes batches of chat requests.
pub trait Llm: Send + Sync {
    /// A short name for reports (the model file or endpoint).
    fn name(&self) -> String;

    /// What the model is, for call keys: two models with the same identity give the same
    /// answers to the same request. The engine's is its GGUF file's SHA-256; a remote
    /// model's is its served name and sorted endpoints. Defaults to [`Llm::name`].
    fn identity(&self) -> String {
        self.name()
    }

    /// The context window, in tokens.
    fn context_length(&self) -> usize;

    /// What the model's forward steps did so far, for a model run in this process (how full
    /// its batches were kept); `None` for a model served elsewhere.
    fn step_stats(&self) -> Option<StepStats> {
        None
    }

    /// How many tokens `text` takes (for truncating prompts to fit).
    fn count_tokens(&self, text: &str) -> Result<usize>;

    /// Completes every request; results come back in request order, each on its own, so one
    /// failing request does not fail the others. Implementations should run requests
    /// concurrently where they can.
    fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>>;

    /// Completes every request and hands each result to `on_done` with the request's index
    /// as soon as that request is finished, so a caller can record it before the slowest
    /// request of the batch ends. The default waits for the whole batch.
    fn complete_each(
        &self,
        requests: &[ChatRequest],
        on_done: &mut dyn FnMut(usize, Result<Completion>),
    ) {
        for (index, result) in self.complete(requests).into_iter().enumerate() {
            on_done(index, result);
        }
    }
}

impl Llm for Engine {
    fn name(&self) -> String {
        self.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The file's SHA-256 (hashed once per file version, see [`identity`]); the path
    /// where the file cannot be read.
    fn identity(&self) -> String {
        identity::file_identity(self.path()).unwrap_or_else(|e| {
            tracing::warn!("model identity falls back to the path: {e}");
            format!("path:{}", self.path().display())
        })
    }

    fn context_length(&self) -> usize {
        self.config().context_length
    }

    fn step_stats(&self) -> Option<StepStats> {
        Some(Engine::step_stats(self))
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer().encode(text)?.len())
    }

    fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>> {
        self.generate_batch(&generation_requests(requests))
    }

    fn complete_each(
        &self,
        requests: &[ChatRequest],
        on_done: &mut dyn FnMut(usize, Result<Completion>),
    ) {
        self.generate_each(&generation_requests(requests), on_done);
    }
}

fn generation_requests(requests: &[ChatRequest]) -> Vec<GenerationRequest> {
    requests
        .iter()
        .map(|r| GenerationRequest {
            prompt: Prompt::Chat {
                messages: r.messages.clone(),
            },
            params: r.params.clone(),
        })
        .collect()
}
