//! A whole model load from a GGUF file (header, configuration, tokenizer, template and
//! tensors), then one short greedy generation when it loads.
#![no_main]

use fgo::engine::chat::ChatMessage;
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{Engine, GenerationRequest, LoadOptions, Prompt};
use libfuzzer_sys::fuzz_target;

#[path = "../common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("model.gguf", data);
    let options = LoadOptions {
        kv_budget_bytes: Some(8 << 20),
        ..LoadOptions::default()
    };
    let Ok(engine) = Engine::load(&path, &options) else {
        return;
    };
    let request = GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "Hi")],
        },
        params: SamplingParams {
            max_new_tokens: 4,
            ..SamplingParams::default()
        },
    };
    let _ = engine.generate(&request);
});
