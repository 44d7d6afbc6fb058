//! Our forward pass against candle-transformers' quantized llama and qwen2 models, an
//! independent implementation on the same files (batch 1, whole prompt then one token).

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use fgo::engine::gguf::GgufFile;
use fgo::engine::model::{LogitsWanted, Model, SeqStep};

mod common;

/// Largest absolute logit difference allowed; see `BENCHMARKS.md`/README for the figures
/// measured (both sides quantize activations to 8 bits before each matmul).
const TOLERANCE: f32 = 0.1;

const PROMPT: &[u32] = &[504, 3575, 282, 4649, 314, 1085, 30, 216, 1012, 314, 253, 1345, 28, 198];

fn ours(file: &str, tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut gguf = GgufFile::open(common::model_path(file)).expect("open");
    let model = Model::load(&mut gguf, &Device::Cpu).expect("load");
    let mut cache = model.new_cache();
    let (prompt, next) = tokens.split_at(tokens.len() - 1);
    let first = model
        .forward(&mut [SeqStep { tokens: prompt, cache: &mut cache, logits: LogitsWanted::Last }])
        .expect("forward")
        .remove(0);
    let second = model
        .forward(&mut [SeqStep { tokens: next, cache: &mut cache, logits: LogitsWanted::Last }])
        .expect("forward")
        .remove(0);
    let row = |t: Tensor| t.squeeze(0).and_then(|t| t.to_vec1::<f32>()).expect("row");
    (row(first), row(second))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn check(name: &str, ours: (Vec<f32>, Vec<f32>), theirs: (Vec<f32>, Vec<f32>)) {
    let d1 = max_diff(&ours.0, &theirs.0);
    let d2 = max_diff(&ours.1, &theirs.1);
    eprintln!("{name}: max |Δlogit| prompt {d1:.4}, next token {d2:.4}");
    assert!(d1 < TOLERANCE && d2 < TOLERANCE, "{name}: {d1} / {d2}");
    assert_eq!(argmax(&ours.0), argmax(&theirs.0));
    assert_eq!(argmax(&ours.1), argmax(&theirs.1));
}

#[test]
fn llama_matches_candle_transformers() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let path = common::model_path(file);
    let mut reader = std::fs::File::open(&path).expect("open");
    let content = gguf_file::Content::read(&mut reader).expect("read");
    let mut model = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).expect("load");
    let (prompt, next) = PROMPT.split_at(PROMPT.len() - 1);
    let run = |m: &mut ModelWeights, t: &[u32], pos: usize| {
        let x = Tensor::new(t, &Device::Cpu).and_then(|x| x.unsqueeze(0)).expect("ids");
        m.forward(&x, pos).and_then(|l| l.squeeze(0)).and_then(|l| l.to_vec1::<f32>()).expect("fwd")
    };
    let a = run(&mut model, prompt, 0);
    let b = run(&mut model, next, prompt.len());
    check("smollm2-135m", ours(file, PROMPT), (a, b));
}

#[test]
fn qwen2_matches_candle_transformers() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    let file = "qwen2.5-coder-0.5b-instruct.gguf";
    let path = common::model_path(file);
    let mut reader = std::fs::File::open(&path).expect("open");
    let content = gguf_file::Content::read(&mut reader).expect("read");
    let mut model = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).expect("load");
    let (prompt, next) = PROMPT.split_at(PROMPT.len() - 1);
    let run = |m: &mut ModelWeights, t: &[u32], pos: usize| {
        let x = Tensor::new(t, &Device::Cpu).and_then(|x| x.unsqueeze(0)).expect("ids");
        m.forward(&x, pos).and_then(|l| l.squeeze(0)).and_then(|l| l.to_vec1::<f32>()).expect("fwd")
    };
    let a = run(&mut model, prompt, 0);
    let b = run(&mut model, next, prompt.len());
    check("qwen2.5-coder-0.5b", ours(file, PROMPT), (a, b));
}
