//! The OpenAI request bodies `fgo serve` accepts, read field by field from untrusted JSON.
//!
//! Each known field is read on its own so that a field of the wrong type is a 400 naming
//! it; unknown fields are ignored (clients send many that do not apply here), and `null`
//! counts as absent. Every list a client sends is bounded (the body itself is bounded by
//! the server), so parsing never allocates without limit.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::engine::chat::ChatMessage;
use crate::engine::generate::Prompt;
use crate::engine::sampling::SamplingParams;
use crate::serve::error::ApiError;

/// The most choices (`n`) one request may ask for.
pub const MAX_N: usize = 16;

/// The most prompts one `/v1/completions` request may carry.
pub const MAX_PROMPTS: usize = 16;

/// The most stop strings one request may give.
pub const MAX_STOPS: usize = 16;

/// The most bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 1024;

/// What both endpoints share: how to sample, how many choices, whether to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Sampling parameters; `seed` is the first choice's, `max_new_tokens` is a
    /// placeholder until [`Common::max_tokens`] is resolved against the prompt.
    pub params: SamplingParams,
    /// `max_tokens` or `max_completion_tokens`, if given.
    pub max_tokens: Option<usize>,
    /// Whether the client gave a seed (else the server draws one).
    pub seed: Option<u64>,
    pub n: usize,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// A `/v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatBody {
    pub messages: Vec<ChatMessage>,
    pub common: Common,
}

/// A `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionBody {
    pub prompts: Vec<Prompt>,
    /// Put the prompt before the completion in each choice's text.
    pub echo: bool,
    pub common: Common,
}

/// A `/tokenize` request: llama.cpp's `content` or vLLM's `prompt`, or `messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeBody {
    pub prompt: Prompt,
    /// Add the BOS where the model wants one (default true).
    pub add_special: bool,
}

/// Parses a body as a JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// A field of type `T`, `None` when absent or `null`, a 400 naming it when of another type.
fn field<T: DeserializeOwned>(obj: &Map<String, Value>, name: &str) -> Result<Option<T>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|e| ApiError::invalid_field(name, format!("`{name}`: {e}"))),
    }
}

/// Parses the fields both endpoints share.
fn common(obj: &Map<String, Value>) -> Result<Common, ApiError> {
    let mut params = SamplingParams::default();
    if let Some(t) = field::<f32>(obj, "temperature")? {
        params.temperature = t;
    }
    params.top_p = field::<f32>(obj, "top_p")?;
    // vLLM's -1 and llama.cpp's 0 both mean no limit.
    params.top_k = field::<i64>(obj, "top_k")?
        .filter(|&k| k > 0)
        .map(|k| usize::try_from(k).unwrap_or(usize::MAX));
    // OpenAI seeds are signed 64-bit integers; any value is a distinct seed.
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid_field("seed", "`seed`: must be an integer"))?,
        ),
    };
    params.seed = seed.unwrap_or(0);
    params.stop = stops(obj)?;
    params.ignore_eos = field::<bool>(obj, "ignore_eos")?.unwrap_or(false);
    let max_tokens = match field::<usize>(obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => field::<usize>(obj, "max_tokens")?,
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid_field(
            "max_tokens",
            "`max_tokens`: must be at least 1",
        ));
    }
    params.max_new_tokens = max_tokens.unwrap_or(1);
    params.validate().map_err(|e| ApiError::from_engine(&e))?;
    let n = field::<usize>(obj, "n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid_field(
            "n",
            format!("`n`: must be in 1..={MAX_N}, got {n}"),
        ));
    }
    let stream = field::<bool>(obj, "stream")?.unwrap_or(false);
    let include_usage = match field::<Map<String, Value>>(obj, "stream_options")? {
        Some(options) => field::<bool>(&options, "include_usage")?.unwrap_or(false),
        None => false,
    };
    Ok(Common {
        params,
        max_tokens,
        seed,
        n,
        stream,
        include_usage,
    })
}

