//! The quantized matmul driver and the weight matrices it multiplies.
//!
//! Work split: output columns (weight rows) are cut into contiguous ranges, one task of the
//! engine's [`team`](crate::engine::team) each, several per thread so that uneven progress evens out. Inside a task, activation
//! rows go in tiles of [`ROW_TILE`]; for each weight row the whole tile is swept while that
//! row sits in L1, so the weights are streamed from memory once per tile rather than once
//! per activation row. Decoding 16 sequences therefore costs far less than 16 decodes.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};

use super::blocks::{
    self, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1,
};
use super::packed::{PackedMatrix, GROUP};
use crate::engine::team::{team, Disjoint};
use crate::error::{Error, Result};

/// Activation rows per tile: 16 rows of a 1536-wide Q8 activation fit in L1 with room for
/// the weight row.
pub const ROW_TILE: usize = 16;

/// One weight format: its blocks, the activation blocks it pairs with, and their dot.
pub trait Kernel {
    /// A block of stored weights.
    type Weight: Sync;
    /// A block of quantized activations.
    type Act: Clone + Send + Sync;
    /// Elements per block (weights and activations alike).
    const BLOCK: usize;
    /// A block to fill scratch buffers with.
    fn zero_act() -> Self::Act;
    /// Quantizes one activation row (a multiple of [`Self::BLOCK`] long).
    fn quantize(xs: &[f32], out: &mut [Self::Act]);
    /// `sum(w * a)` of one weight row with each of `R` activation rows of `k` elements.
    fn dot_rows<const R: usize>(k: usize, w: &[Self::Weight], a: [&[Self::Act]; R]) -> [f32; R];
}

/// A format whose dot product candle provides (SIMD where candle has it).
pub struct Candle<T>(PhantomData<T>);

