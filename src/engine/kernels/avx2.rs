//! AVX2 + FMA dot products for the 32-element block formats candle runs as scalar code.
//!
//! Each block's 32 weights are unpacked into one 256-bit register of bytes, multiplied with
//! the 32 activation bytes by `maddubs` (unsigned x signed byte pairs summed to i16), widened
//! to eight i32 sums and accumulated in f32 with the product of the two block scales. The
//! integer sums are exact, so the results equal [`super::blocks::portable`] up to the order
//! of the float additions.
//!
//! Callers must check `avx2`, `fma` and `f16c` at run time ([`super::simd_available`]).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};

/// The 32 nibbles of 16 bytes as bytes: low nibbles in the low lane, high in the high lane,
/// which is element order for GGML's 4-bit layout.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_32(qs: &[u8; 16]) -> __m256i {
    let packed = _mm_loadu_si128(qs.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// A byte mask with 0xFF at element `j` where bit `j` of `qh` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_mask_32(qh: [u8; 4]) -> __m256i {
    let bits = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte j takes qh byte j / 8; OR-ing all bits but bit j % 8 leaves 0xFF exactly when
    // that bit was set.
    let spread = _mm256_shuffle_epi8(
        bits,
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0x0000_0000_0000_0000,
        ),
    );
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

/// Eight i32 partial sums of `unsigned x * signed y` over 32 byte pairs, as floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The same for signed x: `|x| * (y with x's sign)`, which `maddubs` can take.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(x: __m256) -> f32 {
    let sum = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    let sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    _mm_cvtss_f32(sum)
}

/// One half-precision scale as f32, by the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_i8(qs: &[i8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr().cast())
}

/// `sum(x * y)` over Q4_1 weights and Q8_1 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(xs: &[BlockQ4_1], ys: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        let scale = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
        offsets += h2f(x.m) * h2f(y.s);
        acc = _mm256_fmadd_ps(scale, dot_u8_i8(nibbles_32(&x.qs), load_i8(&y.qs)), acc);
    }
    hsum(acc) + offsets
}

/// `sum(x * y)` over Q5_0 weights and Q8_0 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0(xs: &[BlockQ5_0], ys: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let scale = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
        // q - 16 as a signed byte: the nibble where the fifth bit is set, else the nibble
        // with its high four bits set (nibble - 16 in two's complement).
        let high = _mm256_andnot_si256(bit_mask_32(x.qh), _mm256_set1_epi8(0xF0_u8 as i8));
        let values = _mm256_or_si256(nibbles_32(&x.qs), high);
        acc = _mm256_fmadd_ps(scale, dot_i8_i8(values, load_i8(&y.qs)), acc);
    }
    hsum(acc)
}

/// `sum(x * y)` over Q5_1 weights and Q8_1 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1(xs: &[BlockQ5_1], ys: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        let scale = _mm256_set1_ps(h2f(x.d) * h2f(y.d));
        offsets += h2f(x.m) * h2f(y.s);
        let high = _mm256_and_si256(bit_mask_32(x.qh), _mm256_set1_epi8(0x10));
        let values = _mm256_or_si256(nibbles_32(&x.qs), high);
        acc = _mm256_fmadd_ps(scale, dot_u8_i8(values, load_i8(&y.qs)), acc);
    }
    hsum(acc) + offsets
}
