//! Test doubles: a scripted [`Llm`] whose replies are a function of the request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::llm::{ChatRequest, Completion, FinishReason, Llm, Timings, Usage};

type Script = Box<dyn Fn(&ChatRequest) -> String + Send + Sync>;

/// A model that answers each request with `script(request)`; counts live requests.
pub struct ScriptedLlm {
    pub script: Script,
    pub requests: AtomicUsize,
    pub batches: AtomicUsize,
    /// After this many requests, every further request fails (simulates a crash point).
    pub fail_after: Mutex<Option<usize>>,
}

impl ScriptedLlm {
    pub fn new(script: impl Fn(&ChatRequest) -> String + Send + Sync + 'static) -> Self {
        Self {
            script: Box::new(script),
            requests: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            fail_after: Mutex::new(None),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Llm for ScriptedLlm {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(text.len().div_ceil(4))
    }
    fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        requests
            .iter()
            .map(|r| {
                let n = self.requests.fetch_add(1, Ordering::SeqCst);
                if let Some(limit) = *self.fail_after.lock().unwrap() {
                    if n >= limit {
                        return Err(Error::Request("scripted failure".into()));
                    }
                }
                let text = (self.script)(r);
                let prompt: usize = r.messages.iter().map(|m| m.content.len().div_ceil(4)).sum();
                Ok(Completion {
                    token_ids: vec![],
                    finish_reason: FinishReason::Eos,
                    usage: Usage {
                        prompt_tokens: prompt,
                        cached_prompt_tokens: 0,
                        completion_tokens: text.len().div_ceil(4),
                    },
                    timings: Timings::default(),
                    text,
                })
            })
            .collect()
    }
}
