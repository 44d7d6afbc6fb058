//! The paged key/value cache: fixed-size blocks in one pool shared by all sequences, with
//! reuse of cached prompt prefixes.
//!
//! A sequence ([`SeqKv`]) is a table of block ids plus the tokens whose keys and values
//! are stored. Blocks come from a [`KvStore`] whose size is fixed by a byte budget. Once a
//! block is full, it is indexed by a hash of every token from the start of the sequence to
//! the block's end; a later request whose prompt starts with the same tokens attaches those
//! blocks instead of computing them ([`KvStore::attach_prefix`]). Blocks no sequence uses
//! stay cached until the space is needed, then go least recently used first.

pub mod pool;
pub mod storage;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
pub use pool::{BlockId, BlockPool, PrefixHash};
pub use storage::{KvDtype, KvLayer, KvLayout, KvStorage};

/// Positions per block: small enough that little is wasted at the end of a sequence or
/// lost to a prefix that diverges mid-block, large enough that block tables stay short.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The hash of a block's prefix, chained from the previous block's.
pub fn chain_hash(previous: Option<PrefixHash>, tokens: &[u32]) -> PrefixHash {
    let mut h = Sha256::new();
    h.update(previous.unwrap_or(0).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    PrefixHash::from_le_bytes(bytes)
}

/// The chained hashes of every full block of `tokens`.
pub fn prefix_hashes(tokens: &[u32], block_size: usize) -> Vec<PrefixHash> {
    let mut previous = None;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let h = chain_hash(previous, block);
            previous = Some(h);
            h
        })
        .collect()
}

/// One sequence's view of the cache: its blocks and the tokens stored in them.
#[derive(Debug, Clone, Default)]
pub struct SeqKv {
    blocks: Vec<BlockId>,
    tokens: Vec<u32>,
    /// Chained hashes of the full blocks, in order.
    hashes: Vec<PrefixHash>,
}

impl SeqKv {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions stored (the position of the next token).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The block table.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// The tokens whose keys and values are stored.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// Counters of a store, for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub block_size: usize,
    pub n_blocks: usize,
    pub used_blocks: usize,
    pub cached_blocks: usize,
    pub evictions: u64,
    pub bytes: usize,
}

/// The block pool and its memory, for one model.
#[derive(Debug)]
pub struct KvStore {
    pool: BlockPool,
    storage: KvStorage,
    prefix_reuse: bool,
}

impl KvStore {
    /// A store of as many blocks as `budget_bytes` holds (at least one must fit).
    pub fn new(layout: KvLayout, budget_bytes: usize) -> Result<Self> {
        let n_blocks = budget_bytes / layout.block_bytes();
        if n_blocks == 0 {
            return Err(Error::InvalidArgument {
                name: "kv-budget".into(),
                reason: format!(
                    "{budget_bytes} bytes cannot hold one block of {} positions ({} bytes)",
                    layout.block_size,
                    layout.block_bytes()
                ),
            });
        }
        Ok(Self::with_blocks(layout, n_blocks))
    }

    /// A store of exactly `n_blocks` blocks.
    pub fn with_blocks(layout: KvLayout, n_blocks: usize) -> Self {
        Self {
            pool: BlockPool::new(n_blocks),
            storage: KvStorage::new(layout, n_blocks),
            prefix_reuse: true,
        }
    }

    /// Turns prefix reuse on or off (off: nothing is indexed or attached; for comparison).
    pub fn set_prefix_reuse(&mut self, on: bool) {
        self.prefix_reuse = on;
        if !on {
            self.pool.clear_cached();
        }
    }

    pub fn prefix_reuse(&self) -> bool {
        self.prefix_reuse
    }

    pub fn layout(&self) -> &KvLayout {
        self.storage.layout()
    }

