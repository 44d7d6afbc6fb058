//! The memory behind the paged key/value cache: for every layer, one array of keys and one
//! of values, each divided into blocks of `block_size` positions.
//!
//! Layout per layer and per block: `[kv_head][slot][head_dim]`, so that the keys of one
//! head inside a block are contiguous and attention reads them as one run. The arrays are
//! allocated zeroed at full size; the operating system commits pages only as blocks are
//! first written, so resident memory follows the blocks actually used.
//!
//! Elements are half-precision floats by default ([`KvDtype::F16`], as llama.cpp keeps
//! them): decoding after a long context reads every stored key and value once per token,
//! and half the bytes is half that traffic. [`KvDtype::F32`] keeps the computed values
//! exactly, for comparison.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::engine::kv::pool::BlockId;

/// The element type of stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// IEEE half precision (11-bit significand), converted on write and on read.
    #[default]
    F16,
    /// Single precision: the computed values unchanged.
    F32,
}

impl KvDtype {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(KvDtype::F16),
            "f32" => Ok(KvDtype::F32),
            _ => Err(format!("expected f16 or f32, got {s:?}")),
        }
    }
}

/// Shape of the cache of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    /// The element type.
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Elements of keys (or of values) in one block of one layer.
    pub fn block_elements(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes of one block across all layers, keys and values.
    pub fn block_bytes(&self) -> usize {
        self.n_layers * 2 * self.block_elements() * self.dtype.bytes()
    }

    /// Offset of `(block, head, slot)` in a layer's array.
    pub fn offset(&self, block: BlockId, head: usize, slot: usize) -> usize {
        ((block as usize * self.n_kv_heads + head) * self.block_size + slot) * self.head_dim
    }
}

/// One layer's stored keys and values, in the store's element type.
#[derive(Debug, Clone, Copy)]
pub enum KvLayer<'a> {
    F16 { keys: &'a [f16], values: &'a [f16] },
    F32 { keys: &'a [f32], values: &'a [f32] },
}

/// An element type the arrays can hold.
trait Element: Copy + Default {
    /// `n` zeros from zeroed memory (`calloc`), whose pages the operating system commits
    /// only when they are first written. `vec![x; n]` writes every element for a type the
    /// standard library does not know to be zero when all its bits are, as `f16`: it
    /// committed the whole budget at load (6.6 GB resident for one short generation).
    fn zeroed(n: usize) -> Vec<Self>;
    fn store(dst: &mut [Self], src: &[f32]);
    fn load(dst: &mut Vec<f32>, src: &[Self]);
}

impl Element for f32 {
    fn zeroed(n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn load(dst: &mut Vec<f32>, src: &[f32]) {
        dst.extend_from_slice(src);
    }
}

impl Element for f16 {
    fn zeroed(n: usize) -> Vec<f16> {
        let mut bits = std::mem::ManuallyDrop::new(vec![0u16; n]);
        // SAFETY: `f16` is `repr(transparent)` over `u16` (same size and alignment, and the
        // all-zero bits are +0.0), so the allocation, length and capacity carry over.
        unsafe { Vec::from_raw_parts(bits.as_mut_ptr().cast::<f16>(), bits.len(), bits.capacity()) }
    }
    fn store(dst: &mut [f16], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn load(dst: &mut Vec<f32>, src: &[f16]) {
        let at = dst.len();
        dst.resize(at + src.len(), 0.0);
        src.convert_to_f32_slice(&mut dst[at..]);
    }
}

/// Keys and values of every layer in one element type.
#[derive(Debug)]
struct Arrays<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

impl<T: Element> Arrays<T> {
    fn new(layout: &KvLayout, n_blocks: usize) -> Self {
        let n = n_blocks * layout.block_elements();
        Self {
            keys: (0..layout.n_layers).map(|_| T::zeroed(n)).collect(),
            values: (0..layout.n_layers).map(|_| T::zeroed(n)).collect(),
        }
    }

    fn write(
        &mut self,
        l: &KvLayout,
        layer: usize,
        blocks: &[BlockId],
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let row = l.n_kv_heads * l.head_dim;
        let new = keys.len() / row;
        let (k_dst, v_dst) = (&mut self.keys[layer], &mut self.values[layer]);
        for t in 0..new {
            let pos = start + t;
            let block = blocks[pos / l.block_size];
            let slot = pos % l.block_size;
            for h in 0..l.n_kv_heads {
                let src = t * row + h * l.head_dim;
                let dst = l.offset(block, h, slot);
                T::store(
                    &mut k_dst[dst..dst + l.head_dim],
                    &keys[src..src + l.head_dim],
                );
                T::store(
                    &mut v_dst[dst..dst + l.head_dim],
                    &values[src..src + l.head_dim],
                );
            }
        }
    }

    fn gather(
        &self,
        l: &KvLayout,
        layer: usize,
        blocks: &[BlockId],
        len: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut k = Vec::with_capacity(l.n_kv_heads * len * l.head_dim);
        let mut v = Vec::with_capacity(k.capacity());
        for h in 0..l.n_kv_heads {
            let mut pos = 0;
            for &block in blocks {
                if pos >= len {
                    break;
                }
                let n = l.block_size.min(len - pos);
                let at = l.offset(block, h, 0);
                T::load(&mut k, &self.keys[layer][at..at + n * l.head_dim]);
                T::load(&mut v, &self.values[layer][at..at + n * l.head_dim]);
                pos += n;
            }
        }
        (k, v)
    }
}

#[derive(Debug)]
enum Data {
    F16(Arrays<f16>),
    F32(Arrays<f32>),
}

/// Keys and values of every block, every layer, in host memory.
#[derive(Debug)]
pub struct KvStorage {
    layout: KvLayout,
    data: Data,
}

impl KvStorage {
    /// Storage for `n_blocks` blocks.
    pub fn new(layout: KvLayout, n_blocks: usize) -> Self {
        let data = match layout.dtype {
            KvDtype::F16 => Data::F16(Arrays::new(&layout, n_blocks)),
            KvDtype::F32 => Data::F32(Arrays::new(&layout, n_blocks)),
        };
        Self { layout, data }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Layer `layer`'s keys and values.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match &self.data {
            Data::F16(a) => KvLayer::F16 {
                keys: &a.keys[layer],
                values: &a.values[layer],
            },
            Data::F32(a) => KvLayer::F32 {
                keys: &a.keys[layer],
                values: &a.values[layer],
            },
        }
    }

    /// Writes keys and values of `new` tokens, laid out `(new, kv_heads, head_dim)`, at
    /// positions `start..start + new` of the sequence whose blocks are `blocks`.
    pub fn write(
        &mut self,
        layer: usize,
        blocks: &[BlockId],
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let l = self.layout;
        match &mut self.data {
            Data::F16(a) => a.write(&l, layer, blocks, start, keys, values),
            Data::F32(a) => a.write(&l, layer, blocks, start, keys, values),
        }
    }

    /// The first `len` positions of a sequence as contiguous `(kv_heads, len, head_dim)`
    /// keys and values in single precision (for attention by dense matrix products).
    pub fn gather(&self, layer: usize, blocks: &[BlockId], len: usize) -> (Vec<f32>, Vec<f32>) {
        let l = self.layout;
        match &self.data {
            Data::F16(a) => a.gather(&l, layer, blocks, len),
            Data::F32(a) => a.gather(&l, layer, blocks, len),
        }
    }
}
