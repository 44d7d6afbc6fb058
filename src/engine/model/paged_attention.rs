//! Attention of new tokens over keys and values stored in blocks of the paged cache, for
//! many sequences in one call.
//!
//! Every new token, decoded or in a prompt chunk, attends to its own sequence's positions,
//! read in place from the blocks (no gather, no temporary tensors), with one parallel task
//! per (token, key/value head) on the engine's [`team`](crate::engine::team), so that a
//! step of many short sequences spreads over all cores.
//!
//! A token's sums run over its keys in runs cut at block boundaries (and at its window's
//! start), which depend on its position only: its result is the same bits whichever step
//! computes it, alone or beside other tokens and sequences. This is what makes a greedy
//! completion independent of batching, chunking and prefix reuse; it is also faster than
//! dense products over gathered keys at the prompt lengths measured (BENCHMARKS.md).

use half::f16;

use crate::engine::kv::{BlockId, KvLayer, KvLayout};
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
}

/// An element type of the stored keys and values, as attention reads it.
pub trait KvElement: Copy + Send + Sync {
    /// `q · k`, portable.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `out += w * x`, portable.
    fn axpy(out: &mut [f32], w: f32, x: &[Self]);

    /// Eight elements from `p` as singles.
    ///
    /// # Safety
    /// AVX2 and F16C must be available; eight elements must be readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElement for f32 {
    /// Eight independent accumulators, so that it vectorises on any x86-64 or ARM.
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

    #[inline(always)]
    fn axpy(out: &mut [f32], w: f32, x: &[f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o += w * v;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvElement for f16 {
    #[inline(always)]
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        q.iter().zip(k).map(|(q, k)| q * k.to_f32()).sum()
    }

    #[inline(always)]
    fn axpy(out: &mut [f32], w: f32, x: &[f16]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o += w * v.to_f32();
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// The x86 kernels of one job, for head dimensions that are a multiple of eight. Two
/// things make them fast where a plain loop is slow: eight keys are scored at once, so the
/// eight multiply-add chains run in parallel and one transposing reduction replaces eight
/// horizontal sums; and the weighted sum of values keeps up to 64 output lanes in
/// registers across all keys instead of loading and storing them once per key.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::KvElement;
    use std::arch::x86_64::*;

    /// The eight lane sums of `a[0..8]`, as one vector.
    #[inline(always)]
    unsafe fn sums8(a: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
        let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
        _mm256_add_ps(lo, hi)
    }

    /// The sum of one vector's lanes.
    #[inline(always)]
    unsafe fn sum1(a: __m256) -> f32 {
        let four = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)))
    }

    /// `out[i] = q · k_i` for the `out.len()` rows `k_i` of `hd` elements that follow one
    /// another at `k`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `hd % 8 == 0`; `q` holds `hd` and `k` `out.len() * hd` elements.
    #[inline(always)]
    pub unsafe fn dots<E: KvElement>(q: &[f32], k: *const E, hd: usize, out: &mut [f32]) {
        let n = out.len();
        let qp = q.as_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            let rows = k.add(i * hd);
            let mut c = 0;
            while c < hd {
                let qv = _mm256_loadu_ps(qp.add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, E::load8(rows.add(r * hd + c)), *a);
                }
                c += 8;
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(i), sums8(&acc));
            i += 8;
        }
        while i < n {
            let row = k.add(i * hd);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 16 <= hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), E::load8(row.add(c)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c + 8)), E::load8(row.add(c + 8)), a1);
                c += 16;
            }
            if c < hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), E::load8(row.add(c)), a0);
            }
            out[i] = sum1(_mm256_add_ps(a0, a1));
            i += 1;
        }
    }

    /// Lanes of the output kept in registers while the values are summed.
    const TILE: usize = 8;

    /// `out += Σ_i w[i] * v_i` over the `w.len()` rows `v_i` of `out.len()` elements that
    /// follow one another at `v`, `TILE` vectors of the output at a time.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `out.len() % 8 == 0`; `v` holds `w.len() * out.len()` elements.
    #[inline(always)]
    pub unsafe fn weighted_sum<E: KvElement>(out: &mut [f32], w: &[f32], v: *const E) {
        let hd = out.len();
        let op = out.as_mut_ptr();
        let mut c = 0;
        while c + TILE * 8 <= hd {
            let mut acc = [_mm256_setzero_ps(); TILE];
            for (i, &wi) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wi);
                let row = v.add(i * hd + c);
                for (t, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, E::load8(row.add(t * 8)), *a);
                }
            }
            for (t, a) in acc.iter().enumerate() {
                let at = op.add(c + t * 8);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *a));
            }
            c += TILE * 8;
        }
        while c < hd {
            let mut a = _mm256_setzero_ps();
            for (i, &wi) in w.iter().enumerate() {
                a = _mm256_fmadd_ps(_mm256_set1_ps(wi), E::load8(v.add(i * hd + c)), a);
            }
            let at = op.add(c);
            _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), a));
            c += 8;
        }
    }
}

