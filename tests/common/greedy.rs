//! Comparing greedy completions of two schedules of the same requests: they may part
//! only at a near tie of the reference's two best logits.

use fgo::engine::model::LogitsWanted;
use fgo::engine::{Engine, GenerationRequest};

/// Two greedy runs may pick different tokens only where the reference's two best logits
/// are closer than this. Different schedules sum attention in a different order (dense
/// products for long prompt chunks, in place over the blocks for short steps), and the
/// 8-bit rounding of activations in every quantized matrix product amplifies that: our
/// prefill and token-by-token decoding of the same text differ by up to 1.14 in a logit on
/// SmolLM2 (tests/forward_oracle.rs). The same bound as against llama.cpp.
const NEAR_TIE: f32 = 1.5;

/// The reference's margin between its two best logits after `prompt` + `generated`.
fn top2_margin(engine: &Engine, prompt: &[u32], generated: &[u32]) -> f32 {
    let model = engine.model();
    let mut cache = model.new_cache();
    let tokens: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let row = model
        .forward_single(&mut cache, &tokens, LogitsWanted::Last)
        .and_then(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?))
        .expect("logits");
    let mut sorted = row.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1]
}

/// Checks `got` against `want` token by token; a divergence is accepted only at a near tie
/// of the reference. Returns whether they diverged.
pub fn agree(engine: &Engine, request: &GenerationRequest, want: &[u32], got: &[u32]) -> bool {
    // A run that stopped early (an end-of-sequence token) diverges where it stopped.
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    if at == want.len() && at == got.len() {
        return false;
    }
    let prompt = engine.prompt_tokens(&request.prompt).expect("prompt");
    let margin = top2_margin(engine, &prompt, &want[..at]);
    assert!(
        margin < NEAR_TIE,
        "{:?}: token {at} differs ({:?} vs {:?}) where the reference's top-2 margin is {margin}",
        request.prompt,
        want.get(at),
        got.get(at)
    );
    true
}
