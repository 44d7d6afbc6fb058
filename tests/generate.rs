//! End-to-end generation on real models: coherent answers, seeded sampling, and batched
//! requests giving the same text as one-at-a-time requests.

use std::process::Command;

use fgo::engine::chat::ChatMessage;
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{Engine, GenerationRequest, LoadOptions, Prompt};

mod common;

fn smollm() -> Engine {
    let path = common::model_path_for("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    Engine::load(path, &LoadOptions::default()).expect("load smollm2")
}

fn chat(system: &str, user: &str, params: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::system(system), ChatMessage::user(user)],
        },
        params,
    }
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn smollm2_answers_a_simple_chat_prompt() {
    let engine = smollm();
    let out = engine
        .generate(&chat(
            "You are a helpful assistant.",
            "What is the capital of France?",
            greedy(24),
        ))
        .expect("generate");
    eprintln!("smollm2: {:?}", out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert!(out.usage.prompt_tokens > 10);
    assert_eq!(out.usage.completion_tokens, out.token_ids.len());
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let engine = smollm();
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        top_p: Some(0.95),
        seed,
        max_new_tokens: 24,
        ..SamplingParams::default()
    };
    let request = |seed| {
        chat(
            "You are a poet.",
            "Write a line about the sea.",
            sampled(seed),
        )
    };
    let a = engine.generate(&request(7)).expect("generate").text;
    let b = engine.generate(&request(7)).expect("generate").text;
    let texts: Vec<String> = (8..12)
        .map(|s| engine.generate(&request(s)).expect("generate").text)
        .collect();
    assert_eq!(a, b, "same seed must give the same text");
    assert!(texts.iter().any(|t| *t != a), "other seeds all gave {a:?}");
}

#[test]
fn batched_requests_equal_single_requests() {
    let engine = smollm();
    let requests = vec![
        chat(
            "You are a helpful assistant.",
            "Name three colours.",
            greedy(16),
        ),
        chat("You are terse.", "What is 2 + 2?", greedy(8)),
        chat(
            "You are a helpful assistant who explains things at length.",
            "Why is the sky blue? Explain the physics in detail please.",
            greedy(20),
        ),
    ];
    let batched = engine.generate_batch(&requests);
    for (request, batched) in requests.iter().zip(batched) {
        let single = engine.generate(request).expect("single");
        let batched = batched.expect("batched");
        assert_eq!(batched.usage.prompt_tokens, single.usage.prompt_tokens);
        assert_eq!(batched.token_ids, single.token_ids, "{request:?}");
        // The batch left the prompt's full blocks in the cache.
        assert!(
            single.usage.cached_prompt_tokens >= single.usage.prompt_tokens - 16,
            "{:?}",
            single.usage
        );
    }
}

#[test]
fn stop_strings_and_token_limits_end_generation() {
    let engine = smollm();
    let counting = "Count from 1 to 20, separated by commas.";
    let mut params = greedy(40);
    params.stop = vec!["5".to_string()];
    let out = engine
        .generate(&chat("You are a helpful assistant.", counting, params))
        .expect("generate");
    assert!(!out.text.contains('5'), "{:?}", out.text);
    assert_eq!(
        out.finish_reason,
        fgo::llm::FinishReason::StopString,
        "{:?}",
        out.text
    );
    let out = engine
        .generate(&chat("You are a helpful assistant.", counting, greedy(3)))
        .expect("generate");
    assert_eq!(out.usage.completion_tokens, 3);
    assert_eq!(out.finish_reason, fgo::llm::FinishReason::Length);
}

#[test]
fn one_bad_request_fails_alone() {
    let engine = smollm();
    let too_long = "word ".repeat(9000);
    let results = engine.generate_batch(&[
        chat("s", &too_long, greedy(4)),
        chat("You are a helpful assistant.", "Say hello.", greedy(4)),
    ]);
    let err = results[0].as_ref().expect_err("too long").to_string();
    assert!(err.contains("context window"), "{err}");
    assert!(results[1].is_ok());
}

/// The acceptance command, through the binary.
#[test]
fn qwen_1_5b_says_paris() {
    let model = common::model_path_for("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt",
            "What is the capital of France? Answer with one word.",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ])
        .output()
        .expect("run fgo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "{stdout:?}");
}

/// A large key/value budget is address space, not resident memory: pages are committed
/// only as blocks are written. (The f16 cache once wrote its whole budget at load: a
/// short generation on a 4 GiB budget was 4.46 GB resident.)
#[test]
fn a_large_kv_budget_is_not_resident_memory() {
    let model = common::model_path_for("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    for dtype in ["f16", "f32"] {
        let out = Command::new(env!("CARGO_BIN_EXE_fgo"))
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", "Say hi.", "--max-tokens", "4", "--threads", "1"])
            .args(["--kv-budget", "2G", "--kv-dtype", dtype, "--json"])
            .output()
            .expect("run fgo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let peak = report["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
        assert!(
            peak < 1 << 30,
            "{dtype} cache: {peak} bytes resident for a 2 GiB budget and a few tokens"
        );
    }
}
