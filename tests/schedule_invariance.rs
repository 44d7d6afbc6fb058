//! A sequence's logits are a function of its tokens alone, bit for bit: not of how its
//! prompt was cut into chunks, of what else shared its forward steps, nor of whether its
//! prefix came from the cache. The 8-bit rounding of activations before every quantized
//! product turns any difference in summation order into logit differences of up to about
//! 2 on these models, enough to flip a greedy token; so this is checked exactly, on a
//! llama, a gemma3 (sliding window) and a qwen2 (projection biases) file.

mod common;

use candle_core::Device;
use fgo::engine::gguf::GgufFile;
use fgo::engine::kv::SeqKv;
use fgo::engine::model::{LogitsWanted, Model, SeqStep};

const MODELS: [(&str, &str); 3] = [
    ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3-270m", "gemma-3-270m-q4_k_m.gguf"),
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct.gguf"),
];

fn load(alias: &str, file: &str) -> Model {
    let path = common::model_path_for(alias, file);
    let mut gguf = GgufFile::open(&path).expect("open");
    Model::load(&mut gguf, &Device::Cpu).expect("load")
}

/// `n` token ids spread over the vocabulary, away from the special ids at its start.
fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 300 + (i * 7919 + salt * 104_729) % 20_000)
        .collect()
}

/// The logits of every position of `seq`, fed in steps of `chunks` tokens; each step also
/// advances every sequence of `others` by up to as many tokens, in the same forward call.
fn schedule(model: &Model, seq: &[u32], chunks: &[usize], others: &[Vec<u32>]) -> Vec<Vec<f32>> {
    assert_eq!(chunks.iter().sum::<usize>(), seq.len());
    let mut store = model.new_kv_store(64 << 20).expect("store");
    let mut ours = SeqKv::new();
    let mut theirs: Vec<(SeqKv, usize)> = others.iter().map(|_| (SeqKv::new(), 0)).collect();
    let (mut at, mut rows) = (0, Vec::new());
    for &chunk in chunks {
        let mut steps = vec![SeqStep {
            tokens: &seq[at..at + chunk],
            seq: &mut ours,
            logits: LogitsWanted::All,
        }];
        for (other, (kv, done)) in others.iter().zip(theirs.iter_mut()) {
            let n = chunk.min(other.len() - *done);
            if n > 0 {
                steps.push(SeqStep {
                    tokens: &other[*done..*done + n],
                    seq: kv,
                    logits: LogitsWanted::Last,
                });
                *done += n;
            }
        }
        let out = model.forward(&mut store, &mut steps).expect("forward");
        rows.extend(out[0].to_vec2::<f32>().expect("rows"));
        at += chunk;
    }
    rows
}

/// The first position whose logits differ from `want`'s in any bit, and by how much.
fn first_difference(want: &[Vec<f32>], got: &[Vec<f32>]) -> Option<(usize, f32)> {
    assert_eq!(want.len(), got.len());
    want.iter().zip(got).enumerate().find_map(|(i, (a, b))| {
        let differs = a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits());
        differs.then(|| {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            (i, worst)
        })
    })
}

#[test]
fn logits_do_not_depend_on_chunking_batching_or_neighbours() {
    let seq = tokens(150, 1);
    let others = [tokens(70, 2), tokens(200, 3)];
    for (alias, file) in MODELS {
        let model = load(alias, file);
        let whole = schedule(&model, &seq, &[150], &[]);
        let cases = [
            ("token by token", schedule(&model, &seq, &[1; 150], &[])),
            ("chunks of 10", schedule(&model, &seq, &[10; 15], &[])),
            ("100 + 50", schedule(&model, &seq, &[100, 50], &[])),
            (
                "whole, beside two others",
                schedule(&model, &seq, &[150], &others),
            ),
            (
                "uneven chunks, beside two others",
                schedule(&model, &seq, &[33, 1, 80, 36], &others),
            ),
        ];
        for (name, got) in cases {
            if let Some((position, worst)) = first_difference(&whole, &got) {
                panic!("{alias}, {name}: logits at position {position} differ (up to {worst})");
            }
        }
    }
}

/// A prefix computed for one sequence and attached to another from the cache gives the
/// second the logits it gets computing everything itself.
#[test]
fn a_cached_prefix_gives_the_logits_of_computing_it() {
    let (alias, file) = MODELS[1];
    let model = load(alias, file);
    let block = model.kv_layout(16).block_size;
    let (prefix, tail) = (tokens(5 * block, 4), tokens(21, 5));
    let full: Vec<u32> = prefix.iter().chain(&tail).copied().collect();
    let want = schedule(&model, &full, &[full.len()], &[]);

    let mut store = model.new_kv_store(64 << 20).expect("store");
    // First a sequence that shares the prefix and goes on differently, in one step.
    let mut first = SeqKv::new();
    let other: Vec<u32> = prefix.iter().chain(&tokens(40, 6)).copied().collect();
    model
        .forward(
            &mut store,
            &mut [SeqStep {
                tokens: &other,
                seq: &mut first,
                logits: LogitsWanted::None,
            }],
        )
        .expect("forward");
    store.release(&mut first);
    let mut second = SeqKv::new();
    let reused = store.attach_prefix(&mut second, &full);
    assert_eq!(
        reused,
        prefix.len(),
        "the prefix was not served from the cache"
    );
    let rest = model
        .forward(
            &mut store,
            &mut [SeqStep {
                tokens: &full[reused..],
                seq: &mut second,
                logits: LogitsWanted::All,
            }],
        )
        .expect("forward")
        .remove(0)
        .to_vec2::<f32>()
        .expect("rows");
    if let Some((position, worst)) = first_difference(&want[reused..], &rest) {
        panic!("position {} differs (up to {worst})", reused + position);
    }
}
