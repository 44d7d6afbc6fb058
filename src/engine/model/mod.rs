//! The forward pass: one implementation for the llama family (llama, qwen2, qwen3) and
//! gemma3, driven by [`ModelConfig`].
//!
//! [`Model::forward`] runs a *ragged batch*: any number of sequences, each with its own new
//! tokens, its own position and its own block table in a shared paged [`KvStore`]. All
//! tokens of all sequences go through the projections and feed-forward as one matrix (so
//! the weights are read once per step), and attention reads each sequence's keys and values
//! from its blocks. The store lives with the caller; the model holds only weights.

mod activation;
pub mod attention;
pub mod config;
pub mod paged_attention;
mod rope;
mod weights;

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

pub use config::{Activation, Architecture, ModelConfig, RopeLayout};

use crate::engine::gguf::GgufFile;
use crate::engine::kv::{KvCache, KvDtype, KvLayout, KvStore, SeqKv, DEFAULT_BLOCK_SIZE};
use crate::error::{Error, Result};
use attention::AttentionSpec;
use paged_attention::{paged_attention, PagedSeq};
use rope::Rotary;
use weights::{Linear, WeightLoader};

/// Which rows of logits a sequence wants back from a forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only the last new token's (what generation needs).
    Last,
    /// Every new token's (for scoring and tests).
    All,
    /// None (a prefill chunk that is not the last).
    None,
}

/// One sequence's part of a forward step.
#[derive(Debug)]
pub struct SeqStep<'a> {
    /// Tokens to append, at positions `seq.len()..seq.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// The sequence's blocks, extended by the step.
    pub seq: &'a mut SeqKv,
    pub logits: LogitsWanted,
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
}

/// `act(gate(h)) * up(h)`: on host buffers in one fused pass where both projections run on
/// the CPU kernels, else through candle's operations.
fn gated_ffn(layer: &Layer, h: &Tensor, kind: Activation) -> Result<Tensor> {
    if let Some([mut gate, up]) = project_host(&[&layer.gate, &layer.up], h)? {
        activation::gated(kind, &mut gate, &up);
        return host_tensor(gate, h);
    }
    let gate = layer.gate.forward(h)?;
    let gate = match kind {
        Activation::Silu => candle_nn::ops::silu(&gate)?,
        Activation::GeluTanh => gate.gelu()?,
    };
    Ok((gate * layer.up.forward(h)?)?)
}

/// Several projections of one input `h` (`(tokens, in)`), each `(tokens, out_i)`: on the
/// CPU kernels with the input quantized once where their layouts agree, else one by one.
fn project<const N: usize>(linears: &[&Linear; N], h: &Tensor) -> Result<[Tensor; N]> {
    let tensors = match project_host(linears, h)? {
        Some(outs) => outs
            .into_iter()
            .map(|y| host_tensor(y, h))
            .collect::<Result<Vec<_>>>()?,
        None => linears
            .iter()
            .map(|l| l.forward(h))
            .collect::<Result<Vec<_>>>()?,
    };
    tensors
        .try_into()
        .map_err(|_| Error::Request("projection count".into()))
}

/// [`Linear::forward_host_many`] with one buffer per projection.
fn project_host<const N: usize>(
    linears: &[&Linear; N],
    h: &Tensor,
) -> Result<Option<[Vec<f32>; N]>> {
    let Some(outs) = Linear::forward_host_many(linears, h)? else {
        return Ok(None);
    };
    let outs = outs
        .try_into()
        .map_err(|_| Error::Request("projection count".into()))?;
    Ok(Some(outs))
}

/// Rows of host values as a `(tokens, width)` tensor beside `h` (`(tokens, _)`).
fn host_tensor(values: Vec<f32>, h: &Tensor) -> Result<Tensor> {
    let (tokens, _) = h.dims2()?;
    let width = values.len() / tokens;
    Ok(Tensor::from_vec(values, (tokens, width), h.device())?)
}

/// Where the token embedding's rows come from.
enum TokenEmbedding {
    /// Its own quantized table (candle's lookup).
    Table(Arc<QTensor>),
    /// The output projection's repacked matrix, which a tied embedding shares: one copy of
    /// the largest matrix of a small model instead of two.
    Output,
}

