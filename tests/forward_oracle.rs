//! Our forward pass against candle-transformers' quantized llama and qwen2 models, an
//! independent implementation on the same files, one token at a time. The arithmetic is
//! not identical (our own matmul kernels and activation quantisation, attention read in
//! place from the paged cache), so the two agree within the bounds used against llama.cpp;
//! a wrong rotation, head mapping or kernel misses them by far.
//!
//! That a prompt processed in one step gives exactly the logits of feeding it token by
//! token is checked in `tests/schedule_invariance.rs`.

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use fgo::engine::gguf::GgufFile;
use fgo::engine::model::{LogitsWanted, Model};
use fgo::engine::sampling::argmax;

mod common;

/// Largest difference of a logit relative to the top token (as against llama.cpp).
const LOGIT_TOLERANCE: f32 = 1.5;

/// Largest mean difference over all compared logits.
const MEAN_TOLERANCE: f32 = 0.2;

const PROMPT: &[u32] = &[
    504, 3575, 282, 4649, 314, 1085, 30, 216, 1012, 314, 253, 1345, 28, 198,
];

/// Our logits when feeding `tokens` one at a time (the decode path).
fn ours(file: &str, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut gguf = GgufFile::open(common::model_path(file)).expect("open");
    let model = Model::load(&mut gguf, &Device::Cpu).expect("load");
    let mut cache = model.new_cache();
    tokens
        .iter()
        .map(|t| {
            model
                .forward_single(&mut cache, std::slice::from_ref(t), LogitsWanted::Last)
                .expect("forward")
                .squeeze(0)
                .and_then(|t| t.to_vec1::<f32>())
                .expect("row")
        })
        .collect()
}

/// The bounds of the llama.cpp golden tests (`tests/forward_golden.rs`): every logit
/// relative to the reference's top token within [`LOGIT_TOLERANCE`], a small mean
/// difference, and the same greedy token wherever the reference's top two are further
/// apart than the tolerance.
fn check(name: &str, ours: Vec<Vec<f32>>, theirs: Vec<Vec<f32>>) {
    let (mut worst, mut sum, mut count) = (0f32, 0f64, 0usize);
    for (pos, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let top = argmax(b) as usize;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let diff = ((x - a[top]) - (y - b[top])).abs();
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{name} position {pos} token {i}: ours {x}, reference {y} (relative to token {top})"
            );
            worst = worst.max(diff);
            sum += f64::from(diff);
            count += 1;
        }
        let runner_up = b
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != top)
            .map(|(_, &y)| y)
            .fold(f32::NEG_INFINITY, f32::max);
        if b[top] - runner_up > LOGIT_TOLERANCE {
            assert_eq!(
                argmax(a) as usize,
                top,
                "{name} position {pos}: greedy token"
            );
        }
    }
    let mean = (sum / count as f64) as f32;
    eprintln!("{name}: relative to the top token, max |Δ| {worst:.4}, mean |Δ| {mean:.4}");
    assert!(mean < MEAN_TOLERANCE, "{name}: mean |Δ| {mean}");
}

/// Runs a candle-transformers model one token at a time over [`PROMPT`].
fn theirs(mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>) -> Vec<Vec<f32>> {
    PROMPT
        .iter()
        .enumerate()
        .map(|(pos, &t)| {
            let x = Tensor::new(&[t], &Device::Cpu)
                .and_then(|x| x.unsqueeze(0))
                .expect("ids");
            forward(&x, pos)
                .and_then(|l| l.squeeze(0))
                .and_then(|l| l.to_vec1::<f32>())
                .expect("forward")
        })
        .collect()
}

fn read_content(file: &str) -> (gguf_file::Content, std::fs::File) {
    let mut reader = std::fs::File::open(common::model_path(file)).expect("open");
    let content = gguf_file::Content::read(&mut reader).expect("read");
    (content, reader)
}

#[test]
fn llama_matches_candle_transformers() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let (content, mut reader) = read_content(file);
    let mut model = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).expect("load");
    let reference = theirs(|x, pos| model.forward(x, pos));
    check("smollm2-135m", ours(file, PROMPT), reference);
}

#[test]
fn qwen2_matches_candle_transformers() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    let file = "qwen2.5-coder-0.5b-instruct.gguf";
    let (content, mut reader) = read_content(file);
    let mut model = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).expect("load");
    let reference = theirs(|x, pos| model.forward(x, pos));
    check("qwen2.5-coder-0.5b", ours(file, PROMPT), reference);
}
