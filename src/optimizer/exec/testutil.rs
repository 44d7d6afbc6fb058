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
                let mut text = (self.script)(r);
                // Four bytes a token, as `count_tokens` says; a longer reply is cut at the
                // limit, as a model's is.
                let limit = r.params.max_new_tokens.saturating_mul(4);
                let mut finish_reason = FinishReason::Eos;
                // A stop string ends the reply and is cut from it, as the engine does.
                if let Some(at) = r
                    .params
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(at);
                    finish_reason = FinishReason::StopString;
                }
                if text.len() > limit {
                    let mut end = limit;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    finish_reason = FinishReason::Length;
                }
                let prompt: usize = r.messages.iter().map(|m| m.content.len().div_ceil(4)).sum();
                Ok(Completion {
                    token_ids: vec![],
                    finish_reason,
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
