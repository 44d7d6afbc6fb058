//! Benchmarks of the engine's throughput pieces: attention over cache blocks, prefix
//! lookup, and whole scheduler steps on a real (tiny) model.
//!
//! `cargo bench --bench engine`. The end-to-end figures (`fgo bench`) are in BENCHMARKS.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fgo::engine::kv::{KvDtype, KvLayer, KvLayout, KvStore, SeqKv};
use fgo::engine::model::attention::AttentionSpec;
use fgo::engine::model::paged_attention::{paged_attention, PagedSeq};
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{Engine, GenerationRequest, LoadOptions, Prompt};

/// One decode step of `sequences` sequences, each attending over `context` cached
/// positions in scattered blocks (qwen2.5-1.5b's head layout: 12 query, 2 key/value heads),
/// with keys and values in single and in half precision.
fn attention_over_blocks(c: &mut Criterion) {
    let layout = KvLayout {
        n_layers: 1,
        n_kv_heads: 2,
        head_dim: 128,
        block_size: 16,
        dtype: KvDtype::F32,
    };
    let spec = AttentionSpec {
        n_heads: 12,
        n_kv_heads: 2,
        scale: 1.0 / (128f32).sqrt(),
        softcap: None,
        window: None,
    };
    let mut group = c.benchmark_group("paged_attention_decode");
    for &(sequences, context) in &[(1usize, 512usize), (16, 512), (32, 1024)] {
        let blocks_each = context.div_ceil(16);
        let n_blocks = sequences * blocks_each;
        let floats = n_blocks * layout.block_elements();
        let keys: Vec<f32> = (0..floats)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let values: Vec<f32> = (0..floats)
            .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
            .collect();
        // Interleave the sequences' blocks, as a busy pool would.
        let tables: Vec<Vec<u32>> = (0..sequences)
            .map(|s| {
                (0..blocks_each)
                    .map(|b| (b * sequences + s) as u32)
                    .collect()
            })
            .collect();
        let seqs: Vec<PagedSeq> = tables
            .iter()
            .enumerate()
            .map(|(row, blocks)| PagedSeq {
                row,
                new: 1,
                start: context - 1,
                blocks,
            })
            .collect();
        let q: Vec<f32> = (0..sequences * 12 * 128)
            .map(|i| (i % 7) as f32 / 7.0)
            .collect();
        let mut out = vec![0f32; q.len()];
        let half =
            |x: &[f32]| -> Vec<half::f16> { x.iter().map(|&v| half::f16::from_f32(v)).collect() };
        let (keys_f16, values_f16) = (half(&keys), half(&values));
        for (name, kv) in [
            (
                "f32",
                KvLayer::F32 {
                    keys: &keys,
                    values: &values,
                },
            ),
            (
                "f16",
                KvLayer::F16 {
                    keys: &keys_f16,
                    values: &values_f16,
                },
            ),
        ] {
            group.bench_function(
                BenchmarkId::from_parameter(format!("{sequences}x{context}-{name}")),
                |b| b.iter(|| paged_attention(&spec, &layout, kv, &q, &seqs, &mut out)),
            );
        }
    }
    group.finish();
}

/// Attaching the cached prefix of a 544-token prompt in a store holding 64 such prompts.
fn prefix_lookup(c: &mut Criterion) {
    let layout = KvLayout {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 1,
        block_size: 16,
        dtype: KvDtype::default(),
    };
    let mut store = KvStore::with_blocks(layout, 4096);
    let prompt = |i: u32| -> Vec<u32> {
        (0..512)
            .chain((0..32).map(|t| 100_000 + i * 32 + t))
            .collect()
    };
    for i in 0..64 {
        let mut seq = SeqKv::new();
        let p = prompt(i);
        store.ensure_capacity(&mut seq, p.len()).expect("room");
        let zeros = vec![0f32; p.len()];
        store.write(0, &seq, &zeros, &zeros);
        store.commit(&mut seq, &p);
        store.release(&mut seq);
    }
    let probe = prompt(1000);
    c.bench_function("prefix_attach_544", |b| {
        b.iter(|| {
            let mut seq = SeqKv::new();
            let reused = store.attach_prefix(&mut seq, &probe);
            store.release(&mut seq);
            reused
        })
    });
}

/// Whole scheduler runs of 16 short requests on the tiny test model: admission, forward
/// steps over ragged sequences, sampling and retirement.
fn scheduler_steps(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3-tiny.gguf");
    let engine = Engine::load(&path, &LoadOptions::default()).expect("load qwen3-tiny");
    let requests: Vec<GenerationRequest> = (0..16u32)
        .map(|i| GenerationRequest {
            prompt: Prompt::Tokens {
                ids: (1..40).chain([100 + i]).collect(),
            },
            params: SamplingParams {
                max_new_tokens: 8,
                ignore_eos: true,
                ..SamplingParams::default()
            },
        })
        .collect();
    c.bench_function("scheduler_16x8_tiny_model", |b| {
        b.iter(|| engine.generate_batch(&requests))
    });
}

criterion_group!(
    benches,
    attention_over_blocks,
    prefix_lookup,
    scheduler_steps
);
criterion_main!(benches);
