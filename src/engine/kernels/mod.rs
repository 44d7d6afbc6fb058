//! The engine's own CPU matrix multiplication for quantized weights: `y = x W^T` for many
//! activation rows at once, on rayon, with the weights read as stored (no repacked copy).
//!
//! Why not candle's: candle has no x86 SIMD kernel for Q4_1, Q5_0 and Q5_1 (the main types
//! of small models, whose row sizes rule out K-quants), and its thread pool spins at a
//! barrier, competing with rayon for the same cores. Here every type runs on the same
//! driver ([`matmul::run`]): activations are quantized once per row, the work is split by
//! columns of output, and each worker keeps one weight row hot while it sweeps a tile of
//! activation rows, so a batch of sequences reads the weights from memory once.
//!
//! Dot products: our AVX2 kernels ([`avx2`]) for Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K,
//! each taking several activation rows per pass over a weight row, with portable
//! fallbacks ([`blocks::portable`]) that define them; candle's runtime-dispatched
//! single-row kernels for the rarer Q4_0, Q2_K, Q3_K and Q5_K.

mod avx2;
pub mod blocks;
pub mod matmul;
pub mod packed;
mod vnni;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

/// Whether this CPU runs the AVX2 kernels (AVX2, FMA and F16C, detected once).
pub fn simd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU runs the interleaved VNNI kernels ([`packed`]): the AVX2 set plus
/// AVX-VNNI, or AVX-512 VNNI with 256-bit (VL) encodings.
pub fn vnni_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            simd_available()
                && (std::is_x86_feature_detected!("avxvnni")
                    || (std::is_x86_feature_detected!("avx512vnni")
                        && std::is_x86_feature_detected!("avx512vl")))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

pub use matmul::QuantMatrix;
