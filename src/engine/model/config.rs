//! Hyperparameters of a model, derived from its GGUF metadata alone.
//!
//! Every number the forward pass needs comes from `<arch>.*` keys (or, where a file may omit
//! a key, from the documented default of that architecture); nothing is hard-coded per file.

use crate::engine::gguf::GgufFile;
use crate::error::{Error, Result};

/// The largest size (width, head count, context, vocabulary) accepted from a file: far
/// above any real model, low enough that products of two sizes cannot overflow.
pub const MAX_DIMENSION: usize = 1 << 24;

/// The architectures this engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3, Mistral, TinyLlama, SmolLM2 (`general.architecture = llama`).
    Llama,
    /// Qwen 2 and 2.5: llama with q/k/v biases and half-split rotary embedding.
    Qwen2,
    /// Qwen 3: llama with per-head RMS norms on queries and keys.
    Qwen3,
    /// Gemma 3: sandwich norms, GELU, query/key norms, interleaved sliding-window layers.
    Gemma3,
}

impl Architecture {
    /// Names accepted in `general.architecture`.
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3, gemma3";

    /// Parses `general.architecture`.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(Error::UnsupportedArchitecture {
                arch: crate::error::printable(other),
                supported: Self::SUPPORTED.to_string(),
            }),
        }
    }

    /// The metadata prefix of this architecture.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// How rotary position embedding pairs dimensions inside a head, as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): GGUF llama files.
    Interleaved,
    /// Dimension i paired with i + d/2 (GPT-NeoX style): qwen2, qwen3, gemma3.
    Halves,
}

/// The feed-forward activation applied to the gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// All hyperparameters of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_layout: RopeLayout,
    /// Rotary base of global-attention layers.
    pub rope_base: f32,
    /// Rotary base of sliding-window layers (Gemma 3 uses a different one).
    pub rope_base_local: f32,
    /// Linear position scaling factor of global layers (1.0 = none).
    pub rope_linear_scale: f32,
    /// Number of head dimensions rotated (the rest pass through).
    pub rope_dim: usize,
    /// Sliding-window size, in tokens, of local-attention layers.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer (the last of each group of `n`) uses global attention; the others
    /// use the sliding window. Only meaningful with `sliding_window`.
    pub sliding_window_pattern: usize,
    /// Multiplier applied to queries before the dot product.
    pub attention_scale: f32,
    /// Soft-cap of attention logits (`tanh(x / c) * c`), where the file sets it.
    pub attn_logit_softcap: Option<f32>,
    /// Soft-cap of the final logits, where the file sets it.
    pub final_logit_softcap: Option<f32>,
    /// Multiplier applied to token embeddings (Gemma: sqrt(d_model)).
    pub embedding_scale: Option<f32>,
    pub activation: Activation,
    /// Biases on the q, k, v projections (Qwen 2).
    pub qkv_bias: bool,
    /// Per-head RMS norm of queries and keys (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the feed-forward (Gemma 3).
    pub sandwich_norms: bool,
}

impl ModelConfig {
    /// Derives the configuration from a GGUF file's metadata and tensor shapes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let architecture = Architecture::from_gguf_name(file.architecture()?)?;
        let p = architecture.gguf_name();
        let key = |k: &str| format!("{p}.{k}");

