//! TEMPORARY stub of the engine's sampling parameters (the real module lands with the
//! engine on `main`; on merge, take main's version of this file).

use serde::{Deserialize, Serialize};

/// How to sample a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
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
        }
    }
}

impl SamplingParams {
    /// Checks the values are in range.
    pub fn validate(&self) -> crate::Result<()> {
        Ok(())
    }
}
