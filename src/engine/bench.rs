//! Speed measurements: single-sequence prompt processing and generation in the manner of
//! llama-bench (`pp` tokens in one step; `tg` tokens one step at a time, from an empty
//! context and after a `pp`-token context), aggregate decoding with many sequences per
//! step, and a shared-prefix workload through the scheduler with prefix reuse off and on.

use std::time::Instant;

use serde::Serialize;

use crate::engine::generate::{Engine, GenerationRequest, Prompt};
use crate::engine::kv::{KvStore, SeqKv};
use crate::engine::model::{LogitsWanted, Model, SeqStep};
use crate::engine::sampling::{argmax, SamplingParams};
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
    // Ids from 1000 up skip the special tokens of real vocabularies; a vocabulary smaller
    // than that (a test model) uses all of its ids.
    let first = if vocab > 1000 { 1000 } else { 0 };
    let span = (vocab - first).max(1) as u64;
    (0..n as u64)
        .map(|i| (first as u64 + (i * 2_654_435_761) % span) as u32)
        .collect()
}

fn decode(model: &Model, cache: &mut crate::engine::kv::KvCache, n: usize) -> Result<f64> {
    let mut token = synthetic_tokens(1, model.config().vocab_size)[0];
    let started = Instant::now();
    for _ in 0..n {
        let logits =
            model.forward_single(cache, std::slice::from_ref(&token), LogitsWanted::Last)?;
        let row = logits.squeeze(0)?.to_vec1::<f32>()?;
        token = argmax(&row);
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Measures prompt processing and generation speed of one sequence.
pub fn run(model: &Model, prompt_tokens: usize, generated_tokens: usize) -> Result<BenchReport> {
    let prompt = synthetic_tokens(prompt_tokens, model.config().vocab_size);
    let mut cache = model.new_cache();
    let started = Instant::now();
    model.forward_single(&mut cache, &prompt, LogitsWanted::Last)?;
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

/// Aggregate decoding speed with many sequences in each forward step.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyPoint {
    pub sequences: usize,
    /// Generated tokens per second, summed over all sequences.
    pub tokens_per_s: f64,
    /// Relative to one sequence (when the run included one).
    pub speedup: Option<f64>,
}

/// Decodes `steps` tokens for each of `sequences` sequences at once (each after its own
/// `prompt`-token context) and returns the aggregate rate.
pub fn decode_throughput(
    model: &Model,
    sequences: usize,
    prompt: usize,
    steps: usize,
) -> Result<f64> {
    let layout = model.kv_layout(crate::engine::kv::DEFAULT_BLOCK_SIZE);
    let blocks_each = (prompt + steps).div_ceil(layout.block_size);
    let mut store = KvStore::with_blocks(layout, sequences * blocks_each);
    let vocab = model.config().vocab_size;
    let mut seqs: Vec<SeqKv> = (0..sequences).map(|_| SeqKv::new()).collect();
    // Distinct prompts so that no two sequences are the same computation.
    let prompts: Vec<Vec<u32>> = (0..sequences)
        .map(|i| {
            let t = synthetic_tokens(prompt + sequences, vocab);
            t[i..i + prompt].to_vec()
        })
        .collect();
    let mut next: Vec<u32> = run_step(model, &mut store, &mut seqs, &prompts)?;
    let started = Instant::now();
    for _ in 0..steps {
        let inputs: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        next = run_step(model, &mut store, &mut seqs, &inputs)?;
    }
    Ok((sequences * steps) as f64 / started.elapsed().as_secs_f64())
}

/// One forward step of every sequence; returns each one's greedy next token.
fn run_step(
    model: &Model,
    store: &mut KvStore,
    seqs: &mut [SeqKv],
    inputs: &[Vec<u32>],
) -> Result<Vec<u32>> {
    let mut steps: Vec<SeqStep> = seqs
        .iter_mut()
        .zip(inputs)
        .map(|(seq, tokens)| SeqStep {
            tokens,
            seq,
            logits: LogitsWanted::Last,
        })
        .collect();
    model
        .forward(store, &mut steps)?
        .iter()
        .map(|l| Ok(argmax(&l.squeeze(0)?.to_vec1::<f32>()?)))
        .collect()
}

/// Shape of the shared-prefix scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PrefixShape {
    pub requests: usize,
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
    pub new_tokens: usize,
}

/// The shared-prefix scenario run with and without prefix reuse.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixReport {
    pub shape: PrefixShape,
    pub reuse_off_s: f64,
    pub reuse_on_s: f64,
    pub speedup: f64,
    /// Prompt tokens served from the cache, summed over requests, with reuse on.
    pub cached_prompt_tokens: usize,
    pub prompt_tokens: usize,
}

/// Runs `shape.requests` requests that share a `prefix_tokens` prefix, each with its own
/// suffix, through the engine's scheduler, with prefix reuse off then on.
pub fn prefix_scenario(engine: &Engine, shape: PrefixShape) -> Result<PrefixReport> {
    let vocab = engine.config().vocab_size;
    let all = synthetic_tokens(
        shape.prefix_tokens + shape.requests * shape.suffix_tokens,
        vocab,
    );
    let (prefix, suffixes) = all.split_at(shape.prefix_tokens);
    let requests: Vec<GenerationRequest> = suffixes
        .chunks(shape.suffix_tokens.max(1))
        .take(shape.requests)
        .map(|suffix| GenerationRequest {
            prompt: Prompt::Tokens {
                ids: prefix.iter().chain(suffix).copied().collect(),
            },
            params: SamplingParams {
                max_new_tokens: shape.new_tokens,
                ignore_eos: true,
                ..SamplingParams::default()
            },
        })
        .collect();
    let timed = |reuse: bool| -> Result<(f64, usize, usize)> {
        engine.set_prefix_reuse(reuse);
        let started = Instant::now();
        let mut cached = 0;
        let mut prompt = 0;
        for result in engine.generate_batch(&requests) {
            let usage = result?.usage;
            cached += usage.cached_prompt_tokens;
            prompt += usage.prompt_tokens;
        }
        Ok((started.elapsed().as_secs_f64(), cached, prompt))
    };
    let (reuse_off_s, _, _) = timed(false)?;
    let (reuse_on_s, cached_prompt_tokens, prompt_tokens) = timed(true)?;
    Ok(PrefixReport {
        shape,
        reuse_off_s,
        reuse_on_s,
        speedup: reuse_off_s / reuse_on_s,
        cached_prompt_tokens,
        prompt_tokens,
    })
}
