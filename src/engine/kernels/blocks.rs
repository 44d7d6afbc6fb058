//! The 32-element quantized block formats of GGUF that the engine multiplies with its own
//! kernels (Q4_1, Q5_0, Q5_1) and the 8-bit activation blocks they pair with (Q8_0, Q8_1).
//!
//! Layouts are GGML's, byte for byte (`#[repr(C)]`, sizes asserted), so that a tensor's
//! stored bytes can be read as a slice of these blocks without copying.

use half::f16;

/// Defines a public function whose body is compiled twice: for AVX2/FMA/F16C, chosen at run
/// time where the CPU has them (so that its loops vectorise 8 wide), and for the baseline.
macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::engine::kernels::simd_available() {
                    // SAFETY: the features were detected at run time.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Elements per block for every format in this module.
pub const BLOCK: usize = 32;

/// Q4_0: `x = d * (q - 8)`, `q` in 0..16, nibbles as in Q4_1.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; BLOCK / 2],
}

/// Q4_1: `x = d * q + m`, `q` in 0..16; `qs[j]` holds element `j` (low nibble) and
/// element `j + 16` (high nibble).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; BLOCK / 2],
}

/// Q5_0: `x = d * (q - 16)`, `q` in 0..32; the low four bits as in Q4_1, the fifth bit of
/// element `j` is bit `j` of the little-endian `qh`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; BLOCK / 2],
}

/// Q5_1: `x = d * q + m`, `q` in 0..32, bits laid out as in Q5_0.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; BLOCK / 2],
}

/// Q8_0 weights and activations: `y = d * q`, `q` in -127..=127.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; BLOCK],
}

/// Q8_1 activations: Q8_0 plus `s = d * sum(q)`, which carries the offset term of Q4_1/Q5_1.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; BLOCK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl BlockQ8_0 {
    /// An all-zero block (scratch buffers are filled with these before quantizing).
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        qs: [0; BLOCK],
    };
}

impl BlockQ8_1 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        s: f16::ZERO,
        qs: [0; BLOCK],
    };
}

/// Symmetric 8-bit quantisation of a run of values (a block or super-block): writes the
/// rounded values and returns the scale.
///
/// Rounds half to even (one vector instruction) where GGML rounds half away from zero; the
/// two differ only on exact ties.
#[inline(always)]
pub(crate) fn quantize_symmetric(xs: &[f32], qs: &mut [i8]) -> f32 {
    let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &x) in qs.iter_mut().zip(xs) {
        *q = (x * inv).round_ties_even() as i8;
    }
    d
}

/// [`quantize_symmetric`] of one 32-value block.
#[inline(always)]
pub(crate) fn quantize_block(xs: &[f32], qs: &mut [i8; BLOCK]) -> f32 {
    quantize_symmetric(xs, qs)
}

multiversion! {
    /// Quantizes `xs` (a multiple of 32 long) into Q8_0 blocks.
    pub fn quantize_q8_0(xs: &[f32], out: &mut [BlockQ8_0]) {
        debug_assert_eq!(xs.len(), out.len() * BLOCK);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(BLOCK)) {
            block.d = f16::from_f32(quantize_block(xs, &mut block.qs));
        }
    }
}

multiversion! {
    /// Quantizes `xs` (a multiple of 32 long) into Q8_1 blocks.
    pub fn quantize_q8_1(xs: &[f32], out: &mut [BlockQ8_1]) {
        debug_assert_eq!(xs.len(), out.len() * BLOCK);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(BLOCK)) {
            let d = quantize_block(xs, &mut block.qs);
            let sum: i32 = block.qs.iter().map(|&q| q as i32).sum();
            block.d = f16::from_f32(d);
            block.s = f16::from_f32(d * sum as f32);
        }
    }
}

/// The unsigned 4-bit values of a block's `qs`, in element order.
pub(crate) fn nibbles(qs: &[u8; BLOCK / 2]) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    for (j, &byte) in qs.iter().enumerate() {
        out[j] = byte & 0x0F;
        out[j + BLOCK / 2] = byte >> 4;
    }
    out
}

/// The 5-bit values of a Q5 block, in element order.
pub(crate) fn five_bit(qh: [u8; 4], qs: &[u8; BLOCK / 2]) -> [u8; BLOCK] {
    let high = u32::from_le_bytes(qh);
    let mut out = nibbles(qs);
    for (j, q) in out.iter_mut().enumerate() {
        *q |= (((high >> j) & 1) as u8) << 4;
    }
    out
}

/// Dequantisation, for references in tests and for slow paths.
pub trait Dequantize {
    /// The block's 32 values.
    fn dequantize(&self) -> [f32; BLOCK];
}

impl Dequantize for BlockQ4_1 {
    fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        nibbles(&self.qs).map(|q| d * q as f32 + m)
    }
}

impl Dequantize for BlockQ5_0 {
    fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        five_bit(self.qh, &self.qs).map(|q| d * (q as f32 - 16.0))
    }
}

impl Dequantize for BlockQ5_1 {
    fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        five_bit(self.qh, &self.qs).map(|q| d * q as f32 + m)
    }
}

/// Portable dot products: the definition the SIMD kernels must match.
pub mod portable {
    use super::*;