/// `stop`: a string or a list of strings.
fn stops(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list = match obj.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid_field("stop", "`stop`: must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "stop",
                "`stop`: must be a string or a list of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid_field(
            "stop",
            format!("`stop`: at most {MAX_STOPS} strings"),
        ));
    }
    if list.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_field(
            "stop",
            format!("`stop`: each string at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

/// `messages`: a list of `{role, content}`; content is a string, a list of text parts
/// (joined by newlines), or `null` (empty).
fn messages(obj: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |i: usize, what: &str| {
        ApiError::invalid_field("messages", format!("`messages[{i}]`: {what}"))
    };
    let Some(list) = field::<Vec<Value>>(obj, "messages")? else {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages`: required, a list of messages",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages`: at least one message",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.as_object().ok_or_else(|| bad(i, "must be an object"))?;
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(i, "`role` must be a string"))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let texts = parts
                        .iter()
                        .map(
                            |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                                (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                                _ => Err(bad(i, "only text content parts are supported")),
                            },
                        )
                        .collect::<Result<Vec<_>, _>>()?;
                    texts.join("\n")
                }
                Some(_) => return Err(bad(i, "`content` must be a string or a list of parts")),
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Parses a `/v1/chat/completions` body.
pub fn chat(body: &[u8]) -> Result<ChatBody, ApiError> {
    let obj = object(body)?;
    Ok(ChatBody {
        messages: messages(&obj)?,
        common: common(&obj)?,
    })
}

/// One prompt of `/v1/completions`: a string or a list of token ids.
fn prompt_of(value: &Value) -> Option<Prompt> {
    match value {
        Value::String(text) => Some(Prompt::Text { text: text.clone() }),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect::<Option<Vec<u32>>>()
            .map(|ids| Prompt::Tokens { ids }),
        _ => None,
    }
}

/// Parses a `/v1/completions` body: `prompt` is a string, a list of token ids, or a
/// list of either (one set of choices per prompt).
pub fn completion(body: &[u8]) -> Result<CompletionBody, ApiError> {
    let obj = object(body)?;
    let bad = || {
        ApiError::invalid_field(
            "prompt",
            "`prompt`: must be a string, a list of token ids, or a list of those",
        )
    };
    let prompts = match obj.get("prompt") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_field("prompt", "`prompt`: required"))
        }
        Some(Value::Array(items))
            if !items.is_empty() && items.iter().all(|v| v.is_string() || v.is_array()) =>
        {
            if items.len() > MAX_PROMPTS {
                return Err(ApiError::invalid_field(
                    "prompt",
                    format!("`prompt`: at most {MAX_PROMPTS} prompts"),
                ));
            }
            items
                .iter()
                .map(prompt_of)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?
        }
        Some(value) => vec![prompt_of(value).ok_or_else(bad)?],
    };
    Ok(CompletionBody {
        prompts,
        echo: field::<bool>(&obj, "echo")?.unwrap_or(false),
        common: common(&obj)?,
    })
}

