//! Limits the engine enforces on requests, through the library API: sizes near the top of
//! their type never overflow, and an oversized prompt is refused before it is tokenized.

use std::time::{Duration, Instant};

use fgo::engine::chat::ChatMessage;
use fgo::engine::generate::{check_kv_budget, FinishReason};
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{Engine, GenerationRequest, LoadOptions, Prompt};
use fgo::error::Error;

mod common;

fn tiny() -> Engine {
    let path = common::crate_root().join("tests/fixtures/qwen3-tiny.gguf");
    let options = LoadOptions {
        kv_budget_bytes: Some(64 << 20),
        ..LoadOptions::default()
    };
    Engine::load(path, &options).expect("load the tiny model")
}

fn params(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

#[test]
fn max_new_tokens_at_the_top_of_usize_stops_at_the_context() {
    let engine = tiny();
    let request = GenerationRequest {
        prompt: Prompt::Text { text: "hi".into() },
        params: params(usize::MAX),
    };
    let completion = engine.generate(&request).expect("generates");
    assert_eq!(completion.finish_reason, FinishReason::ContextFull);
    let used = completion.usage.prompt_tokens + completion.usage.completion_tokens;
    assert!(used <= engine.config().context_length, "{used}");
}

#[test]
fn a_prompt_of_20_mb_is_refused_before_tokenizing() {
    let engine = tiny();
    let text = "word ".repeat(4_000_000);
    for prompt in [
        Prompt::Text { text: text.clone() },
        Prompt::Chat {
            messages: vec![ChatMessage::user(text.clone())],
        },
    ] {
        let started = Instant::now();
        let err = engine
            .generate(&GenerationRequest {
                prompt,
                params: params(4),
            })
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("prompt of 20000000 bytes does not fit the context window"),
            "{err}"
        );
        // Tokenizing 20 MB takes many seconds; the refusal is immediate.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_kv_budget_beyond_the_available_memory_is_refused() {
    let err = check_kv_budget(70 << 30, Some(16 << 30)).expect_err("refused");
    assert!(matches!(err, Error::InvalidArgument { ref name, .. } if name == "kv-budget"));
    assert!(err.to_string().contains("memory available"), "{err}");
    check_kv_budget(1 << 30, Some(16 << 30)).expect("fits");
    check_kv_budget(usize::MAX, None).expect("unknown memory: no refusal");
}
