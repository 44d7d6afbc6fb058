//! The OpenAI response bodies: whole responses, streamed chunks and usage.

use serde_json::{json, Value};

use crate::engine::generate::{Completion, FinishReason, Usage};

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// What every response and chunk of one request carries.
#[derive(Debug, Clone)]
pub struct Meta {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// A fresh id for `kind`: random, so that ids of restarted servers do not collide.
    pub fn new(kind: Kind, model: &str) -> Self {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            kind,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// A whole response with `choices`.
    pub fn response(&self, choices: Vec<Value>, usage: &UsageSum) -> Value {
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.json(),
        })
    }

    /// One streamed chunk holding `choices` (and the usage, for the last one).
    pub fn chunk(&self, choices: Vec<Value>, usage: Option<&UsageSum>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage.json();
        }
        chunk
    }

    /// A whole choice.
    pub fn choice(&self, index: usize, text: &str, finish: FinishReason) -> Value {
        match self.kind {
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }),
            Kind::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }),
        }
    }

    /// A streamed piece of a choice: its first delta (the role, for chat), more text, or
    /// its end.
    pub fn delta(&self, index: usize, text: &str, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(finish_reason);
        match self.kind {
            Kind::Chat => {
                let delta = if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
            }
        }
    }

    /// The first chunk of a chat choice: the assistant role, no text yet.
    pub fn role(&self, index: usize) -> Value {
        json!({
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        })
    }
}

/// OpenAI's name for why a choice ended.
pub fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

/// The usage of a request: prompt tokens once per prompt (not per choice), completion
/// tokens of every choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSum {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl UsageSum {
    /// Adds one choice's usage; `first` marks the first choice of its prompt, whose prompt
    /// counts (and whose cached tokens say how much of the prompt was found cached).
    pub fn add(&mut self, usage: &Usage, first: bool) {
        if first {
            self.prompt_tokens += usage.prompt_tokens;
            self.cached_tokens += usage.cached_prompt_tokens;
        }
        self.completion_tokens += usage.completion_tokens;
    }

    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// A finished choice's text, with the prompt first when echoing.
pub fn choice_text(completion: &Completion, echo: Option<&str>) -> String {
    match echo {
        Some(prompt) => format!("{prompt}{}", completion.text),
        None => completion.text.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_prompt_once() {
        let mut sum = UsageSum::default();
        let u = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            completion_tokens: 3,
        };
        sum.add(&u, true);
        sum.add(&u, false);
        let j = sum.json();
        assert_eq!(j["prompt_tokens"], 10);
        assert_eq!(j["completion_tokens"], 6);
        assert_eq!(j["total_tokens"], 16);
        assert_eq!(j["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn chunks_have_the_openai_shape() {
        let meta = Meta::new(Kind::Chat, "m");
        assert!(meta.id.starts_with("chatcmpl-"));
        let c = meta.chunk(vec![meta.delta(1, "hi", None)], None);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["content"], "hi");
        assert!(c["choices"][0]["finish_reason"].is_null());
        let end = meta.delta(1, "", Some(FinishReason::StopString));
        assert_eq!(end["finish_reason"], "stop");
        assert_eq!(end["delta"], json!({}));
        let meta = Meta::new(Kind::Completion, "m");
        let c = meta.choice(0, "x", FinishReason::ContextFull);
        assert_eq!(c["text"], "x");
        assert_eq!(c["finish_reason"], "length");
    }
}
