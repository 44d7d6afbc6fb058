//! The memory behind the paged key/value cache: for every layer, one array of keys and one
//! of values, each divided into blocks of `block_size` positions.
//!
//! Layout per layer and per block: `[kv_head][slot][head_dim]`, so that the keys of one
//! head inside a block are contiguous and attention reads them as one run. The arrays are
//! allocated zeroed at full size; the operating system commits pages only as blocks are
//! first written, so resident memory follows the blocks actually used.

use crate::engine::kv::pool::BlockId;

/// Shape of the cache of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
}

impl KvLayout {
    /// Floats of keys (or of values) in one block of one layer.
    pub fn block_floats(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes of one block across all layers, keys and values.
    pub fn block_bytes(&self) -> usize {
        self.n_layers * 2 * self.block_floats() * std::mem::size_of::<f32>()
    }

    /// Offset of `(block, head, slot)` in a layer's array.
    pub fn offset(&self, block: BlockId, head: usize, slot: usize) -> usize {
        ((block as usize * self.n_kv_heads + head) * self.block_size + slot) * self.head_dim
    }
}

/// Keys and values of every block, every layer, in host memory.
#[derive(Debug)]
pub struct KvStorage {
    layout: KvLayout,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvStorage {
    /// Storage for `n_blocks` blocks.
    pub fn new(layout: KvLayout, n_blocks: usize) -> Self {
        let floats = n_blocks * layout.block_floats();
        Self {
            layout,
            keys: (0..layout.n_layers).map(|_| vec![0f32; floats]).collect(),
            values: (0..layout.n_layers).map(|_| vec![0f32; floats]).collect(),
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Layer `layer`'s keys and values.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
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
                k_dst[dst..dst + l.head_dim].copy_from_slice(&keys[src..src + l.head_dim]);
                v_dst[dst..dst + l.head_dim].copy_from_slice(&values[src..src + l.head_dim]);
            }
        }
    }

    /// The first `len` positions of a sequence as contiguous `(kv_heads, len, head_dim)`
    /// keys and values (for attention by dense matrix products).
    pub fn gather(&self, layer: usize, blocks: &[BlockId], len: usize) -> (Vec<f32>, Vec<f32>) {
        let l = self.layout;
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
                k.extend_from_slice(&self.keys[layer][at..at + n * l.head_dim]);
                v.extend_from_slice(&self.values[layer][at..at + n * l.head_dim]);
                pos += n;
            }
        }
        (k, v)
    }
}
