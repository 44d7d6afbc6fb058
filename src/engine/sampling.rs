//! Choosing the next token from logits, and knowing when to stop.
//!
//! [`SamplingParams`] is the user-facing configuration; [`Sampler`] applies it to one row of
//! logits at a time; [`StopMatcher`] finds stop strings in streamed text.
//!
//! Invariants: the same parameters (seed included) and the same sequence of logits give the
//! same tokens; greedy decoding is a plain argmax (lowest id on ties) with no allocation; NaN
//! logits never panic and count as `-inf`; top-k and top-p never sort the whole vocabulary.

mod stop;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

pub use stop::StopMatcher;

/// How tokens are chosen and when generation ends.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; `0` is greedy decoding. Default `0.0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens before drawing. Default: no limit.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (nucleus sampling), in `(0, 1]`. Default: no limit.
    pub top_p: Option<f32>,
    /// Seed of the random draws. Default `0`.
    pub seed: u64,
    /// Upper bound on generated tokens. Default `256`.
    pub max_new_tokens: usize,
    /// Generation stops where any of these strings appears; it is not part of the output.
    /// Default: none.
    pub stop: Vec<String>,
    /// Keep generating through end-of-sequence tokens up to `max_new_tokens` (for
    /// benchmarks that need a fixed length). Default `false`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with the other defaults.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks every field's range; the error names the first field at fault.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &str, reason: String| {
            Err(Error::InvalidArgument {
                name: name.to_string(),
                reason,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            );
        }
        if let Some(top_k) = self.top_k {
            if top_k == 0 {
                return invalid("top_k", "must be at least 1".to_string());
            }
        }
        if let Some(top_p) = self.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return invalid("top_p", format!("must be in (0, 1], got {top_p}"));
            }
        }
        if self.max_new_tokens == 0 {
            return invalid("max_new_tokens", "must be at least 1".to_string());
        }
        Ok(())
    }

    /// Whether these parameters decode greedily (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        // Also catches NaN and negative temperatures, which `validate` rejects.
        self.temperature.is_nan() || self.temperature <= 0.0
    }
}

/// Picks tokens from logits according to [`SamplingParams`], with its own seeded RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    greedy: bool,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    rng: StdRng,
    /// (token id, logit) of the tokens still in the running; reused across calls.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler seeded with `params.seed`. Expects validated parameters; out-of-range values
    /// degrade gracefully: a non-positive or NaN temperature is greedy, `top_k = 0` keeps one
    /// token, `top_p >= 1` or NaN is ignored, `top_p <= 0` keeps one token.
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            greedy: params.is_greedy(),
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            rng: StdRng::seed_from_u64(params.seed),
            candidates: Vec::new(),
        }
    }

    /// Picks the next token from a row of logits (one per vocabulary entry).
    ///
    /// Greedy: the argmax, lowest id on ties. Otherwise: temperature, then top-k, then top-p
    /// (the nucleus over the sorted softmax), then a draw. NaN counts as `-inf`; if no logit
    /// is above `-inf` (or `logits` is empty) the result is token 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let best = argmax(logits);
        if self.greedy || logits.get(best as usize) == Some(&f32::INFINITY) {
            return best;
        }
        let max_logit = logits
            .get(best as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        if max_logit == f32::NEG_INFINITY {
            return best;
        }

        self.candidates.clear();
        // NaN fails the comparison, so it is dropped like -inf.
        self.candidates.extend(
            (0u32..)
                .zip(logits.iter().copied())
                .filter(|&(_, logit)| logit > f32::NEG_INFINITY),
        );

        if let Some(k) = self.top_k {
            let k = k.max(1);
            if k < self.candidates.len() {
                self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
                self.candidates.truncate(k);
            }
        }

        // From here on, the second field holds unnormalised probabilities.
        let mut total = 0.0f64;
        for candidate in &mut self.candidates {
            candidate.1 = ((candidate.1 - max_logit) / self.temperature).exp();
            total += f64::from(candidate.1);
        }

        if let Some(top_p) = self.top_p.filter(|&p| p < 1.0) {
            total = keep_nucleus(&mut self.candidates, top_p, total);
        }

        let mut threshold = self.rng.random::<f64>() * total;
        for &(id, weight) in &self.candidates {
            threshold -= f64::from(weight);
            if threshold < 0.0 {
                return id;
            }
        }
        // Rounding can leave a sliver past the last token.
        self.candidates.last().map_or(best, |&(id, _)| id)
    }
}

/// Index of the largest logit, lowest index on ties, NaN as `-inf`; 0 when all are `-inf`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = i;
            best_logit = logit;
        }
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}

/// Descending by value, ascending by token id on ties: a total order, so selection and
/// sorting give the same result whatever the algorithm.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Shrinks `candidates` (token, weight) to the smallest most-probable prefix whose weight
/// reaches `top_p * total`, in descending order, and returns the kept weight.
///
/// Sorts only as much as it needs: the heaviest chunk is selected and sorted first, and the
/// chunk doubles until the nucleus is complete, so a peaked distribution over a 262k
/// vocabulary costs a few linear selections instead of a full sort.
fn keep_nucleus(candidates: &mut Vec<(u32, f32)>, top_p: f32, total: f64) -> f64 {
    let target = f64::from(top_p.max(0.0)) * total;
    let mut sorted = 0;
    let mut kept = 0.0f64;
    let mut chunk = 64;
    let len = candidates.len();
    while sorted < len {
        let end = (sorted + chunk).min(len);
        if end < len {
            candidates[sorted..].select_nth_unstable_by(end - sorted - 1, by_logit_desc);
        }
        candidates[sorted..end].sort_unstable_by(by_logit_desc);
        for i in sorted..end {
            kept += f64::from(candidates[i].1);
            if kept >= target {
                candidates.truncate(i + 1);
                return kept;
            }
        }
        sorted = end;
        chunk *= 2;
    }
    kept
}

#[cfg(test)]
mod tests;