/// Parses a `/tokenize` body.
pub fn tokenize(body: &[u8]) -> Result<TokenizeBody, ApiError> {
    let obj = object(body)?;
    let add_special = field::<bool>(&obj, "add_special")?.unwrap_or(true);
    let prompt = if obj.get("messages").is_some_and(|m| !m.is_null()) {
        Prompt::Chat {
            messages: messages(&obj)?,
        }
    } else {
        let text = match field::<String>(&obj, "content")? {
            Some(text) => text,
            None => field::<String>(&obj, "prompt")?.ok_or_else(|| {
                ApiError::invalid_field("content", "`content` (or `prompt`): required")
            })?,
        };
        Prompt::Text { text }
    };
    Ok(TokenizeBody {
        prompt,
        add_special,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn chat_err(body: &str) -> ApiError {
        chat(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn a_full_chat_request_maps_to_sampling_params() {
        let body = r#"{"model": "x", "messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"},
            {"type": "text", "text": "b"}]}, {"role": "assistant", "content": null}],
            "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": -1, "max_tokens": 12,
            "stop": "END", "n": 2, "stream": true, "stream_options": {"include_usage": true},
            "presence_penalty": 0.5, "user": "u", "logit_bias": {}}"#;
        let r = chat(body.as_bytes()).expect("valid");
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[1].content, "a\nb");
        assert_eq!(r.messages[2].content, "");
        let c = r.common;
        assert_eq!(c.params.temperature, 0.7);
        assert_eq!(c.params.top_p, Some(0.9));
        assert_eq!(c.params.top_k, Some(40));
        assert_eq!(c.seed, Some(u64::MAX));
        assert_eq!(c.max_tokens, Some(12));
        assert_eq!(c.params.stop, vec!["END"]);
        assert_eq!((c.n, c.stream, c.include_usage), (2, true, true));
    }

    #[test]
    fn defaults_and_the_newer_max_tokens_name() {
        let r = chat(
            br#"{"messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 5, "max_tokens": 9, "top_k": -1, "stop": ["a", "b"]}"#,
        )
        .expect("valid");
        let c = r.common;
        assert_eq!(c.max_tokens, Some(5));
        assert_eq!(c.params.top_k, None);
        assert_eq!(c.params.temperature, 0.0);
        assert_eq!(c.seed, None);
        assert_eq!(c.params.stop, vec!["a", "b"]);
        assert_eq!((c.n, c.stream, c.include_usage), (1, false, false));
    }

    #[test]
    fn wrong_types_and_ranges_name_the_field() {
        let msgs = r#""messages": [{"role": "user", "content": "hi"}]"#;
        for (extra, param) in [
            (r#""temperature": "hot""#, "temperature"),
            (r#""temperature": -1"#, "temperature"),
            (r#""top_p": 1.5"#, "top_p"),
            (r#""max_tokens": "ten""#, "max_tokens"),
            (r#""max_tokens": 0"#, "max_tokens"),
            (r#""max_tokens": -3"#, "max_tokens"),
            (r#""n": 0"#, "n"),
            (r#""n": 1000"#, "n"),
            (r#""stream": "yes""#, "stream"),
            (r#""stop": 3"#, "stop"),
            (r#""stop": ["a", 1]"#, "stop"),
            (r#""seed": 1.5"#, "seed"),
            (r#""stream_options": {"include_usage": 1}"#, "include_usage"),
        ] {
            let e = chat_err(&format!("{{{msgs}, {extra}}}"));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{extra}");
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e:?}");
        }
        let many: Vec<String> = (0..=MAX_STOPS).map(|i| format!("\"s{i}\"")).collect();
        let e = chat_err(&format!("{{{msgs}, \"stop\": [{}]}}", many.join(",")));
        assert_eq!(e.param.as_deref(), Some("stop"));
    }

    #[test]
    fn malformed_bodies_and_messages_are_refused() {
        for body in [
            "",
            "{",
            "[1, 2]",
            "\"text\"",
            r#"{"messages": []}"#,
            r#"{"messages": "hi"}"#,
            r#"{"messages": [{"content": "no role"}]}"#,
            r#"{"messages": [{"role": "user", "content": 5}]}"#,
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            r#"{"model": "no messages"}"#,
        ] {
            assert_eq!(chat_err(body).status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn completion_prompts_in_every_shape() {
        let one = completion(br#"{"prompt": "Once", "echo": true}"#).expect("valid");
        assert_eq!(
            one.prompts,
            vec![Prompt::Text {
                text: "Once".into()
            }]
        );
        assert!(one.echo);
        let ids = completion(br#"{"prompt": [1, 2, 3]}"#).expect("valid");
        assert_eq!(ids.prompts, vec![Prompt::Tokens { ids: vec![1, 2, 3] }]);
        let many = completion(br#"{"prompt": ["a", [7]]}"#).expect("valid");
        assert_eq!(many.prompts.len(), 2);
        for body in [
            r#"{}"#,
            r#"{"prompt": 3}"#,
            r#"{"prompt": [1, "a"]}"#,
            r#"{"prompt": [-1]}"#,
            r#"{"prompt": [4294967296]}"#,
            r#"{"prompt": "a", "echo": "yes"}"#,
        ] {
            let e = completion(body.as_bytes()).expect_err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        }
        let too_many: Vec<&str> = vec!["\"p\""; MAX_PROMPTS + 1];
        let body = format!("{{\"prompt\": [{}]}}", too_many.join(","));
        assert!(completion(body.as_bytes()).is_err());
    }

    #[test]
    fn tokenize_takes_either_servers_field() {
        let a = tokenize(br#"{"content": "hi"}"#).expect("llama.cpp");
        let b = tokenize(br#"{"prompt": "hi", "add_special": false}"#).expect("vLLM");
        assert_eq!(a.prompt, b.prompt);
        assert!(a.add_special && !b.add_special);
        let c = tokenize(br#"{"messages": [{"role": "user", "content": "hi"}]}"#).expect("chat");
        assert!(matches!(c.prompt, Prompt::Chat { .. }));
        assert!(tokenize(br#"{}"#).is_err());
        assert!(tokenize(br#"{"content": 1}"#).is_err());
    }
}
