//! Single-sequence speed measurements in the manner of llama-bench: prompt processing of
//! `pp` tokens in one step, and generation of `tg` tokens one step at a time, from an empty
//! context and after a `pp`-token context.

use std::time::Instant;

use serde::Serialize;

use crate::engine::model::{LogitsWanted, Model, SeqStep};
use crate::engine::sampling::argmax;
use crate::error::Result;

/// Results of [`run`], in tokens per second.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing: `prompt_tokens` in one forward step.
    pub pp_tokens_per_s: f64,
    /// Generation from an empty context.
    pub tg_tokens_per_s: f64,
    /// Generation after a `prompt_tokens` context.
    pub tg_after_prompt_tokens_per_s: f64,
}

/// Token ids spread over the vocabulary, deterministic, avoiding the first ids (specials).
fn synthetic_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(1000).max(1) as u64;
    (0..n as u64)
        .map(|i| (1000 + (i * 2_654_435_761) % span) as u32)
        .collect()
}

fn decode(model: &Model, cache: &mut crate::engine::kv::KvCache, n: usize) -> Result<f64> {
    let mut token = synthetic_tokens(1, model.config().vocab_size)[0];
    let started = Instant::now();
    for _ in 0..n {
        let logits = model.forward(&mut [SeqStep {
            tokens: std::slice::from_ref(&token),
            cache,
            logits: LogitsWanted::Last,
        }])?;
        let row = logits[0].squeeze(0)?.to_vec1::<f32>()?;
        token = argmax(&row);
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Measures prompt processing and generation speed of one sequence.
pub fn run(model: &Model, prompt_tokens: usize, generated_tokens: usize) -> Result<BenchReport> {
    let prompt = synthetic_tokens(prompt_tokens, model.config().vocab_size);
    let mut cache = model.new_cache();
    let started = Instant::now();
    model.forward(&mut [SeqStep {
        tokens: &prompt,
        cache: &mut cache,
        logits: LogitsWanted::Last,
    }])?;
    let pp = prompt_tokens as f64 / started.elapsed().as_secs_f64();
    let tg_after = decode(model, &mut cache, generated_tokens)?;
    let mut fresh = model.new_cache();
    let tg = decode(model, &mut fresh, generated_tokens)?;
    Ok(BenchReport {
        prompt_tokens,
        generated_tokens,
        pp_tokens_per_s: pp,
        tg_tokens_per_s: tg,
        tg_after_prompt_tokens_per_s: tg_after,
    })
}

/// Peak resident memory of this process so far, in bytes (Linux; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