    pub fn block_size(&self) -> usize {
        self.layout().block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn storage(&self) -> &KvStorage {
        &self.storage
    }

    /// Positions the whole store can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.n_blocks() * self.block_size()
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size())
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            block_size: self.block_size(),
            n_blocks: self.pool.n_blocks(),
            used_blocks: self.pool.used(),
            cached_blocks: self.pool.cached(),
            evictions: self.pool.evictions(),
            bytes: self.pool.n_blocks() * self.layout().block_bytes(),
        }
    }

    /// How many leading blocks of `hashes` are in the index now.
    pub fn cached_prefix_blocks(&self, hashes: &[PrefixHash]) -> usize {
        if !self.prefix_reuse {
            return 0;
        }
        hashes
            .iter()
            .take_while(|h| self.pool.lookup(**h).is_some())
            .count()
    }

    /// Attaches to an empty `seq` the longest cached prefix of `prompt`, leaving at least
    /// one prompt token to compute (its logits start generation). Returns the positions
    /// reused.
    pub fn attach_prefix(&mut self, seq: &mut SeqKv, prompt: &[u32]) -> usize {
        if !self.prefix_reuse || !seq.is_empty() || prompt.is_empty() {
            return 0;
        }
        let bs = self.block_size();
        let max_blocks = (prompt.len() - 1) / bs;
        let mut previous = None;
        for block_tokens in prompt.chunks_exact(bs).take(max_blocks) {
            let hash = chain_hash(previous, block_tokens);
            let Some(block) = self.pool.lookup(hash) else {
                break;
            };
            self.pool.retain(block);
            seq.blocks.push(block);
            seq.tokens.extend_from_slice(block_tokens);
            seq.hashes.push(hash);
            previous = Some(hash);
        }
        seq.len()
    }

    /// Gives `seq` enough blocks for `len` positions, evicting cached prefixes if needed.
    pub fn ensure_capacity(&mut self, seq: &mut SeqKv, len: usize) -> Result<()> {
        let needed = self.blocks_for(len);
        while seq.blocks.len() < needed {
            let Some(block) = self.pool.allocate() else {
                return Err(Error::Request(format!(
                    "the key/value cache is full: a sequence needs {needed} blocks of {} \
                     positions, {} are in use out of {} (raise --kv-budget)",
                    self.block_size(),
                    self.pool.used(),
                    self.pool.n_blocks()
                )));
            };
            seq.blocks.push(block);
        }
        Ok(())
    }

    /// Records that the keys and values of `tokens` were written after `seq`'s stored
    /// positions, and indexes every block this completes.
    pub fn commit(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        seq.tokens.extend_from_slice(tokens);
        if !self.prefix_reuse {
            return;
        }
        let bs = self.block_size();
        while seq.hashes.len() < seq.tokens.len() / bs {
            let i = seq.hashes.len();
            let hash = chain_hash(
                seq.hashes.last().copied(),
                &seq.tokens[i * bs..(i + 1) * bs],
            );
            seq.hashes.push(hash);
            self.pool.register(seq.blocks[i], hash);
        }
    }

    /// Returns `seq`'s blocks to the pool (indexed ones stay cached) and empties it.
    pub fn release(&mut self, seq: &mut SeqKv) {
        for &block in &seq.blocks {
            self.pool.release(block);
        }
        *seq = SeqKv::new();
    }

    /// Writes one layer's keys and values for `new` tokens of `seq` (laid out
    /// `(new, kv_heads, head_dim)`) after its stored positions.
    pub fn write(&mut self, layer: usize, seq: &SeqKv, keys: &[f32], values: &[f32]) {
        self.storage
            .write(layer, &seq.blocks, seq.len(), keys, values);
    }
}

/// A single sequence with a store of its own: the simple way to run one sequence through
/// [`crate::engine::model::Model::forward_single`] (tests, benchmarks).
#[derive(Debug)]
pub struct KvCache {
    pub store: KvStore,
    pub seq: SeqKv,
}

impl KvCache {
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

#[cfg(test)]
mod tests;