    /// `sum(x * y)` over Q4_1 weights and Q8_1 activations.
    pub fn dot_q4_1(xs: &[BlockQ4_1], ys: &[BlockQ8_1]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let q = nibbles(&x.qs);
                let isum: i32 = q
                    .iter()
                    .zip(&y.qs)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum();
                x.d.to_f32() * y.d.to_f32() * isum as f32 + x.m.to_f32() * y.s.to_f32()
            })
            .sum()
    }

    /// `sum(x * y)` over Q8_0 weights and Q8_0 activations.
    pub fn dot_q8_0(xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let isum: i32 =
                    x.qs.iter()
                        .zip(&y.qs)
                        .map(|(&a, &b)| a as i32 * b as i32)
                        .sum();
                x.d.to_f32() * y.d.to_f32() * isum as f32
            })
            .sum()
    }

    /// `sum(x * y)` over Q5_0 weights and Q8_0 activations.
    pub fn dot_q5_0(xs: &[BlockQ5_0], ys: &[BlockQ8_0]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let q = five_bit(x.qh, &x.qs);
                let isum: i32 = q
                    .iter()
                    .zip(&y.qs)
                    .map(|(&a, &b)| (a as i32 - 16) * b as i32)
                    .sum();
                x.d.to_f32() * y.d.to_f32() * isum as f32
            })
            .sum()
    }

    /// `sum(x * y)` over Q4_K weights and Q8_K activations.
    pub fn dot_q4k(xs: &[BlockQ4K], ys: &[BlockQ8K]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let (scales, mins) = q4k_scales_mins(&x.scales);
                let (mut sum_q, mut sum_m) = (0i32, 0i32);
                for sub in 0..8 {
                    let (pair, high) = (sub / 2, sub % 2 == 1);
                    let mut isum = 0i32;
                    for l in 0..32 {
                        let byte = x.qs[pair * 32 + l];
                        let q = if high { byte >> 4 } else { byte & 0x0F };
                        isum += q as i32 * y.qs[sub * 32 + l] as i32;
                    }
                    sum_q += scales[sub] as i32 * isum;
                    let bsum = y.bsums[2 * sub] as i32 + y.bsums[2 * sub + 1] as i32;
                    sum_m += mins[sub] as i32 * bsum;
                }
                y.d * (x.d.to_f32() * sum_q as f32 - x.dmin.to_f32() * sum_m as f32)
            })
            .sum()
    }

    /// `sum(x * y)` over Q6_K weights and Q8_K activations.
    pub fn dot_q6k(xs: &[BlockQ6K], ys: &[BlockQ8K]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let mut sum = 0i32;
                for g in 0..16 {
                    let isum: i32 = (16 * g..16 * g + 16)
                        .map(|i| (q6k_value(x, i) as i32 - 32) * y.qs[i] as i32)
                        .sum();
                    sum += x.scales[g] as i32 * isum;
                }
                x.d.to_f32() * y.d * sum as f32
            })
            .sum()
    }

    /// `sum(x * y)` over Q5_1 weights and Q8_1 activations.
    pub fn dot_q5_1(xs: &[BlockQ5_1], ys: &[BlockQ8_1]) -> f32 {
        xs.iter()
            .zip(ys)
            .map(|(x, y)| {
                let q = five_bit(x.qh, &x.qs);
                let isum: i32 = q
                    .iter()
                    .zip(&y.qs)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum();
                x.d.to_f32() * y.d.to_f32() * isum as f32 + x.m.to_f32() * y.s.to_f32()
            })
            .sum()
    }
}

/// Elements per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;

/// Q4_K: eight sub-blocks of 32, `x = d * scale[s] * q - dmin * min[s]`, `q` in 0..16;
/// `qs[32j..32j + 32]` holds sub-block `2j` in its low nibbles and `2j + 1` in its high
/// ones; the 6-bit scales and mins are packed in `scales` (see [`q4k_scales_mins`]).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; SUPER_BLOCK / 2],
}

/// Q8_K activations: `y = d * q`, with the sums of each 16 values (for the min terms).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; SUPER_BLOCK],
    pub bsums: [i16; SUPER_BLOCK / 16],
}

/// Q6_K: sixteen groups of 16, `x = d * scale[g] * (q - 32)`, `q` in 0..64. Per half of
/// 128 values (`ql` from 64h, `qh` from 32h), value `l` of each quarter takes the low or
/// high nibble of `ql[l]` or `ql[l + 32]` and two bits of `qh[l]` (see [`q6k_value`]).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; SUPER_BLOCK / 2],
    pub qh: [u8; SUPER_BLOCK / 4],
    pub scales: [i8; SUPER_BLOCK / 16],
    pub d: f16,
}

/// The 6-bit value (0..64) of element `i` of a Q6_K block.
pub fn q6k_value(x: &BlockQ6K, i: usize) -> u8 {
    let (half, within) = (i / 128, i % 128);
    let (quarter, l) = (within / 32, within % 32);
    let low = x.ql[64 * half + l + 32 * (quarter % 2)];
    let low = if quarter < 2 { low & 0x0F } else { low >> 4 };
    let high = (x.qh[32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: 0.0,
        qs: [0; SUPER_BLOCK],
        bsums: [0; SUPER_BLOCK / 16],
    };
}

multiversion! {
    /// Quantizes `xs` (a multiple of 256 long) into Q8_K blocks.
    pub fn quantize_q8k(xs: &[f32], out: &mut [BlockQ8K]) {
        debug_assert_eq!(xs.len(), out.len() * SUPER_BLOCK);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(SUPER_BLOCK)) {
            block.d = quantize_symmetric(xs, &mut block.qs);
            for (sum, qs) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
                *sum = qs.iter().map(|&q| q as i16).sum();
            }
        }
    }
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K block, unpacked.
#[inline]
pub fn q4k_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = packed[j] & 63;
        mins[j] = packed[j + 4] & 63;
        scales[j + 4] = (packed[j + 8] & 0x0F) | ((packed[j] >> 6) << 4);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
    (scales, mins)
}