/// Declares a format that runs on this crate's kernels: its weight and activation blocks,
/// the activation quantizer, the AVX2 dot product and its portable definition.
macro_rules! own_kernel {
    ($(#[$doc:meta])* $name:ident: $weight:ty, $act:ty, $block:expr, $quantize:path,
     $simd:ident, $portable:path) => {
        $(#[$doc])*
        pub struct $name;

        impl Kernel for $name {
            type Weight = $weight;
            type Act = $act;
            const BLOCK: usize = $block;
            fn zero_act() -> $act {
                <$act>::ZERO
            }
            fn quantize(xs: &[f32], out: &mut [$act]) {
                $quantize(xs, out)
            }
            fn dot_rows<const R: usize>(_k: usize, w: &[$weight], a: [&[$act]; R]) -> [f32; R] {
                #[cfg(target_arch = "x86_64")]
                if super::simd_available() {
                    // SAFETY: the CPU features were detected at run time; every activation
                    // row has as many blocks as the weight row (checked by `run`).
                    return unsafe { super::avx2::$simd::<R>(w, a) };
                }
                a.map(|a| $portable(w, a))
            }
        }
    };
}

own_kernel!(
    /// Q4_1 weights on this crate's kernels.
    Q4_1: BlockQ4_1, BlockQ8_1, blocks::BLOCK, blocks::quantize_q8_1,
    dot_q4_1, blocks::portable::dot_q4_1
);
own_kernel!(
    /// Q5_0 weights on this crate's kernels.
    Q5_0: BlockQ5_0, BlockQ8_0, blocks::BLOCK, blocks::quantize_q8_0,
    dot_q5_0, blocks::portable::dot_q5_0
);
own_kernel!(
    /// Q5_1 weights on this crate's kernels.
    Q5_1: BlockQ5_1, BlockQ8_1, blocks::BLOCK, blocks::quantize_q8_1,
    dot_q5_1, blocks::portable::dot_q5_1
);
own_kernel!(
    /// Q8_0 weights on this crate's kernels.
    Q8_0: BlockQ8_0, BlockQ8_0, blocks::BLOCK, blocks::quantize_q8_0,
    dot_q8_0, blocks::portable::dot_q8_0
);
own_kernel!(
    /// Q4_K weights on this crate's kernels.
    Q4K: BlockQ4K, BlockQ8K, blocks::SUPER_BLOCK, blocks::quantize_q8k,
    dot_q4k, blocks::portable::dot_q4k
);
own_kernel!(
    /// Q6_K weights on this crate's kernels.
    Q6K: BlockQ6K, BlockQ8K, blocks::SUPER_BLOCK, blocks::quantize_q8k,
    dot_q6k, blocks::portable::dot_q6k
);

impl<T: GgmlType> Kernel for Candle<T> {
    type Weight = T;
    type Act = T::VecDotType;
    const BLOCK: usize = T::BLCK_SIZE;
    fn zero_act() -> T::VecDotType {
        T::VecDotType::zeros()
    }
    fn quantize(xs: &[f32], out: &mut [T::VecDotType]) {
        T::VecDotType::from_float(xs, out)
    }
    fn dot_rows<const R: usize>(k: usize, w: &[T], a: [&[T::VecDotType]; R]) -> [f32; R] {
        a.map(|a| T::vec_dot(k, w, a))
    }
}

/// Dot products of weight row `col` with activation rows `row..row + R`, written to `out`;
/// returns `R`. Wider blocks unpack each weight block once for more rows (16 rows: 1.35x
/// the 4-row throughput of prompt processing on qwen2.5-coder-1.5b).
#[allow(clippy::too_many_arguments)] // one call site, the driver's inner loop
#[inline]
fn dot_block<K: Kernel, const R: usize>(
    k: usize,
    w: &[K::Weight],
    acts: &[K::Act],
    k_blocks: usize,
    row: usize,
    col: usize,
    n: usize,
    out: Disjoint<f32>,
) -> usize {
    let values: [f32; R] = K::dot_rows(
        k,
        w,
        std::array::from_fn(|i| &acts[(row + i) * k_blocks..(row + i + 1) * k_blocks]),
    );
    for (i, value) in values.into_iter().enumerate() {
        // SAFETY: the caller passes rows and a column in bounds, and only its task owns
        // column `col`.
        unsafe { out.write((row + i) * n + col, value) };
    }
    R
}

/// The rows of `x` (`k` values each) quantized into `k_blocks` activation blocks each,
/// over the team when there are enough rows to share.
pub(super) fn quantize_rows<A: Clone + Send>(
    x: &[f32],
    k: usize,
    k_blocks: usize,
    zero: A,
    quantize: fn(&[f32], &mut [A]),
) -> Vec<A> {
    let m = x.len() / k;
    let mut acts = vec![zero; m * k_blocks];
    if m >= 8 {
        let shared = Disjoint::new(&mut acts);
        team().run(m, &|row| {
            // SAFETY: each task writes only its own row's blocks.
            let a = unsafe { shared.slice(row * k_blocks, k_blocks) };
            quantize(&x[row * k..(row + 1) * k], a);
        });
    } else {
        for (a, x) in acts.chunks_mut(k_blocks).zip(x.chunks(k)) {
            quantize(x, a);
        }
    }
    acts
}

/// `out = x W^T` with `x` of `m` rows of `k`, `W` of `n` rows of `k` blocks, `out` `m x n`.
pub fn run<K: Kernel>(weights: &[K::Weight], n: usize, k: usize, x: &[f32], out: &mut [f32]) {
    let k_blocks = k / K::BLOCK;
    let m = x.len() / k;
    // Real asserts: the workers write `out` through a raw pointer.
    assert!(k.is_multiple_of(K::BLOCK) && weights.len() == n * k_blocks);
    assert!(x.len() == m * k && out.len() == m * n);

    let team = team();
    let acts = quantize_rows(x, k, k_blocks, K::zero_act(), K::quantize);

    let threads = team.threads();
    // Enough ranges to balance, few enough that each covers some weight rows.
    let tasks = (threads * 4).min(n.div_ceil(4)).max(1);
    let cols_per_task = n.div_ceil(tasks);
    let shared = Disjoint::new(out);
    let acts = &acts;
    let work = |task: usize| {
        let cols = task * cols_per_task..((task + 1) * cols_per_task).min(n);
        for tile in (0..m).step_by(ROW_TILE) {
            let rows = tile..(tile + ROW_TILE).min(m);
            for col in cols.clone() {
                let w = &weights[col * k_blocks..(col + 1) * k_blocks];
                let mut row = rows.start;
                while row < rows.end {
                    // The widest register block that fits the rows left.
                    row += match rows.end - row {
                        16.. => dot_block::<K, 16>(k, w, acts, k_blocks, row, col, n, shared),
                        8.. => dot_block::<K, 8>(k, w, acts, k_blocks, row, col, n, shared),
                        4.. => dot_block::<K, 4>(k, w, acts, k_blocks, row, col, n, shared),
                        _ => dot_block::<K, 1>(k, w, acts, k_blocks, row, col, n, shared),
                    };
                }
            }
        }
    };
    team.run(tasks, &work);
}

/// A quantized weight matrix of `rows x cols` (out x in) that the engine's kernels can
/// multiply: as stored, through [`run`], or repacked for the VNNI kernels.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    weights: Weights,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
}

/// Where a matrix's weights are and in which layout.
#[derive(Debug, Clone)]
enum Weights {
    /// GGML's blocks, row by row, as loaded.
    Stored(Arc<QTensor>),
    /// The interleaved copy (the loaded tensor is dropped unless shared, as a tied
    /// embedding is).
    Packed(Arc<PackedMatrix>),
}

impl QuantMatrix {
    /// Whether tensors of `dtype` can go through this driver.
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        )
    }

    /// Wraps a CPU tensor of shape `(rows, cols)` of a [`supported`](Self::supports) type,
    /// repacking it for the VNNI kernels where the CPU has them and the type has one.
    pub fn new(tensor: Arc<QTensor>) -> Result<Self> {
        let mut matrix = Self::stored(tensor)?;
        if super::vnni_available() {
            if let Some(packed) = matrix.pack()? {
                matrix.weights = Weights::Packed(Arc::new(packed));
            }
        }
        Ok(matrix)
    }

    /// Whether the weights were repacked for the VNNI kernels.
    pub fn is_packed(&self) -> bool {
        matches!(self.weights, Weights::Packed(_))
    }

    /// The interleaved copy, `None` for types without an interleaved kernel (Q2_K, Q3_K,
    /// Q5_K).
    fn pack(&self) -> Result<Option<PackedMatrix>> {
        pack_rows(self.dtype, &self.storage()?, self.rows, self.cols)
    }

    /// A `rows x cols` matrix of `dtype` repacked for the VNNI kernels, its stored rows read
    /// through `read(byte, buffer)` (bytes from `byte` of the stored matrix) a few megabytes
    /// at a time, so that loading never holds the stored copy of a whole matrix beside the
    /// repacked one. `None` where the CPU has no VNNI or the type no repacked layout: the
    /// caller loads the stored tensor then.
    pub fn load_packed(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        read: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<Option<Self>> {
        Self::load_packed_in_chunks(dtype, rows, cols, LOAD_CHUNK_BYTES, read)
    }

    /// [`load_packed`](Self::load_packed) reading about `chunk_bytes` at a time (at least
    /// one group of rows); tests load in small chunks to cross many chunk boundaries.
    pub(super) fn load_packed_in_chunks(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        chunk_bytes: usize,
        mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<Option<Self>> {
        if !super::vnni_available() || !Self::supports(dtype) || !has_packed_layout(dtype) {
            return Ok(None);
        }
        if cols == 0 || !cols.is_multiple_of(dtype.block_size()) {
            return Err(Error::Tensor {
                name: format!("{dtype:?} weight"),
                reason: format!(
                    "row length {cols} is not a positive multiple of the block size {}",
                    dtype.block_size()
                ),
            });
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let chunk = (chunk_bytes / row_bytes / GROUP).max(1) * GROUP;
        // u64 words, so that every block type's alignment holds.
        let mut buffer = vec![0u64; (chunk.min(rows) * row_bytes).div_ceil(8)];
        let mut packed: Option<PackedMatrix> = None;
        for first in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - first);
            let bytes = &mut words_as_bytes(&mut buffer)[..n * row_bytes];
            read((first * row_bytes) as u64, bytes)?;
            let part = pack_rows(dtype, bytes, n, cols)?.expect("a type with a packed layout");
            match &mut packed {
                None => packed = Some(part),
                Some(head) => head.append(part, rows),
            }
        }
        Ok(packed.map(|p| Self {
            weights: Weights::Packed(Arc::new(p)),
            dtype,
            rows,
            cols,
        }))
    }

    /// Row `r` of the matrix as f32 values (GGML's dequantization, bit for bit) when its
    /// weights are repacked; `None` for a matrix kept as stored.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Option<()> {
        match &self.weights {
            Weights::Packed(p) => {
                p.dequantize_row(r, out);
                Some(())
            }
            Weights::Stored(_) => None,
        }
    }

    /// Like [`new`](Self::new) but always multiplies the blocks as stored (the path of CPUs
    /// without VNNI; tests compare the two).
    pub fn stored(tensor: Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = tensor.shape().dims2()?;
        let dtype = tensor.dtype();
        let invalid = |reason: String| Error::Tensor {
            name: format!("{dtype:?} weight"),
            reason,
        };
        if !Self::supports(dtype) {
            return Err(invalid("no engine kernel for this type".into()));
        }
        if cols % dtype.block_size() != 0 {
            return Err(invalid(format!(
                "row length {cols} is not a multiple of the block size {}",
                dtype.block_size()
            )));
        }
        let matrix = Self {
            weights: Weights::Stored(tensor),
            dtype,
            rows,
            cols,
        };
        // A bad tensor fails at load, without a pass over its weights. Every supported
        // block holds f16 scales, so 2-byte alignment is what each call's cast will need.
        let data = matrix.storage()?;
        if !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<half::f16>()) {
            return Err(invalid("storage is not aligned for its blocks".into()));
        }
        Ok(matrix)
    }

    /// The tensor's bytes, checked to hold exactly `rows x cols` values of its type.
    fn storage(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        let dtype = self.dtype;
        let Weights::Stored(tensor) = &self.weights else {
            return Err(Error::Tensor {
                name: format!("{dtype:?} weight"),
                reason: "the stored blocks were replaced by a repacked copy".into(),
            });
        };
        let data = tensor.data()?;
        let (n, k) = (self.rows, self.cols);
        if data.len() != n * k / dtype.block_size() * dtype.type_size() {
            return Err(Error::Tensor {
                name: format!("{dtype:?} weight"),
                reason: format!("{} bytes of storage for a {n} x {k} matrix", data.len()),
            });
        }
        Ok(data)
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weight columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x W^T` for `x` holding whole rows of [`cols`](Self::cols) values, row-major.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.cols) {
            return Err(Error::Tensor {
                name: format!("{:?} weight", self.dtype),
                reason: format!("input of {} values is not rows of {}", x.len(), self.cols),
            });
        }
        let mut out = vec![0f32; x.len() / self.cols * self.rows];
        self.forward_into(x, &mut out)?;
        Ok(out)
    }

    /// `x W_i^T` for each matrix, with one input: matrices repacked into the same layout
    /// share the quantized input and one parallel region (q, k and v; gate and up), the
    /// others run one by one.
    pub fn forward_many(mats: &[&QuantMatrix], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let mut outs: Vec<Option<Vec<f32>>> = vec![None; mats.len()];
        for i in 0..mats.len() {
            if outs[i].is_some() {
                continue;
            }
            let Weights::Packed(first) = &mats[i].weights else {
                outs[i] = Some(mats[i].forward(x)?);
                continue;
            };
            if !x.len().is_multiple_of(mats[i].cols) {
                return mats[i].forward(x).map(|_| Vec::new()); // the shape error
            }
            let rows = x.len() / mats[i].cols;
            // This matrix and every later one not yet computed that shares its input.
            let members: Vec<(usize, &PackedMatrix)> = (i..mats.len())
                .filter_map(|j| match &mats[j].weights {
                    Weights::Packed(p) if outs[j].is_none() && p.shares_input_with(first) => {
                        Some((j, &**p))
                    }
                    _ => None,
                })
                .collect();
            let mut buffers: Vec<Vec<f32>> = members
                .iter()
                .map(|&(j, _)| vec![0f32; rows * mats[j].rows])
                .collect();
            let packed: Vec<&PackedMatrix> = members.iter().map(|&(_, p)| p).collect();
            let mut slices: Vec<&mut [f32]> =
                buffers.iter_mut().map(|b| b.as_mut_slice()).collect();
            PackedMatrix::forward_many(&packed, x, &mut slices);
            for (&(j, _), buffer) in members.iter().zip(buffers) {
                outs[j] = Some(buffer);
            }
        }
        Ok(outs.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`forward`](Self::forward) into a caller's buffer of `rows(x) * self.rows()` values.
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        let dtype = self.dtype;
        let m = x.len() / k;
        if x.len() != m * k || out.len() != m * n {
            return Err(Error::Tensor {
                name: format!("{dtype:?} weight"),
                reason: format!(
                    "{} inputs and {} outputs do not fit a {n} x {k} matrix",
                    x.len(),
                    out.len()
                ),
            });
        }
        if let Weights::Packed(packed) = &self.weights {
            packed.forward_into(x, out);
            return Ok(());
        }
        let data = self.storage()?;
        match dtype {
            GgmlDType::Q4_1 => run::<Q4_1>(cast(&data)?, n, k, x, out),
            GgmlDType::Q5_0 => run::<Q5_0>(cast(&data)?, n, k, x, out),
            GgmlDType::Q5_1 => run::<Q5_1>(cast(&data)?, n, k, x, out),
            GgmlDType::Q4_0 => run::<Candle<k_quants::BlockQ4_0>>(cast(&data)?, n, k, x, out),
            GgmlDType::Q8_0 => run::<Q8_0>(cast(&data)?, n, k, x, out),
            GgmlDType::Q2K => run::<Candle<k_quants::BlockQ2K>>(cast(&data)?, n, k, x, out),
            GgmlDType::Q3K => run::<Candle<k_quants::BlockQ3K>>(cast(&data)?, n, k, x, out),
            GgmlDType::Q4K => run::<Q4K>(cast(&data)?, n, k, x, out),
            GgmlDType::Q5K => run::<Candle<k_quants::BlockQ5K>>(cast(&data)?, n, k, x, out),
            GgmlDType::Q6K => run::<Q6K>(cast(&data)?, n, k, x, out),
            other => {
                return Err(Error::Tensor {
                    name: format!("{other:?} weight"),
                    reason: "no engine kernel for this type".into(),
                })
            }
        }
        Ok(())
    }
}

/// A tensor's bytes as its blocks, checking that they are whole and aligned.
/// Bytes of stored rows read per step when a matrix is repacked at load.
const LOAD_CHUNK_BYTES: usize = 4 << 20;

/// Whether `dtype` has an interleaved layout (the others stay as stored).
fn has_packed_layout(dtype: GgmlDType) -> bool {
    packer(dtype).is_some()
}

/// Repacks `n x k` stored values (row-major bytes) of one block type.
type Packer = fn(&[u8], usize, usize) -> Result<PackedMatrix>;

/// The repacking of `dtype`, `None` for a type without an interleaved layout: the one list
/// of repacked types, read both before loading and when packing.
fn packer(dtype: GgmlDType) -> Option<Packer> {
    Some(match dtype {
        GgmlDType::Q4_0 => |d, n, k| Ok(PackedMatrix::pack::<BlockQ4_0>(cast(d)?, n, k)),
        GgmlDType::Q4_1 => |d, n, k| Ok(PackedMatrix::pack::<BlockQ4_1>(cast(d)?, n, k)),
        GgmlDType::Q5_0 => |d, n, k| Ok(PackedMatrix::pack::<BlockQ5_0>(cast(d)?, n, k)),
        GgmlDType::Q5_1 => |d, n, k| Ok(PackedMatrix::pack::<BlockQ5_1>(cast(d)?, n, k)),
        GgmlDType::Q8_0 => |d, n, k| Ok(PackedMatrix::pack::<BlockQ8_0>(cast(d)?, n, k)),
        GgmlDType::Q4K => |d, n, k| Ok(PackedMatrix::pack_q4k(cast(d)?, n, k)),
        GgmlDType::Q6K => |d, n, k| Ok(PackedMatrix::pack_q6k(cast(d)?, n, k)),
        _ => return None,
    })
}

/// `rows x cols` stored values of `dtype` (row-major bytes) repacked; `None` for a type
/// without an interleaved layout.
fn pack_rows(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Result<Option<PackedMatrix>> {
    if data.len() != n * k / dtype.block_size() * dtype.type_size() {
        return Err(Error::Tensor {
            name: format!("{dtype:?} weight"),
            reason: format!("{} bytes of storage for a {n} x {k} matrix", data.len()),
        });
    }
    packer(dtype).map(|pack| pack(data, n, k)).transpose()
}

/// The bytes of a word buffer.
fn words_as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirement; the slice covers exactly the
    // words' memory and borrows it mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

fn cast<T>(bytes: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return Err(Error::Tensor {
            name: "quantized weight".into(),
            reason: "storage is not a whole, aligned array of blocks".into(),
        });
    }
    // SAFETY: size and alignment are checked; the block types are plain old data for
    // which every bit pattern is valid, and the slice borrows `bytes`.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size) })
}