/// A loaded model: weights on one device and the configuration to run them.
pub struct Model {
    config: ModelConfig,
    embedding: TokenEmbedding,
    layers: Vec<Layer>,
    output_norm: Tensor,
    lm_head: Linear,
    rotary_global: Rotary,
    rotary_local: Rotary,
    device: Device,
    /// The element type of the key/value caches this model makes.
    kv_dtype: KvDtype,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

impl Model {
    /// Loads every tensor of `file` onto `device`, keeping matrices and the token embedding
    /// quantized.
    pub fn load(file: &mut GgufFile, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_gguf(file)?;
        Self::load_with(file, config, device)
    }

    /// [`load`](Self::load) with the configuration already derived from `file`, whose
    /// metadata may have been [released](GgufFile::release_metadata) by then.
    pub fn load_with(file: &mut GgufFile, config: ModelConfig, device: &Device) -> Result<Self> {
        let c = &config;
        let mut w = WeightLoader::new(file, device);
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("blk.{i}");
            let n = |s: &str| format!("{p}.{s}");
            let qk_norm = |w: &mut WeightLoader, s: &str| -> Result<Option<Tensor>> {
                if c.qk_norm {
                    w.vector(&n(s), c.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            let sandwich = |w: &mut WeightLoader, s: &str| -> Result<Option<Tensor>> {
                if c.sandwich_norms {
                    w.vector(&n(s), c.d_model).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: w.vector(&n("attn_norm.weight"), c.d_model)?,
                q: w.linear(&n("attn_q"), q_dim, c.d_model)?,
                k: w.linear(&n("attn_k"), kv_dim, c.d_model)?,
                v: w.linear(&n("attn_v"), kv_dim, c.d_model)?,
                o: w.linear(&n("attn_output"), c.d_model, q_dim)?,
                q_norm: qk_norm(&mut w, "attn_q_norm.weight")?,
                k_norm: qk_norm(&mut w, "attn_k_norm.weight")?,
                post_attn_norm: sandwich(&mut w, "post_attention_norm.weight")?,
                ffn_norm: w.vector(&n("ffn_norm.weight"), c.d_model)?,
                gate: w.linear(&n("ffn_gate"), c.ffn_dim, c.d_model)?,
                up: w.linear(&n("ffn_up"), c.ffn_dim, c.d_model)?,
                down: w.linear(&n("ffn_down"), c.d_model, c.ffn_dim)?,
                post_ffn_norm: sandwich(&mut w, "post_ffw_norm.weight")?,
            });
        }
        let output_norm = w.vector("output_norm.weight", c.d_model)?;
        let table = |w: &mut WeightLoader| -> Result<Arc<QTensor>> {
            Ok(Arc::new(w.qtensor(
                "token_embd.weight",
                &[c.vocab_size, c.d_model],
            )?))
        };
        let (embedding, lm_head) = if w.has("output.weight") {
            let head = w.weight("output.weight", c.vocab_size, c.d_model)?;
            (TokenEmbedding::Table(table(&mut w)?), head)
        } else {
            match w.packed("token_embd.weight", c.vocab_size, c.d_model)? {
                Some(head) => (TokenEmbedding::Output, head),
                _ => {
                    let t = table(&mut w)?;
                    let head = w.matrix("token_embd.weight", t.clone())?;
                    (TokenEmbedding::Table(t), head)
                }
            }
        };
        let factors = match w.opt_vector("rope_freqs.weight", c.rope_dim / 2)? {
            Some(t) => Some(t.to_vec1::<f32>()?),
            None => None,
        };
        let rotary_global = Rotary::new(
            c.rope_dim,
            c.rope_base,
            1.0 / c.rope_linear_scale,
            factors.as_deref(),
        );
        let rotary_local = Rotary::new(c.rope_dim, c.rope_base_local, 1.0, factors.as_deref());
        // After the weights, which stay in their own mappings, so that freed load-time
        // copies do not linger in the heap.
        crate::engine::alloc::return_free_memory();
        crate::engine::alloc::keep_large_buffers();
        Ok(Self {
            config,
            embedding,
            layers,
            output_norm,
            lm_head,
            rotary_global,
            rotary_local,
            device: device.clone(),
            kv_dtype: KvDtype::default(),
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The shape of this model's key/value cache in blocks of `block_size` positions.
    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        KvLayout {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            block_size,
            dtype: self.kv_dtype,
        }
    }

    /// Sets the element type of the key/value caches made from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// A paged store of `budget_bytes` for this model's keys and values.
    pub fn new_kv_store(&self, budget_bytes: usize) -> Result<KvStore> {
        KvStore::new(self.kv_layout(DEFAULT_BLOCK_SIZE), budget_bytes)
    }

    /// A fresh single-sequence cache able to hold the whole context window (its memory is
    /// committed only as positions are written).
    pub fn new_cache(&self) -> KvCache {
        let layout = self.kv_layout(DEFAULT_BLOCK_SIZE);
        let n_blocks = self.config.context_length.div_ceil(DEFAULT_BLOCK_SIZE);
        KvCache {
            store: KvStore::with_blocks(layout, n_blocks),
            seq: SeqKv::new(),
        }
    }

    /// Runs one step of a single sequence with its own cache; returns the logits asked for.
    pub fn forward_single(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: LogitsWanted,
    ) -> Result<Tensor> {
        let mut out = self.forward(
            &mut cache.store,
            &mut [SeqStep {
                tokens,
                seq: &mut cache.seq,
                logits,
            }],
        )?;
        out.pop()
            .ok_or_else(|| Error::Request("no logits produced".into()))
    }

    /// Runs one step for a ragged batch of sequences and returns, per sequence, the logits
    /// it asked for: `(rows, vocab)` with `rows` = 1, its token count, or 0. Each sequence
    /// gets the blocks it needs from `store` and advances by its token count.
    pub fn forward(&self, store: &mut KvStore, steps: &mut [SeqStep<'_>]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(steps.len());
        for step in steps.iter_mut() {
            if step.tokens.is_empty() {
                return Err(Error::Request(
                    "a forward step needs at least one token".into(),
                ));
            }
            let start = step.seq.len();
            if start + step.tokens.len() > c.context_length {
                return Err(Error::Request(format!(
                    "sequence of {} tokens exceeds the context window of {} tokens",
                    start + step.tokens.len(),
                    c.context_length
                )));
            }
            store.ensure_capacity(step.seq, start + step.tokens.len())?;
            spans.push((tokens.len(), step.tokens.len()));
            tokens.extend_from_slice(step.tokens);
            positions.extend(start..start + step.tokens.len());
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let n_tokens = tokens.len();
        let mut x = match &self.embedding {
            TokenEmbedding::Table(table) => {
                let ids = Tensor::from_vec(tokens, n_tokens, &self.device)?;
                table.embedding(&ids)?.to_dtype(DType::F32)?
            }
            TokenEmbedding::Output => {
                let rows = self.lm_head.rows(&tokens)?.ok_or_else(|| {
                    Error::Request("the output projection has no rows to look up".into())
                })?;
                Tensor::from_vec(rows, (n_tokens, c.d_model), &self.device)?
            }
        };
        if let Some(scale) = c.embedding_scale {
            x = (x * f64::from(scale))?;
        }
        let global = self.rotary_global.tables(&positions, &self.device)?;
        let local = self.rotary_local.tables(&positions, &self.device)?;
        let eps = c.rms_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            let sliding = c.is_sliding(index);
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [q, k, v] = project(&[&layer.q, &layer.k, &layer.v], &h)?;
            let mut q = q.reshape((1, n_tokens, c.n_heads, c.head_dim))?;
            let mut k = k.reshape((1, n_tokens, c.n_kv_heads, c.head_dim))?;
            let v = v.reshape((n_tokens, c.n_kv_heads, c.head_dim))?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, eps)?;
                k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, eps)?;
            }
            let tables = if sliding { &local } else { &global };
            let interleaved = c.rope_layout == RopeLayout::Interleaved;
            let q = tables.apply(&q, interleaved)?.squeeze(0)?;
            let k = tables.apply(&k, interleaved)?.squeeze(0)?;
            let spec = AttentionSpec {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                scale: c.attention_scale,
                softcap: c.attn_logit_softcap,
                window: if sliding { c.sliding_window } else { None },
            };
            let attn = self.attention(store, index, &spec, steps, &spans, &q, &k, &v)?;
            let mut attn = layer.o.forward(&attn)?;
            if let Some(norm) = &layer.post_attn_norm {
                attn = candle_nn::ops::rms_norm(&attn, norm, eps)?;
            }
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let mut ffn = layer.down.forward(&gated_ffn(layer, &h, c.activation)?)?;
            if let Some(norm) = &layer.post_ffn_norm {
                ffn = candle_nn::ops::rms_norm(&ffn, norm, eps)?;
            }
            x = (x + ffn)?;
        }
        for step in steps.iter_mut() {
            store.commit(step.seq, step.tokens);
        }
        self.logits(&x, steps, &spans)
    }

    /// Stores one layer's new keys and values in each sequence's blocks and computes every
    /// sequence's attention over the blocks in place. Returns `(tokens, n_heads * head_dim)`.
    ///
    /// Prompt chunks and decoded tokens alike take the paged kernels, whose sums for a token
    /// run over its keys in an order fixed by its position alone: a token's attention, and
    /// with it every logit, is bit for bit the same however its sequence was cut into
    /// chunks, whatever else shares the step and whether its prefix came from the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        store: &mut KvStore,
        layer: usize,
        spec: &AttentionSpec,
        steps: &[SeqStep<'_>],
        spans: &[(usize, usize)],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (hd, n_tokens) = (c.head_dim, q.dim(0)?);
        let kv_row = c.n_kv_heads * hd;
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (q_host, k_host, v_host) = (host(q)?, host(k)?, host(v)?);
        for (step, &(offset, len)) in steps.iter().zip(spans) {
            let rows = offset * kv_row..(offset + len) * kv_row;
            store.write(layer, step.seq, &k_host[rows.clone()], &v_host[rows]);
        }
        let layout = *store.layout();
        let paged: Vec<PagedSeq> = steps
            .iter()
            .zip(spans)
            .map(|(step, &(row, new))| PagedSeq {
                row,
                new,
                start: step.seq.len(),
                blocks: step.seq.blocks(),
            })
            .collect();
        let mut out = vec![0f32; n_tokens * c.n_heads * hd];
        paged_attention(
            spec,
            &layout,
            store.storage().layer(layer),
            &q_host,
            &paged,
            &mut out,
        );
        Ok(Tensor::from_vec(
            out,
            (n_tokens, c.n_heads * hd),
            &self.device,
        )?)
    }

    /// Projects the requested rows of the final hidden states to vocabulary logits.
    fn logits(
        &self,
        x: &Tensor,
        steps: &[SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> Result<Vec<Tensor>> {
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(steps.len());
        for (step, &(offset, len)) in steps.iter().zip(spans) {
            let wanted: Vec<u32> = match step.logits {
                LogitsWanted::Last => vec![(offset + len - 1) as u32],
                LogitsWanted::All => (offset..offset + len).map(|r| r as u32).collect(),
                LogitsWanted::None => Vec::new(),
            };
            counts.push(wanted.len());
            rows.extend(wanted);
        }
        let vocab = self.config.vocab_size;
        if rows.is_empty() {
            let empty = Tensor::zeros((0, vocab), DType::F32, &self.device)?;
            return Ok(vec![empty; steps.len()]);
        }
        let n_rows = rows.len();
        let idx = Tensor::from_vec(rows, n_rows, &self.device)?;
        let h = x.index_select(&idx, 0)?;
        let h = candle_nn::ops::rms_norm(&h, &self.output_norm, self.config.rms_eps as f32)?;
        let mut logits = self.lm_head.forward(&h)?.to_dtype(DType::F32)?;
        if let Some(cap) = self.config.final_logit_softcap {
            logits = ((logits / f64::from(cap))?.tanh()? * f64::from(cap))?;
        }
        let mut out = Vec::with_capacity(counts.len());
        let mut start = 0;
        for count in counts {
            out.push(logits.narrow(0, start, count)?);
            start += count;
        }
        Ok(out)
    }
}
