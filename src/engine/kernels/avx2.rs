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

use super::blocks::{
    q4k_scales_mins, BlockQ4K, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1,
};

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
/// (Signed weights enter as `|x|` times `y` with `x`'s sign, which `maddubs` can take.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
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

/// Adds block `b` of every Q8_1 row to the row's sums, for a weight block of unsigned
/// `values` with scale `d` and offset `m` (Q4_1, Q5_1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_offset<const R: usize>(
    acc: &mut [__m256; R],
    offsets: &mut [f32; R],
    values: __m256i,
    d: f32,
    m: f32,
    ys: &[&[BlockQ8_1]; R],
    b: usize,
) {
    for r in 0..R {
        let y = ys[r].get_unchecked(b);
        offsets[r] += m * h2f(y.s);
        let scale = _mm256_set1_ps(d * h2f(y.d));
        acc[r] = _mm256_fmadd_ps(scale, dot_u8_i8(values, load_i8(&y.qs)), acc[r]);
    }
}

/// Adds block `b` of every Q8_0 row to the row's sums, for a weight block of signed
/// `values` with scale `d` (Q5_0, Q8_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_signed<const R: usize>(
    acc: &mut [__m256; R],
    values: __m256i,
    d: f32,
    ys: &[&[BlockQ8_0]; R],
    b: usize,
) {
    let magnitudes = _mm256_sign_epi8(values, values);
    for r in 0..R {
        let y = ys[r].get_unchecked(b);
        let scale = _mm256_set1_ps(d * h2f(y.d));
        let signed_y = _mm256_sign_epi8(load_i8(&y.qs), values);
        acc[r] = _mm256_fmadd_ps(scale, dot_u8_i8(magnitudes, signed_y), acc[r]);
    }
}

/// Dot products of one weight row with `R` activation rows: each weight block is unpacked
/// once and used for every row, which is what makes many rows cheaper than one at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1<const R: usize>(xs: &[BlockQ4_1], ys: [&[BlockQ8_1]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [0f32; R];
    for (b, x) in xs.iter().enumerate() {
        let values = nibbles_32(&x.qs);
        let (d, m) = (h2f(x.d), h2f(x.m));
        accumulate_offset(&mut acc, &mut offsets, values, d, m, &ys, b);
    }
    std::array::from_fn(|r| hsum(acc[r]) + offsets[r])
}

/// Q5_0 weights with `R` rows of Q8_0 activations (see [`dot_q4_1`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0<const R: usize>(xs: &[BlockQ5_0], ys: [&[BlockQ8_0]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, x) in xs.iter().enumerate() {
        // q - 16 as a signed byte: the nibble where the fifth bit is set, else the nibble
        // with its high four bits set (nibble - 16 in two's complement).
        let high = _mm256_andnot_si256(bit_mask_32(x.qh), _mm256_set1_epi8(0xF0_u8 as i8));
        let values = _mm256_or_si256(nibbles_32(&x.qs), high);
        accumulate_signed(&mut acc, values, h2f(x.d), &ys, b);
    }
    std::array::from_fn(|r| hsum(acc[r]))
}

/// Q8_0 weights with `R` rows of Q8_0 activations (see [`dot_q4_1`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0<const R: usize>(xs: &[BlockQ8_0], ys: [&[BlockQ8_0]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, x) in xs.iter().enumerate() {
        let values = load_i8(&x.qs);
        accumulate_signed(&mut acc, values, h2f(x.d), &ys, b);
    }
    std::array::from_fn(|r| hsum(acc[r]))
}

/// Q5_1 weights with `R` rows of Q8_1 activations (see [`dot_q4_1`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1<const R: usize>(xs: &[BlockQ5_1], ys: [&[BlockQ8_1]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [0f32; R];
    for (b, x) in xs.iter().enumerate() {
        let high = _mm256_and_si256(bit_mask_32(x.qh), _mm256_set1_epi8(0x10));
        let values = _mm256_or_si256(nibbles_32(&x.qs), high);
        let (d, m) = (h2f(x.d), h2f(x.m));
        accumulate_offset(&mut acc, &mut offsets, values, d, m, &ys, b);
    }
    std::array::from_fn(|r| hsum(acc[r]) + offsets[r])
}

