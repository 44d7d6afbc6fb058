//! Attention of new tokens over keys and values stored in blocks of the paged cache, for
//! many sequences in one call.
//!
//! This is the decode path: each new token attends to its own sequence's positions, read
//! in place from the blocks (no gather, no temporary tensors), with one parallel task per
//! (token, key/value head) on the engine's [`team`](crate::engine::team), so that a step
//! of many short sequences spreads over all cores.
//! Long prompt chunks go through dense matrix products instead ([`super::attention`]).

use crate::engine::kv::{BlockId, KvLayout};
use crate::engine::model::attention::AttentionSpec;
use crate::engine::team::{team, Disjoint};

/// One sequence's share of a call.
#[derive(Debug, Clone, Copy)]
pub struct PagedSeq<'a> {
    /// First row of this sequence's tokens in the query and output arrays.
    pub row: usize,
    /// Number of new tokens.
    pub new: usize,
    /// Position of the first new token (= positions stored before it).
    pub start: usize,
    /// The block table, covering at least `start + new` positions.
    pub blocks: &'a [BlockId],
    /// Whether this call computes this sequence (false: its rows are left untouched).
    pub include: bool,
}

/// Dot product with eight independent accumulators (vectorises on any x86-64 or ARM).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// `out += w * x`.
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// Computes attention for every included sequence. `q` is `(tokens, n_heads, head_dim)`,
/// `out` is `(tokens, n_heads * head_dim)`; `keys`/`values` are one layer of the store.
///
/// Tasks are (token, key/value head) pairs, each reading its keys once for the whole group
/// of query heads; when that gives too few tasks to keep every thread busy (one decoded
/// token has only two or three key/value heads), each query head is a task of its own.
pub fn paged_attention(
    spec: &AttentionSpec,
    layout: &KvLayout,
    keys: &[f32],
    values: &[f32],
    q: &[f32],
    seqs: &[PagedSeq<'_>],
    out: &mut [f32],
) {
    let hd = layout.head_dim;
    let n_kv = spec.n_kv_heads;
    let group = spec.n_heads / n_kv;
    // Which sequence each token row belongs to.
    let n_tokens = out.len() / (spec.n_heads * hd);
    let mut owner = vec![usize::MAX; n_tokens];
    for (s, seq) in seqs.iter().enumerate() {
        if seq.include {
            owner[seq.row..seq.row + seq.new].fill(s);
        }
    }
    let team = team();
    let heads_per_task = if n_tokens * n_kv >= 4 * team.threads() {
        group
    } else {
        1
    };
    let chunk = heads_per_task * hd;
    let tasks = out.len() / chunk;
    let shared = Disjoint::new(out);
    let simd = crate::engine::kernels::simd_available();
    team.run(tasks, &|task| {
        // Query heads `first_head..first_head + heads_per_task` of token `t`.
        let (t, first_head) = (
            task * heads_per_task / spec.n_heads,
            task * heads_per_task % spec.n_heads,
        );
        let Some(seq) = seqs.get(owner[t]) else {
            return;
        };
        // SAFETY: each task writes only its own chunk of the output.
        let out = unsafe { shared.slice(task * chunk, chunk) };
        let q_rows = &q[(t * spec.n_heads + first_head) * hd..][..chunk];
        let job = HeadsJob {
            spec,
            layout,
            keys,
            values,
            seq,
            pos: seq.start + (t - seq.row),
            kv_head: first_head / group,
            heads: heads_per_task,
        };
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 and FMA were detected at run time.
            unsafe { job.run_avx2(q_rows, out) };
            return;
        }
        let _ = simd;
        job.run(q_rows, out);
    });
}

/// The attention of some query heads of one token, which share one key/value head.
struct HeadsJob<'a> {
    spec: &'a AttentionSpec,
    layout: &'a KvLayout,
    keys: &'a [f32],
    values: &'a [f32],
    seq: &'a PagedSeq<'a>,
    /// The token's position.
    pos: usize,
    kv_head: usize,
    /// Query heads in `q_rows` and `out`.
    heads: usize,
}

