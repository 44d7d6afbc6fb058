//! A tiny seeded random number generator (SplitMix64) and a stable hash.
//!
//! Written out here rather than taken from `rand` so that the same seed gives the same
//! division, split and sample on every machine and every version of the dependencies: a
//! resumed run relies on it. [`stable_hash`] keys recorded calls (SHA-256 of the bytes).

use sha2::{Digest, Sha256};

/// SplitMix64: fast, statistically fine for shuffles and samples, fully deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator derived from a seed and a label (independent streams per purpose).
    pub fn derived(seed: u64, label: &str) -> Self {
        let h = stable_hash(format!("{seed}/{label}").as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hex_bytes(&h)[..8]);
        Self::new(u64::from_le_bytes(bytes))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Hex SHA-256 of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_shuffle() {
        let mut a: Vec<u32> = (0..20).collect();
        let mut b = a.clone();
        Rng::new(7).shuffle(&mut a);
        Rng::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..20).collect::<Vec<_>>());
        assert_ne!(
            Rng::derived(1, "x").next_u64(),
            Rng::derived(1, "y").next_u64()
        );
    }
}