/// Computes attention for every sequence. `q` is `(tokens, n_heads, head_dim)`,
/// `out` is `(tokens, n_heads * head_dim)`; `kv` is one layer of the store.
///
/// Tasks are (token, key/value head) pairs, each reading its keys once for the whole group
/// of query heads; when that gives too few tasks to keep every thread busy (one decoded
/// token has only two or three key/value heads), each query head is a task of its own.
pub fn paged_attention(
    spec: &AttentionSpec,
    layout: &KvLayout,
    kv: KvLayer<'_>,
    q: &[f32],
    seqs: &[PagedSeq<'_>],
    out: &mut [f32],
) {
    match kv {
        KvLayer::F16 { keys, values } => attend_blocks(spec, layout, keys, values, q, seqs, out),
        KvLayer::F32 { keys, values } => attend_blocks(spec, layout, keys, values, q, seqs, out),
    }
}

/// [`paged_attention`] over one element type.
fn attend_blocks<E: KvElement>(
    spec: &AttentionSpec,
    layout: &KvLayout,
    keys: &[E],
    values: &[E],
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
        owner[seq.row..seq.row + seq.new].fill(s);
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
            // SAFETY: AVX2, FMA and F16C were detected at run time.
            unsafe { job.run_simd(q_rows, out) };
            return;
        }
        let _ = simd;
        job.run(q_rows, out);
    });
}

/// The attention of some query heads of one token, which share one key/value head.
struct HeadsJob<'a, E> {
    spec: &'a AttentionSpec,
    layout: &'a KvLayout,
    keys: &'a [E],
    values: &'a [E],
    seq: &'a PagedSeq<'a>,
    /// The token's position.
    pos: usize,
    kv_head: usize,
    /// Query heads in `q_rows` and `out`.
    heads: usize,
}

impl<E: KvElement> HeadsJob<'_, E> {
    /// Calls `f(j, block, slot, n)` for each run of consecutive key positions
    /// `first + j .. first + j + n` that lie in one block (from `slot` on), in order.
    #[inline(always)]
    fn runs(&self, first: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let bs = self.layout.block_size;
        let mut p = first;
        while p <= self.pos {
            let slot = p % bs;
            let n = (bs - slot).min(self.pos + 1 - p);
            f(p - first, self.seq.blocks[p / bs] as usize, slot, n);
            p += n;
        }
    }

    /// The job with the x86 kernels (head dimensions that are a multiple of eight; others
    /// take the portable loops, compiled for AVX2 and FMA).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_simd(&self, q_rows: &[f32], out: &mut [f32]) {
        let (spec, layout) = (self.spec, self.layout);
        let hd = layout.head_dim;
        if hd % 8 != 0 {
            return self.run(q_rows, out);
        }
        let first = spec.window.map_or(0, |w| (self.pos + 1).saturating_sub(w));
        let n_keys = self.pos + 1 - first;
        let group = self.heads;
        let mut scores = vec![0f32; group * n_keys];
        let row_of = |block: usize, slot: usize| layout.offset(block as u32, self.kv_head, slot);
        for g in 0..group {
            let q = &q_rows[g * hd..(g + 1) * hd];
            let row = &mut scores[g * n_keys..(g + 1) * n_keys];
            self.runs(first, |j, block, slot, n| {
                let at = row_of(block, slot);
                assert!(at + n * hd <= self.keys.len());
                // SAFETY: the caller checked the CPU; the rows are in bounds (above).
                unsafe { x86::dots(q, self.keys.as_ptr().add(at), hd, &mut row[j..j + n]) };
            });
        }
        softmax(spec, &mut scores, group, n_keys);
        out.fill(0.0);
        for g in 0..group {
            let w = &scores[g * n_keys..(g + 1) * n_keys];
            let o = &mut out[g * hd..(g + 1) * hd];
            self.runs(first, |j, block, slot, n| {
                let at = row_of(block, slot);
                assert!(at + n * hd <= self.values.len());
                // SAFETY: as above.
                unsafe { x86::weighted_sum(o, &w[j..j + n], self.values.as_ptr().add(at)) };
            });
        }
    }

    /// The job in portable loops.
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
                scores[g * n_keys + j] = E::dot(&q_rows[g * hd..(g + 1) * hd], k);
            }
        }
        softmax(spec, &mut scores, group, n_keys);
        out.fill(0.0);
        for (j, key_pos) in (first..=pos).enumerate() {
            let block = seq.blocks[key_pos / layout.block_size];
            let at = layout.offset(block, self.kv_head, key_pos % layout.block_size);
            let v = &self.values[at..at + hd];
            for g in 0..group {
                E::axpy(&mut out[g * hd..(g + 1) * hd], scores[g * n_keys + j], v);
            }
        }
    }
}

