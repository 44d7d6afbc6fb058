//! The JSON of the OpenAI-compatible protocol: request bodies fgo sends and the lenient
//! reading of what servers answer.
//!
//! Everything read here comes from a server and is untrusted: a missing or mistyped field
//! is absent (never a panic), numbers are bounded, and only the first choice is read. A
//! response without `choices` is an error for its request alone.

use serde_json::{json, Value};

use crate::engine::generate::{FinishReason, Usage};
use crate::llm::ChatRequest;

/// The body of `POST /v1/chat/completions` for `request`, with every sampling parameter
/// fgo has (`top_k` too: vLLM, SGLang and llama.cpp accept it).
pub fn chat_body(served_name: &str, request: &ChatRequest) -> Value {
    let p = &request.params;
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({ "role": m.role, "content": m.content }))
        .collect();
    let mut body = json!({
        "model": served_name,
        "messages": messages,
        "temperature": p.temperature,
        "max_tokens": p.max_new_tokens,
        "seed": p.seed,
        "stream": false,
    });
    if let Some(top_p) = p.top_p {
        body["top_p"] = json!(top_p);
    }
    if let Some(top_k) = p.top_k {
        body["top_k"] = json!(top_k);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if p.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    body
}

/// What one chat completion response says.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub text: String,
    pub finish_reason: FinishReason,
    /// Token counts; `cached_prompt_tokens` is 0 when the server did not report it.
    pub usage: Usage,
    /// Whether the server reported cached prompt tokens (in either form).
    pub cached_reported: bool,
    /// Whether the server reported `usage` at all.
    pub usage_reported: bool,
    /// The server's own prompt and generation seconds, where it reports them (llama.cpp).
    pub server_times: Option<(f64, f64)>,
}

/// A count read from untrusted JSON: a non-negative integer (or integral float) that fits.
fn count(value: &Value) -> Option<usize> {
    if let Some(n) = value.as_u64() {
        return usize::try_from(n).ok();
    }
    let f = value.as_f64()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1e15).then_some(f as usize)
}

/// Seconds from a millisecond field, if it is a sane number.
fn millis(value: &Value) -> Option<f64> {
    let ms = value.as_f64()?;
    (ms.is_finite() && (0.0..1e10).contains(&ms)).then_some(ms / 1000.0)
}