/// Q4_K weights with `R` rows of Q8_K activations (see [`dot_q4_1`]): per sub-block the
/// 4-bit values times the activations, weighted by the sub-block's scale in integers; the
/// mins enter through the activations' 16-value sums.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4k<const R: usize>(xs: &[BlockQ4K], ys: [&[BlockQ8K]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut min_acc = [_mm256_setzero_ps(); R];
    let low_mask = _mm256_set1_epi8(0x0F);
    for (b, x) in xs.iter().enumerate() {
        let (scales, mins) = q4k_scales_mins(&x.scales);
        let (d, dmin) = (h2f(x.d), h2f(x.dmin));
        // Each min twice, as i16, against the activations' sums of 16: one `madd` gives
        // min[s] * (sum of sub-block s) in lane s.
        let mins_twice = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
            _mm_loadl_epi64(mins.as_ptr().cast()),
            _mm_set_epi8(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),
        ));
        let mut sums = [_mm256_setzero_si256(); R];
        for pair in 0..4 {
            let packed = _mm256_loadu_si256(x.qs.as_ptr().add(pair * 32).cast());
            let low = _mm256_and_si256(packed, low_mask);
            let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask);
            let scale_low = _mm256_set1_epi16(scales[2 * pair] as i16);
            let scale_high = _mm256_set1_epi16(scales[2 * pair + 1] as i16);
            for r in 0..R {
                let y = ys[r].get_unchecked(b);
                let y_low = _mm256_loadu_si256(y.qs.as_ptr().add(pair * 64).cast());
                let y_high = _mm256_loadu_si256(y.qs.as_ptr().add(pair * 64 + 32).cast());
                let p_low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, y_low), scale_low);
                let p_high = _mm256_madd_epi16(_mm256_maddubs_epi16(high, y_high), scale_high);
                sums[r] = _mm256_add_epi32(sums[r], _mm256_add_epi32(p_low, p_high));
            }
        }
        for r in 0..R {
            let y = ys[r].get_unchecked(b);
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let min_sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins_twice));
            min_acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * y.d), min_sums, min_acc[r]);
            let scale = _mm256_set1_ps(d * y.d);
            acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[r]), acc[r]);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]) - hsum(min_acc[r]))
}

/// Q6_K weights with `R` rows of Q8_K activations (see [`dot_q4_1`]): the 6-bit values are
/// multiplied unsigned and the offset of 32 is taken out through the activations' sums.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6k<const R: usize>(xs: &[BlockQ6K], ys: [&[BlockQ8K]; R]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let low_mask = _mm256_set1_epi8(0x0F);
    let two_bits = _mm256_set1_epi8(0x03);
    for (b, x) in xs.iter().enumerate() {
        let d = h2f(x.d);
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr().cast()));
        let mut sums = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            let ql0 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half).cast());
            let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half + 32).cast());
            let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half).cast());
            let high = |shift: i32| {
                let bits = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(bits, two_bits), 4)
            };
            let quarters = [
                _mm256_or_si256(_mm256_and_si256(ql0, low_mask), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, low_mask), high(2)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low_mask),
                    high(4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low_mask),
                    high(6),
                ),
            ];
            for (quarter, values) in quarters.into_iter().enumerate() {
                // Groups 2g and 2g + 1 of this quarter: one scale per 128-bit lane.
                let g = 8 * half + 2 * quarter;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[g + 1] as i16),
                    _mm_set1_epi16(x.scales[g] as i16),
                );
                for r in 0..R {
                    let y = ys[r].get_unchecked(b);
                    let y_q =
                        _mm256_loadu_si256(y.qs.as_ptr().add(128 * half + 32 * quarter).cast());
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(values, y_q), scale);
                    sums[r] = _mm256_add_epi32(sums[r], p);
                }
            }
        }
        for r in 0..R {
            let y = ys[r].get_unchecked(b);
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let total = _mm256_sub_epi32(sums[r], offset);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(total), acc[r]);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]))
}