/// Scales raw dot products (`group` rows of `n_keys`), applies the soft cap, and turns each
/// row into softmax weights.
#[inline(always)]
fn softmax(spec: &AttentionSpec, scores: &mut [f32], group: usize, n_keys: usize) {
    for g in 0..group {
        let row = &mut scores[g * n_keys..(g + 1) * n_keys];
        for s in row.iter_mut() {
            *s *= spec.scale;
            if let Some(cap) = spec.softcap {
                *s = (*s / cap).tanh() * cap;
            }
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv::{KvDtype, KvStorage};
    use crate::engine::model::attention::attend;
    use candle_core::{DType, Device, Tensor};

    /// Paged attention over scattered blocks equals dense attention over the same keys, for
    /// several sequences of ragged lengths in one call, with grouped heads, a window and a
    /// soft cap; in half precision too, against dense attention over the rounded keys and
    /// values. Head dimensions 20 (the portable
    /// loops), 24 and 72 (the x86 kernels' tails and register tile), blocks of 4 and 16
    /// positions (runs of eight keys and more).
    #[test]
    fn equals_dense_attention() -> crate::error::Result<()> {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            for (hd, block_size) in [(20, 4), (24, 16), (72, 16)] {
                equals_dense_attention_in(dtype, hd, block_size)?;
            }
        }
        Ok(())
    }

    fn equals_dense_attention_in(
        dtype: KvDtype,
        hd: usize,
        block_size: usize,
    ) -> crate::error::Result<()> {
        let dev = Device::Cpu;
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 2,
            head_dim: hd,
            block_size,
            dtype,
        };
        for (window, softcap) in [(None, None), (Some(5), Some(3.0f32))] {
            let spec = AttentionSpec {
                n_heads: 6,
                n_kv_heads: 2,
                scale: 0.3,
                softcap,
                window,
            };
            let mut storage = KvStorage::new(layout, 64);
            // Sequences: (stored before, new tokens, blocks scattered over the pool).
            let plan: Vec<(usize, usize, Vec<BlockId>)> =
                [(0usize, 3usize), (9, 1), (5, 4), (30, 1)]
                    .iter()
                    .enumerate()
                    .map(|(s, &(start, new))| {
                        let n_blocks = (start + new).div_ceil(block_size);
                        let blocks = (0..n_blocks).map(|b| (63 - b * 4 - s) as BlockId).collect();
                        (start, new, blocks)
                    })
                    .collect();
            let n_tokens: usize = plan.iter().map(|p| p.1).sum();
            let q = Tensor::randn(0f32, 1.0, (n_tokens, 6, hd), &dev)?;
            let q_host = q.flatten_all()?.to_vec1::<f32>()?;
            let mut seqs = Vec::new();
            let mut dense = Vec::new();
            let mut row = 0;
            for (start, new, blocks) in &plan {
                let total = start + new;
                let k = Tensor::randn(0f32, 1.0, (total, 2, hd), &dev)?;
                let v = Tensor::randn(0f32, 1.0, (total, 2, hd), &dev)?;
                storage.write(
                    0,
                    blocks,
                    0,
                    &k.flatten_all()?.to_vec1()?,
                    &v.flatten_all()?.to_vec1()?,
                );
                // What the store holds: the keys and values rounded to its element type.
                let stored = |t: Tensor| -> candle_core::Result<Tensor> {
                    match dtype {
                        KvDtype::F16 => t.to_dtype(DType::F16)?.to_dtype(DType::F32),
                        KvDtype::F32 => Ok(t),
                    }
                };
                let (k, v) = (stored(k)?, stored(v)?);
                let heads_first = |t: &Tensor| t.transpose(0, 1)?.contiguous();
                let q_seq = heads_first(&q.narrow(0, row, *new)?)?;
                dense.push(attend(&spec, &q_seq, &heads_first(&k)?, &heads_first(&v)?)?);
                seqs.push(PagedSeq {
                    row,
                    new: *new,
                    start: *start,
                    blocks,
                });
                row += new;
            }
            let mut out = vec![0f32; n_tokens * 6 * hd];
            paged_attention(&spec, &layout, storage.layer(0), &q_host, &seqs, &mut out);
            let expected = Tensor::cat(&dense, 0)?.flatten_all()?.to_vec1::<f32>()?;
            let diff = out
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 2e-5,
                "{dtype:?}, head dimension {hd}, blocks of {block_size}, window {window:?}: \
                 max difference {diff}"
            );
        }
        Ok(())
    }

    /// A token's attention is the same bits whichever call computes it: all of a
    /// sequence's tokens in one call, one token per call, or uneven chunks beside another
    /// sequence. Head dimensions 20 (portable loops) and 24 (x86 kernels and their tails),
    /// with and without a window.
    #[test]
    fn a_tokens_attention_does_not_depend_on_its_call() -> crate::error::Result<()> {
        let dev = Device::Cpu;
        for (hd, window) in [(20, None), (24, None), (24, Some(11))] {
            let layout = KvLayout {
                n_layers: 1,
                n_kv_heads: 2,
                head_dim: hd,
                block_size: 16,
                dtype: KvDtype::F16,
            };
            let spec = AttentionSpec {
                n_heads: 4,
                n_kv_heads: 2,
                scale: 0.3,
                softcap: None,
                window,
            };
            let (len, row) = (45, 4 * hd);
            let mut storage = KvStorage::new(layout, 8);
            let (ours, other): (Vec<BlockId>, Vec<BlockId>) = ((0..3).collect(), (3..8).collect());
            for blocks in [&ours, &other] {
                let kv = |seed: f32| -> Vec<f32> {
                    (0..blocks.len() * 16 * 2 * hd)
                        .map(|i| ((i as f32 + seed) * 0.37).sin())
                        .collect()
                };
                storage.write(0, blocks, 0, &kv(0.0), &kv(1.0));
            }
            let q = Tensor::randn(0f32, 1.0, (len, 4, hd), &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            // Tokens `from..to` of our sequence, optionally after 9 tokens of the other one.
            let call = |from: usize, to: usize, beside: bool| -> Vec<f32> {
                let lead = if beside { 9 } else { 0 };
                let mut q_call = vec![0.5f32; lead * row];
                q_call.extend_from_slice(&q[from * row..to * row]);
                let mut seqs = vec![PagedSeq {
                    row: lead,
                    new: to - from,
                    start: from,
                    blocks: &ours,
                }];
                if beside {
                    seqs.push(PagedSeq {
                        row: 0,
                        new: 9,
                        start: 60,
                        blocks: &other,
                    });
                }
                let mut out = vec![0f32; q_call.len()];
                paged_attention(&spec, &layout, storage.layer(0), &q_call, &seqs, &mut out);
                out.split_off(lead * row)
            };
            let whole = call(0, len, false);
            let one_by_one: Vec<f32> = (0..len).flat_map(|t| call(t, t + 1, false)).collect();
            let mut chunked = call(0, 7, true);
            chunked.extend(call(7, 30, true));
            chunked.extend(call(30, len, false));
            for (name, got) in [("one by one", one_by_one), ("chunked", chunked)] {
                let same = got
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && got.len() == whole.len(),
                    "head dimension {hd}, {name}"
                );
            }
        }
        Ok(())
    }
}
