//! Property tests of the block pool and the prefix index, on a store whose "keys" are the
//! token ids themselves, so that reading a sequence back shows whether any block was
//! shared, evicted or overwritten wrongly.

use proptest::prelude::*;

use super::*;

fn layout(block_size: usize) -> KvLayout {
    KvLayout {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 1,
        block_size,
        dtype: KvDtype::default(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Start(Vec<u32>),
    Extend(usize, Vec<u32>),
    Release(usize),
}

/// Tokens from a tiny alphabet, so that prompts share prefixes often.
fn tokens(max: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..3, 1..max)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => tokens(20).prop_map(Op::Start),
        2 => (any::<usize>(), tokens(8)).prop_map(|(i, t)| Op::Extend(i, t)),
        1 => any::<usize>().prop_map(Op::Release),
    ];
    prop::collection::vec(op, 1..60)
}

/// Appends `tokens` to `seq` (keys = values = token ids); false if the store is full.
fn append(store: &mut KvStore, seq: &mut SeqKv, tokens: &[u32]) -> bool {
    if store
        .ensure_capacity(seq, seq.len() + tokens.len())
        .is_err()
    {
        return false;
    }
    let values: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
    store.write(0, seq, &values, &values);
    store.commit(seq, tokens);
    true
}

/// What the store holds for `seq`, read back through its block table.
fn read_back(store: &KvStore, seq: &SeqKv) -> Vec<u32> {
    let (keys, values) = store.storage().gather(0, seq.blocks(), seq.len());
    assert_eq!(keys, values);
    keys.iter().map(|&k| k as u32).collect()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Runs `ops`; checks after each one that the pool is consistent, reference counts equal
/// the number of block tables holding each block, and every live sequence reads back its
/// own tokens. With `expect_longest`, the store must never evict, and every prompt must
/// reuse exactly the longest block-aligned prefix that any sequence ever stored.
fn run(ops: &[Op], n_blocks: usize, block_size: usize, expect_longest: bool) {
    let mut store = KvStore::with_blocks(layout(block_size), n_blocks);
    let mut live: Vec<SeqKv> = Vec::new();
    let mut history: Vec<Vec<u32>> = Vec::new();
    for op in ops {
        match op {
            Op::Start(prompt) => {
                let mut seq = SeqKv::new();
                let reused = store.attach_prefix(&mut seq, prompt);
                assert_eq!(reused % block_size, 0);
                assert!(reused < prompt.len());
                assert_eq!(seq.tokens(), &prompt[..reused]);
                if expect_longest {
                    let limit = (prompt.len() - 1) / block_size * block_size;
                    let best = history
                        .iter()
                        .map(|h| common_prefix(h, prompt) / block_size * block_size)
                        .max()
                        .unwrap_or(0)
                        .min(limit);
                    assert_eq!(reused, best, "prompt {prompt:?}, history {history:?}");
                }
                if append(&mut store, &mut seq, &prompt[reused..]) {
                    live.push(seq);
                } else {
                    store.release(&mut seq);
                }
            }
            Op::Extend(i, tokens) if !live.is_empty() => {
                let n = live.len();
                append(&mut store, &mut live[i % n], tokens);
            }
            Op::Release(i) if !live.is_empty() => {
                let n = live.len();
                let mut seq = live.swap_remove(i % n);
                history.push(seq.tokens().to_vec());
                store.release(&mut seq);
            }
            _ => {}
        }
        for seq in &live {
            history.push(seq.tokens().to_vec());
        }
        store.pool().check_invariants().expect("pool invariants");
        for block in 0..n_blocks as BlockId {
            let holders = live.iter().filter(|s| s.blocks().contains(&block)).count();
            assert_eq!(store.pool().refs(block) as usize, holders, "block {block}");
        }
        for seq in &live {
            assert_eq!(read_back(&store, seq), seq.tokens());
        }
    }
    if expect_longest {
        assert_eq!(store.pool().evictions(), 0);
    }
    for seq in &mut live {
        store.release(seq);
    }
    assert_eq!(store.pool().used(), 0);
    store.pool().check_invariants().expect("pool invariants");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A pool so small that sequences are refused and cached prefixes evicted all the time.
    #[test]
    fn tight_pool_never_corrupts(ops in ops(), n_blocks in 1usize..12, block_size in 1usize..5) {
        run(&ops, n_blocks, block_size, false);
    }

    /// A pool that never fills: reuse must find the longest stored prefix.
    #[test]
    fn lookups_find_the_longest_prefix(ops in ops(), block_size in 1usize..5) {
        run(&ops, 2000, block_size, true);
    }
}

#[test]
fn a_released_prefix_is_reused_then_evicted_least_recently_used_first() {
    let mut store = KvStore::with_blocks(layout(2), 4);
    let mut a = SeqKv::new();
    assert!(append(&mut store, &mut a, &[1, 2, 3, 4]));
    store.release(&mut a);
    assert_eq!(store.pool().cached(), 2);
    let mut b = SeqKv::new();
    assert_eq!(store.attach_prefix(&mut b, &[1, 2, 3, 4, 5]), 4);
    assert!(append(&mut store, &mut b, &[5]));
    store.release(&mut b);
    // Needing all four blocks evicts the cached ones; nothing is reusable afterwards.
    let mut c = SeqKv::new();
    assert!(append(&mut store, &mut c, &[9; 8]));
    assert_eq!(store.pool().evictions(), 2);
    store.release(&mut c);
    let mut d = SeqKv::new();
    assert_eq!(store.attach_prefix(&mut d, &[1, 2, 3, 4, 5]), 0);
}

#[test]
fn reuse_off_indexes_nothing() {
    let mut store = KvStore::with_blocks(layout(2), 8);
    store.set_prefix_reuse(false);
    let mut a = SeqKv::new();
    assert!(append(&mut store, &mut a, &[1, 2, 3, 4]));
    store.release(&mut a);
    assert_eq!(store.pool().cached(), 0);
    assert_eq!(store.attach_prefix(&mut SeqKv::new(), &[1, 2, 3, 4, 5]), 0);
}