/// Reads a chat completion response; `Err` says what is missing.
pub fn parse_chat(body: &Value) -> Result<ChatReply, String> {
    let choice = match body.get("choices") {
        Some(Value::Array(choices)) => choices
            .first()
            .ok_or_else(|| "the response has an empty `choices`".to_string())?,
        Some(_) => return Err("the response's `choices` is not a list".into()),
        None => return Err("the response has no `choices`".into()),
    };
    let text = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .or_else(|| choice.get("text"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let stopped_by_string = choice.get("stop_reason").is_some_and(Value::is_string);
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        Some("stop") if stopped_by_string => FinishReason::StopString,
        _ => FinishReason::Eos,
    };
    let usage = body.get("usage").filter(|u| u.is_object());
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(count);
    let standard_cached = usage
        .and_then(|u| u.get("prompt_tokens_details"))
        .and_then(|d| d.get("cached_tokens"))
        .and_then(count);
    let timings = body.get("timings").filter(|t| t.is_object());
    let llama_cached = timings.and_then(|t| t.get("cache_n")).and_then(count);
    let cached = standard_cached.or(llama_cached);
    let prompt_tokens = field("prompt_tokens").unwrap_or(0);
    let server_times = timings.and_then(|t| {
        Some((
            millis(t.get("prompt_ms")?)?,
            millis(t.get("predicted_ms")?)?,
        ))
    });
    Ok(ChatReply {
        text,
        finish_reason,
        usage: Usage {
            prompt_tokens,
            // Never more cached tokens than prompt tokens, whatever the server says.
            cached_prompt_tokens: cached.unwrap_or(0).min(prompt_tokens),
            completion_tokens: field("completion_tokens").unwrap_or(0),
        },
        cached_reported: cached.is_some(),
        usage_reported: usage.is_some(),
        server_times,
    })
}

/// The token count of a `/tokenize` response: vLLM's `count`, else the length of
/// `tokens` (llama.cpp, vLLM).
pub fn parse_token_count(body: &Value) -> Option<usize> {
    body.get("count").and_then(count).or_else(|| {
        body.get("tokens")
            .and_then(Value::as_array)
            .map(|tokens| tokens.len())
    })
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    pub id: String,
    /// `owned_by`, which names llama.cpp's server (`llamacpp`).
    pub owned_by: String,
    /// vLLM's and SGLang's `max_model_len`.
    pub max_model_len: Option<usize>,
    /// llama.cpp's `meta.n_ctx_train` (the training context, not the server's).
    pub n_ctx_train: Option<usize>,
}

/// The models a `GET /v1/models` response lists (`data`, then llama.cpp's `models`).
pub fn parse_models(body: &Value) -> Vec<ServedModel> {
    let list = body
        .get("data")
        .and_then(Value::as_array)
        .or_else(|| body.get("models").and_then(Value::as_array));
    list.into_iter()
        .flatten()
        .filter_map(|m| {
            let id = m
                .get("id")
                .or_else(|| m.get("model"))
                .or_else(|| m.get("name"))?
                .as_str()?;
            Some(ServedModel {
                id: id.to_string(),
                owned_by: m
                    .get("owned_by")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                max_model_len: m.get("max_model_len").and_then(count),
                n_ctx_train: m
                    .get("meta")
                    .and_then(|meta| meta.get("n_ctx_train"))
                    .and_then(count),
            })
        })
        .collect()
}

/// The per-sequence context of a llama.cpp `GET /props` response.
pub fn parse_props_context(body: &Value) -> Option<usize> {
    body.get("default_generation_settings")
        .and_then(|s| s.get("n_ctx"))
        .or_else(|| body.get("n_ctx"))
        .and_then(count)
        .filter(|&n| n > 0)
}

/// The longest server message kept in an error.
const MESSAGE_CHARS: usize = 300;

/// The message of an error response, on one line: `error.message`, `error`, `message` or
/// `detail` of a JSON body, else the body's text; at most [`MESSAGE_CHARS`] characters.
pub fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let pick = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        v.get("error")
            .and_then(|e| e.get("message").and_then(pick).or_else(|| pick(e)))
            .or_else(|| v.get("message").and_then(pick))
            .or_else(|| v.get("detail").and_then(pick))
    });
    let text = from_json.unwrap_or_else(|| body.to_string());
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = crate::error::printable(&one_line)
        .chars()
        .take(MESSAGE_CHARS)
        .collect();
    if short.chars().count() == MESSAGE_CHARS {
        short.push_str("...");
    }
    if short.is_empty() {
        short = "(no message)".into();
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chat::ChatMessage;
    use crate::engine::sampling::SamplingParams;

    #[test]
    fn the_body_carries_every_sampling_parameter() {
        let request = ChatRequest {
            messages: vec![ChatMessage::system("s"), ChatMessage::user("u")],
            params: SamplingParams {
                temperature: 0.5,
                top_k: Some(40),
                top_p: Some(0.9),
                seed: 7,
                max_new_tokens: 12,
                stop: vec!["\n".into()],
                ignore_eos: false,
            },
        };
        let body = chat_body("m", &request);
        assert_eq!(body["model"], "m");
        assert_eq!(body["messages"][1]["content"], "u");
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["top_k"], 40);
        assert!((body["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["max_tokens"], 12);
        assert_eq!(body["stop"][0], "\n");
        assert!(body.get("ignore_eos").is_none());
        let greedy = chat_body(
            "m",
            &ChatRequest {
                messages: vec![],
                params: SamplingParams::greedy(),
            },
        );
        assert!(greedy.get("top_k").is_none() && greedy.get("stop").is_none());
    }

    #[test]
    fn usage_and_cached_tokens_in_the_standard_form() {
        let body = json!({
            "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                      "prompt_tokens_details": {"cached_tokens": 8}}
        });
        let r = parse_chat(&body).unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(
            r.usage,
            Usage {
                prompt_tokens: 10,
                cached_prompt_tokens: 8,
                completion_tokens: 3
            }
        );
        assert!(r.cached_reported && r.usage_reported);
    }

    #[test]
    fn cached_tokens_in_llama_cpp_timings_and_absent_ones() {
        let body = json!({
            "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 1},
            "timings": {"cache_n": 16, "prompt_ms": 12.5, "predicted_ms": 40.0}
        });
        let r = parse_chat(&body).unwrap();
        assert_eq!(r.usage.cached_prompt_tokens, 16);
        assert!(r.cached_reported);
        assert_eq!(r.server_times, Some((0.0125, 0.04)));
        assert_eq!(r.finish_reason, FinishReason::Eos);

        let absent = json!({
            "choices": [{"message": {"content": "x"}, "finish_reason": "stop", "stop_reason": "\n"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 1}
        });
        let r = parse_chat(&absent).unwrap();
        assert!(!r.cached_reported);
        assert_eq!(r.usage.cached_prompt_tokens, 0);
        assert_eq!(r.finish_reason, FinishReason::StopString);
        // The standard field wins over llama.cpp's, and never exceeds the prompt.
        let both = json!({
            "choices": [{"message": {"content": ""}}],
            "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}},
            "timings": {"cache_n": 1}
        });
        assert_eq!(parse_chat(&both).unwrap().usage.cached_prompt_tokens, 5);
    }

    #[test]
    fn odd_responses_are_read_leniently_without_panicking() {
        assert!(parse_chat(&json!({})).unwrap_err().contains("no `choices`"));
        assert!(parse_chat(&json!({"choices": []}))
            .unwrap_err()
            .contains("empty"));
        assert!(parse_chat(&json!({"choices": 3}))
            .unwrap_err()
            .contains("not a list"));
        let odd = json!({
            "choices": [{"message": {"content": null}, "finish_reason": 7}],
            "usage": {"prompt_tokens": -3, "completion_tokens": 1e300,
                      "prompt_tokens_details": null},
            "timings": {"cache_n": "many", "prompt_ms": -1, "predicted_ms": 5}
        });
        let r = parse_chat(&odd).unwrap();
        assert_eq!(r.text, "");
        assert_eq!(r.usage, Usage::default());
        assert!(!r.cached_reported);
        assert_eq!(r.server_times, None);
        let no_usage = parse_chat(&json!({"choices": [{"text": "t"}]})).unwrap();
        assert_eq!(no_usage.text, "t");
        assert!(!no_usage.usage_reported);
        for v in [
            json!(null),
            json!([1, 2]),
            json!("x"),
            json!({"choices": [null]}),
        ] {
            let _ = parse_chat(&v);
        }
    }

    #[test]
    fn token_counts_models_and_props() {
        assert_eq!(parse_token_count(&json!({"tokens": [1, 2, 3]})), Some(3));
        assert_eq!(
            parse_token_count(&json!({"count": 4, "tokens": [1]})),
            Some(4)
        );
        assert_eq!(parse_token_count(&json!({"error": "x"})), None);
        let models = parse_models(&json!({"data": [
            {"id": "a", "owned_by": "vllm", "max_model_len": 8192},
            {"id": "b", "owned_by": "llamacpp", "meta": {"n_ctx_train": 2048}},
            {"no_id": 1}
        ]}));
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].max_model_len, Some(8192));
        assert_eq!(models[1].n_ctx_train, Some(2048));
        assert!(parse_models(&json!({"data": "x"})).is_empty());
        assert_eq!(
            parse_props_context(&json!({"default_generation_settings": {"n_ctx": 1024}})),
            Some(1024)
        );
        assert_eq!(parse_props_context(&json!({"n_ctx": 0})), None);
    }

    #[test]
    fn error_messages_are_one_short_line() {
        assert_eq!(
            error_message(r#"{"error": {"message": "bad\nthing", "code": 400}}"#),
            "bad thing"
        );
        assert_eq!(error_message(r#"{"detail": "nope"}"#), "nope");
        assert_eq!(error_message(r#"{"error": "plain"}"#), "plain");
        assert_eq!(error_message("<html>\n<b>x</b>"), "<html> <b>x</b>");
        assert_eq!(error_message(""), "(no message)");
        let long = error_message(&"y".repeat(5000));
        assert!(long.len() < 400 && long.ends_with("..."));
        assert_eq!(error_message("\u{1b}[31m").lines().count(), 1);
    }
}