impl HeadsJob<'_> {
    /// [`run`](Self::run) compiled for AVX2 and FMA, so that its loops vectorise 8 wide.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, q_rows: &[f32], out: &mut [f32]) {
        self.run(q_rows, out)
    }

    #[inline(always)]
    fn run(&self, q_rows: &[f32], out: &mut [f32]) {
        let (spec, layout, seq) = (self.spec, self.layout, self.seq);
        let hd = layout.head_dim;
        let pos = self.pos;
        let first = spec.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let n_keys = pos + 1 - first;
        let group = self.heads;
        let mut scores = vec![0f32; group * n_keys];
        for (j, key_pos) in (first..=pos).enumerate() {
            let block = seq.blocks[key_pos / layout.block_size];
            let at = layout.offset(block, self.kv_head, key_pos % layout.block_size);
            let k = &self.keys[at..at + hd];
            for g in 0..group {
                let mut s = dot(&q_rows[g * hd..(g + 1) * hd], k) * spec.scale;
                if let Some(cap) = spec.softcap {
                    s = (s / cap).tanh() * cap;
                }
                scores[g * n_keys + j] = s;
            }
        }
        for g in 0..group {
            let row = &mut scores[g * n_keys..(g + 1) * n_keys];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|s| *s *= inv);
        }
        out.fill(0.0);
        for (j, key_pos) in (first..=pos).enumerate() {
            let block = seq.blocks[key_pos / layout.block_size];
            let at = layout.offset(block, self.kv_head, key_pos % layout.block_size);
            let v = &self.values[at..at + hd];
            for g in 0..group {
                axpy(&mut out[g * hd..(g + 1) * hd], scores[g * n_keys + j], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv::KvStorage;
    use crate::engine::model::attention::attend;
    use candle_core::{Device, Tensor};

    /// Paged attention over scattered blocks equals dense attention over the same keys, for
    /// several sequences of ragged lengths in one call, with grouped heads, a window and a
    /// soft cap.
    #[test]
    fn equals_dense_attention() -> crate::error::Result<()> {
        let dev = Device::Cpu;
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 2,
            head_dim: 12,
            block_size: 4,
        };
        for (window, softcap) in [(None, None), (Some(5), Some(3.0f32))] {
            let spec = AttentionSpec {
                n_heads: 6,
                n_kv_heads: 2,
                scale: 0.3,
                softcap,
                window,
            };
            let mut storage = KvStorage::new(layout, 16);
            // Sequences: (stored before, new tokens, blocks scattered over the pool).
            let plan: [(usize, usize, Vec<BlockId>); 3] = [
                (0, 3, vec![7]),
                (9, 1, vec![2, 11, 5]),
                (5, 4, vec![0, 15, 9]),
            ];
            let n_tokens: usize = plan.iter().map(|p| p.1).sum();
            let q = Tensor::randn(0f32, 1.0, (n_tokens, 6, 12), &dev)?;
            let q_host = q.flatten_all()?.to_vec1::<f32>()?;
            let mut seqs = Vec::new();
            let mut dense = Vec::new();
            let mut row = 0;
            for (start, new, blocks) in &plan {
                let total = start + new;
                let k = Tensor::randn(0f32, 1.0, (total, 2, 12), &dev)?;
                let v = Tensor::randn(0f32, 1.0, (total, 2, 12), &dev)?;
                storage.write(
                    0,
                    blocks,
                    0,
                    &k.flatten_all()?.to_vec1()?,
                    &v.flatten_all()?.to_vec1()?,
                );
                let heads_first = |t: &Tensor| t.transpose(0, 1)?.contiguous();
                let q_seq = heads_first(&q.narrow(0, row, *new)?)?;
                dense.push(attend(&spec, &q_seq, &heads_first(&k)?, &heads_first(&v)?)?);
                seqs.push(PagedSeq {
                    row,
                    new: *new,
                    start: *start,
                    blocks,
                    include: true,
                });
                row += new;
            }
            let mut out = vec![0f32; n_tokens * 6 * 12];
            let (keys, values) = storage.layer(0);
            paged_attention(&spec, &layout, keys, values, &q_host, &seqs, &mut out);
            let expected = Tensor::cat(&dense, 0)?.flatten_all()?.to_vec1::<f32>()?;
            let diff = out
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "window {window:?}: max difference {diff}");
        }
        Ok(())
    }
}