        let d_model = md.usize(&key("embedding_length"))?;
        let n_heads = md.usize(&key("attention.head_count"))?;
        let n_kv_heads = md
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::Metadata {
                key: key("attention.head_count_kv"),
                reason: format!(
                    "{n_kv_heads} key/value heads must be non-zero and divide {n_heads} heads"
                ),
            });
        }
        let head_dim = md
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(d_model / n_heads);
        let rope_dim = md
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(Error::Metadata {
                key: key("rope.dimension_count"),
                reason: format!("{rope_dim} must be even and at most the head size {head_dim}"),
            });
        }
        let vocab_size = match file.tensor_info("token_embd.weight") {
            Some((dims, _)) if dims.len() == 2 => dims[0],
            _ => {
                return Err(Error::Tensor {
                    name: "token_embd.weight".into(),
                    reason: "missing or not two-dimensional".into(),
                })
            }
        };
        let rope_base = md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_linear_scale = match md.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => md.opt_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            Some(other) => {
                return Err(Error::Metadata {
                    key: key("rope.scaling.type"),
                    reason: format!("unsupported rope scaling `{other}` (supported: linear)"),
                })
            }
        };
        let positive = |v: Option<f32>| v.filter(|c| *c > 0.0);
        let is_gemma = architecture == Architecture::Gemma3;
        let config = Self {
            architecture,
            n_layers: md.usize(&key("block_count"))?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: md.usize(&key("feed_forward_length"))?,
            vocab_size,
            context_length: md.opt_usize(&key("context_length"))?.unwrap_or(2048),
            rms_eps: f64::from(
                md.opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                    .unwrap_or(1e-6),
            ),
            rope_layout: if architecture == Architecture::Llama {
                RopeLayout::Interleaved
            } else {
                RopeLayout::Halves
            },
            rope_base,
            rope_base_local: if is_gemma { 10_000.0 } else { rope_base },
            rope_linear_scale,
            rope_dim,
            sliding_window: if is_gemma {
                md.opt_usize(&key("attention.sliding_window"))?
            } else {
                None
            },
            sliding_window_pattern: md
                .opt_usize(&key("attention.sliding_window_pattern"))?
                .filter(|n| *n > 0)
                .unwrap_or(6),
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_logit_softcap: positive(md.opt_f32(&key("attn_logit_softcapping"))?),
            final_logit_softcap: positive(md.opt_f32(&key("final_logit_softcapping"))?),
            embedding_scale: is_gemma.then(|| (d_model as f32).sqrt()),
            activation: if is_gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            qkv_bias: file.has_tensor("blk.0.attn_q.bias"),
            qk_norm: file.has_tensor("blk.0.attn_q_norm.weight"),
            sandwich_norms: is_gemma,
        };
        config.validate(file.tensor_count())?;
        Ok(config)
    }

    /// Refuses numbers no real model has and that would make the forward pass divide by
    /// zero, overflow, allocate without bound or silently compute garbage.
    fn validate(&self, tensor_count: usize) -> Result<()> {
        let p = self.architecture.gguf_name();
        let bad = |key: &str, reason: String| Error::Metadata {
            key: format!("{p}.{key}"),
            reason,
        };
        let sizes = [
            ("embedding_length", self.d_model),
            ("attention.head_count", self.n_heads),
            ("attention.key_length", self.head_dim),
            ("feed_forward_length", self.ffn_dim),
            ("context_length", self.context_length),
        ];
        for (key, value) in sizes {
            if value == 0 || value > MAX_DIMENSION {
                return Err(bad(key, format!("{value} is outside 1..={MAX_DIMENSION}")));
            }
        }
        if self.n_layers == 0 || self.n_layers > tensor_count {
            return Err(bad(
                "block_count",
                format!(
                    "{} layers, but the file has {tensor_count} tensors (at least one layer, \
                     each with its own tensors, is needed)",
                    self.n_layers
                ),
            ));
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_DIMENSION {
            return Err(Error::Tensor {
                name: "token_embd.weight".into(),
                reason: format!("{} rows is outside 1..={MAX_DIMENSION}", self.vocab_size),
            });
        }
        if self
            .n_heads
            .checked_mul(self.head_dim)
            .is_none_or(|n| n > MAX_DIMENSION)
        {
            return Err(bad(
                "attention.head_count",
                format!(
                    "{} heads of {} dimensions is more than {MAX_DIMENSION}",
                    self.n_heads, self.head_dim
                ),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{} is not a positive number", self.rms_eps),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return Err(bad(
                "rope.freq_base",
                format!("{} is not a number above 1", self.rope_base),
            ));
        }
        if !(self.rope_linear_scale.is_finite() && self.rope_linear_scale > 0.0) {
            return Err(bad(
                "rope.scaling.factor",
                format!("{} is not a positive number", self.rope_linear_scale),
            ));
        }
        for (key, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcap),
            ("final_logit_softcapping", self.final_logit_softcap),
        ] {
            if cap.is_some_and(|c| !c.is_finite()) {
                return Err(bad(key, "is not a finite number".into()));
            }
        }
        if self.sliding_window == Some(0) {
            return Err(bad("attention.sliding_window", "must be at least 1".into()));
        }
        Ok(())
    }

    /// Whether `layer` attends only within the sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && !(layer + 1).is_multiple_of(self.sliding_window_pattern)
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}
