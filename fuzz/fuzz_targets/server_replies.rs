//! What an OpenAI-compatible server sends back, as the HTTP backend reads it: chat
//! completions, token counts, the model list and llama.cpp's properties.
#![no_main]

use fgo::llm::wire::{parse_chat, parse_models, parse_props_context, parse_token_count};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = parse_chat(&body);
    let _ = parse_token_count(&body);
    let _ = parse_models(&body);
    let _ = parse_props_context(&body);
});
