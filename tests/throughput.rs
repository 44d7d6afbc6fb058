//! The paged cache, prefix reuse and continuous batching change how work is scheduled,
//! never what is computed: greedy completions equal one-at-a-time runs without reuse token
//! for token, under a small cache budget too, and requests that cannot fit are refused,
//! not hung.

mod common;

use fgo::engine::chat::ChatMessage;
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{Engine, GenerationRequest, LoadOptions, Prompt};

fn smollm(options: LoadOptions) -> Engine {
    let path = common::model_path_for("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    Engine::load(path, &options).expect("load smollm2")
}

fn no_reuse() -> LoadOptions {
    LoadOptions {
        prefix_reuse: false,
        ..LoadOptions::default()
    }
}

/// A shared system prompt of several blocks and distinct questions.
fn requests(max_new_tokens: usize) -> Vec<GenerationRequest> {
    let system = "You are a careful assistant for a small shop. Answer in one short \
                  sentence. Prices are in euros. The shop sells apples at 2 euros a kilo, \
                  pears at 3 euros a kilo and bread at 4 euros a loaf. It opens at nine.";
    [
        "How much is a loaf of bread?",
        "When does the shop open?",
        "What do apples cost?",
        "Do you sell pears?",
    ]
    .iter()
    .map(|q| GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::system(system), ChatMessage::user(*q)],
        },
        params: SamplingParams {
            max_new_tokens,
            ..SamplingParams::default()
        },
    })
    .collect()
}

#[test]
fn batched_prefix_reusing_runs_equal_single_runs() {
    let requests = requests(12);
    let reference = smollm(no_reuse());
    let single: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| reference.generate(r).expect("single").token_ids)
        .collect();

    let engine = smollm(LoadOptions::default());
    // First pass: one batch, the shared system prompt computed once within it. Second
    // pass: the same requests from two threads at once, everything but the last block of
    // each prompt served from the cache.
    let first = engine.generate_batch(&requests);
    let (a, b) = requests.split_at(2);
    let second: Vec<_> = std::thread::scope(|s| {
        let ha = s.spawn(|| engine.generate_batch(a));
        let hb = s.spawn(|| engine.generate_batch(b));
        let mut all = ha.join().expect("thread a");
        all.extend(hb.join().expect("thread b"));
        all
    });
    let mut first_cached = 0;
    for (pass, results) in [first, second].into_iter().enumerate() {
        for ((request, want), got) in requests.iter().zip(&single).zip(results) {
            let got = got.expect("batched");
            assert_eq!(&got.token_ids, want, "pass {pass}: {request:?}");
            let usage = got.usage;
            if pass == 0 {
                first_cached += usage.cached_prompt_tokens;
            } else {
                assert!(
                    usage.cached_prompt_tokens + 16 >= usage.prompt_tokens,
                    "second pass reused only {usage:?}"
                );
            }
        }
    }
    // Within the first batch, every request after the first reused the system prompt.
    assert!(
        first_cached >= 3 * 48,
        "first batch reused {first_cached} tokens"
    );
}

#[test]
fn a_small_budget_evicts_without_corrupting_running_sequences() {
    let requests = requests(10);
    let reference = smollm(no_reuse());
    let single: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| reference.generate(r).expect("single").token_ids)
        .collect();
    // Room for about two sequences at a time: the scheduler must queue the rest, and
    // cached prefixes must be evicted to make room.
    let block_bytes = reference.model().kv_layout(16).block_bytes();
    let engine = smollm(LoadOptions {
        kv_budget_bytes: Some(12 * block_bytes),
        ..LoadOptions::default()
    });
    // Distinct first blocks so that nothing can be shared and the cache churns.
    let mut distinct = requests.clone();
    for (i, r) in distinct.iter_mut().enumerate() {
        if let Prompt::Chat { messages } = &mut r.prompt {
            messages[0].content = format!("Shop {i}. {}", messages[0].content);
        }
    }
    let want: Vec<Vec<u32>> = distinct
        .iter()
        .map(|r| reference.generate(r).expect("single").token_ids)
        .collect();
    let all: Vec<GenerationRequest> = distinct.iter().chain(&requests).cloned().collect();
    let results = engine.generate_batch(&all);
    for ((request, want), got) in all.iter().zip(want.iter().chain(&single)).zip(results) {
        assert_eq!(&got.expect("batched").token_ids, want, "{request:?}");
    }
    let stats = engine.kv_stats();
    assert_eq!(stats.used_blocks, 0, "{stats:?}");
    assert!(stats.evictions > 0, "nothing was evicted: {stats:?}");
}

#[test]
fn a_request_larger_than_the_whole_cache_is_refused() {
    let probe = smollm(no_reuse());
    let block_bytes = probe.model().kv_layout(16).block_bytes();
    let engine = smollm(LoadOptions {
        kv_budget_bytes: Some(8 * block_bytes),
        ..LoadOptions::default()
    });
    let mut requests = requests(8);
    requests[1].params.max_new_tokens = 200;
    let results = engine.generate_batch(&requests[..3]);
    let err = results[1].as_ref().expect_err("too large").to_string();
    assert!(err.contains("key/value cache holds 128"), "{err}");
    assert!(results[0].is_ok() && results[2].is_ok());
}

/// The step counters say how full the batches were: a batch of four decodes several
/// sequences per step, `max_batch = 1` exactly one; every prompt token is either computed
/// or served from the cache.
#[test]
fn step_counters_measure_how_full_the_batches_were() {
    let requests = requests(6);
    for (max_batch, batched) in [(None, true), (Some(1), false)] {
        let engine = smollm(LoadOptions {
            max_batch,
            ..LoadOptions::default()
        });
        let before = engine.step_stats();
        let done: Vec<_> = engine
            .generate_batch(&requests)
            .into_iter()
            .map(|r| r.expect("generated"))
            .collect();
        let st = engine.step_stats().since(&before);
        let prompt: usize = done.iter().map(|c| c.usage.prompt_tokens).sum();
        let cached: usize = done.iter().map(|c| c.usage.cached_prompt_tokens).sum();
        assert_eq!(st.prefill_tokens as usize, prompt - cached, "{st:?}");
        assert!(st.decode_steps > 0 && st.decode_steps <= st.steps, "{st:?}");
        assert!(st.busy_s > 0.0, "{st:?}");
        if batched {
            assert!(st.mean_decode_batch() > 2.0, "batch of 4: {st:?}");
        } else {
            assert_eq!(st.decode_rows, st.decode_steps, "one at a time: {st:?}");
        }
    }
}
