//! Bookkeeping of the paged key/value cache: which blocks are free, which are used by how
//! many sequences, and which hold a known prefix that a later request may reuse.
//!
//! The pool knows nothing about the keys and values themselves, only block ids, so its
//! invariants can be tested exhaustively on their own. A block is in exactly one state:
//! - **free**: holds nothing of value;
//! - **used**: referenced by one or more sequences (`refs > 0`), possibly also indexed;
//! - **cached**: referenced by no sequence but indexed by its prefix hash, kept for reuse
//!   and evicted least-recently-used when a new block is needed.

use std::collections::{BTreeSet, HashMap};

/// Index of a block in the pool.
pub type BlockId = u32;

/// Identity of a block's content: a hash of every token from the start of the sequence to
/// the end of the block, so that equal hashes mean equal prefixes (up to hash collisions,
/// negligible at 128 bits).
pub type PrefixHash = u128;

#[derive(Debug, Clone, Default)]
struct BlockState {
    refs: u32,
    hash: Option<PrefixHash>,
    /// When the block was last attached or released (for LRU eviction).
    last_used: u64,
}

/// Block allocation with reference counts, a prefix index and LRU eviction.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<BlockState>,
    free: Vec<BlockId>,
    /// Cached blocks (indexed, unreferenced), oldest first.
    evictable: BTreeSet<(u64, BlockId)>,
    index: HashMap<PrefixHash, BlockId>,
    clock: u64,
    evictions: u64,
}

impl BlockPool {
    /// A pool of `n_blocks` free blocks.
    pub fn new(n_blocks: usize) -> Self {
        Self {
            blocks: vec![BlockState::default(); n_blocks],
            // Reversed so that low ids are handed out first (touches memory in order).
            free: (0..n_blocks as BlockId).rev().collect(),
            evictable: BTreeSet::new(),
            index: HashMap::new(),
            clock: 0,
            evictions: 0,
        }
    }

    /// Total number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that an allocation can obtain now: free plus evictable.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks holding a reusable prefix and referenced by no sequence.
    pub fn cached(&self) -> usize {
        self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.blocks.len() - self.available()
    }

    /// How many cached blocks were evicted to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Number of sequences referencing `block`.
    pub fn refs(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].refs
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Takes a block for exclusive use (one reference): a free one, or else the least
    /// recently used cached one, which leaves the index. `None` when every block is used.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                if let Some(hash) = self.blocks[id as usize].hash.take() {
                    self.index.remove(&hash);
                }
                self.evictions += 1;
                id
            }
        };
        let now = self.tick();
        let state = &mut self.blocks[id as usize];
        debug_assert_eq!(state.refs, 0);
        state.refs = 1;
        state.last_used = now;
        Some(id)
    }

    /// The block holding the prefix `hash`, if cached or in use.
    pub fn lookup(&self, hash: PrefixHash) -> Option<BlockId> {
        self.index.get(&hash).copied()
    }

    /// Adds a reference to an indexed or used block (prefix reuse).
    pub fn retain(&mut self, block: BlockId) {
        let now = self.tick();
        let state = &mut self.blocks[block as usize];
        if state.refs == 0 {
            self.evictable.remove(&(state.last_used, block));
        }
        state.refs += 1;
        state.last_used = now;
    }

    /// Drops one reference; an unreferenced block becomes cached if indexed, else free.
    pub fn release(&mut self, block: BlockId) {
        let now = self.tick();
        let state = &mut self.blocks[block as usize];
        debug_assert!(
            state.refs > 0,
            "block {block} released more often than retained"
        );
        state.refs = state.refs.saturating_sub(1);
        if state.refs == 0 {
            state.last_used = now;
            if state.hash.is_some() {
                self.evictable.insert((now, block));
            } else {
                self.free.push(block);
            }
        }
    }

    /// Indexes a used block under the prefix it now holds completely. Returns false (and
    /// changes nothing) when another block already holds that prefix, or the block is
    /// already indexed.
    pub fn register(&mut self, block: BlockId, hash: PrefixHash) -> bool {
        if self.index.contains_key(&hash) || self.blocks[block as usize].hash.is_some() {
            return false;
        }
        self.blocks[block as usize].hash = Some(hash);
        self.index.insert(hash, block);
        true
    }

    /// Drops every cached block (unreferenced prefixes), returning them to the free list.
    pub fn clear_cached(&mut self) {
        while let Some((_, id)) = self.evictable.pop_first() {
            if let Some(hash) = self.blocks[id as usize].hash.take() {
                self.index.remove(&hash);
            }
            self.free.push(id);
        }
    }

    /// Checks the pool's internal invariants (for tests): every block in exactly one
    /// state, the index consistent with the blocks' hashes.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![0u8; self.blocks.len()];
        for &id in &self.free {
            let s = &self.blocks[id as usize];
            if s.refs != 0 || s.hash.is_some() {
                return Err(format!("free block {id} has refs or a hash"));
            }
            seen[id as usize] += 1;
        }
        for &(t, id) in &self.evictable {
            let s = &self.blocks[id as usize];
            if s.refs != 0 || s.hash.is_none() || s.last_used != t {
                return Err(format!("cached block {id} is referenced or unindexed"));
            }
            seen[id as usize] += 1;
        }
        for (id, s) in self.blocks.iter().enumerate() {
            if s.refs > 0 {
                seen[id] += 1;
            }
            if seen[id] != 1 {
                return Err(format!("block {id} is in {} states", seen[id]));
            }
            if let Some(h) = s.hash {
                if self.index.get(&h) != Some(&(id as BlockId)) {
                    return Err(format!("block {id} is not indexed under its hash"));
                }
            }
        }
        if self.index.len() != self.blocks.iter().filter(|s| s.hash.is_some()).count() {
            return Err("index holds hashes of no block".into());
        }
        Ok(())
    }
}
