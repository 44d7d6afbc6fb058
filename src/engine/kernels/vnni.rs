//! Dot products of interleaved weight groups ([`super::packed`]) with up to four activation
//! rows, on `vpdpbusd`: AVX-VNNI where the CPU has it, else AVX-512 VNNI on 256-bit
//! registers. One body serves both; only the instruction's encoding differs.
//!
//! Per block: for each of the four (or eight) 32-byte weight chunks, four activation bytes
//! are broadcast to every lane and `vpdpbusd` adds `u * q` over them into each row's i32
//! lane. The zero point is then subtracted in integers and the lanes scaled by the eight
//! rows' `d` times the activation's `d`, plus `m * s` for the offset types.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::BlockQ8K;
use super::packed::{ActQ8, Packed4, Packed4K, Packed6K, Packed8, GROUP};

/// The `u8 x i8` four-way dot-product-accumulate instruction, in one of its encodings.
trait Dpbusd {
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

struct AvxVnni;
struct Avx512Vnni;

impl Dpbusd for AvxVnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
}

impl Dpbusd for Avx512Vnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

/// Whether this CPU has AVX-VNNI (else the caller has checked AVX-512 VNNI + VL).
fn has_avx_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::is_x86_feature_detected!("avxvnni"))
}

/// Four activation bytes `qs[at..at + 4]` in every lane.
#[inline(always)]
unsafe fn broadcast4(a: &ActQ8, at: usize) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(
        a.qs.as_ptr().add(at).cast::<i32>(),
    ))
}

/// Four activation bytes `qs[at..at + 4]` of a super-block in every lane.
#[inline(always)]
unsafe fn broadcast4k(a: &BlockQ8K, at: usize) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(
        a.qs.as_ptr().add(at).cast::<i32>(),
    ))
}

/// Eight bytes as eight i32 lanes, zero- or sign-extended.
#[inline(always)]
unsafe fn widen_u8(bytes: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.cast()))
}

#[inline(always)]
unsafe fn widen_i8(bytes: *const i8) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes.cast()))
}

/// Scales one block's integer sums into the running float sums.
#[inline(always)]
unsafe fn accumulate<const R: usize>(
    acc: &mut [__m256; R],
    isum: [__m256i; R],
    d: __m256,
    m: Option<__m256>,
    zero_point: u8,
    a: &[&[ActQ8]; R],
    b: usize,
) {
    for r in 0..R {
        let y = a[r].get_unchecked(b);
        let mut i = isum[r];
        if zero_point != 0 {
            i = _mm256_sub_epi32(i, _mm256_set1_epi32(zero_point as i32 * y.sum));
        }
        let scale = _mm256_mul_ps(d, _mm256_set1_ps(y.d));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, acc[r]);
        if let Some(m) = m {
            acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(y.s), acc[r]);
        }
    }
}

#[inline(always)]
unsafe fn lanes<const R: usize>(acc: [__m256; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0f32; GROUP]; R];
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
    out
}

#[inline(always)]
unsafe fn scales(d: &[half::f16; GROUP]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()))
}

#[inline(always)]
unsafe fn dot4_body<D: Dpbusd, const R: usize>(
    w: &[Packed4],
    a: [&[ActQ8]; R],
    zero_point: u8,
    has_min: bool,
) -> [[f32; GROUP]; R] {
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, p) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let packed = _mm256_loadu_si256(p.qs.as_ptr().add(32 * c).cast());
            let lo = _mm256_and_si256(packed, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
            for r in 0..R {
                let y = a[r].get_unchecked(b);
                isum[r] = D::dpbusd(isum[r], lo, broadcast4(y, 4 * c));
                isum[r] = D::dpbusd(isum[r], hi, broadcast4(y, 16 + 4 * c));
            }
        }
        let m = has_min.then(|| scales(&p.m));
        accumulate(&mut acc, isum, scales(&p.d), m, zero_point, &a, b);
    }
    lanes(acc)
}

#[inline(always)]
unsafe fn dot8_body<D: Dpbusd, const R: usize>(
    w: &[Packed8],
    a: [&[ActQ8]; R],
    zero_point: u8,
    has_min: bool,
) -> [[f32; GROUP]; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, p) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); R];
        for c in 0..8 {
            let u = _mm256_loadu_si256(p.qs.as_ptr().add(32 * c).cast());
            for r in 0..R {
                isum[r] = D::dpbusd(isum[r], u, broadcast4(a[r].get_unchecked(b), 4 * c));
            }
        }
        let m = has_min.then(|| scales(&p.m));
        accumulate(&mut acc, isum, scales(&p.d), m, zero_point, &a, b);
    }
    lanes(acc)
}

#[inline(always)]
unsafe fn dot4k_body<D: Dpbusd, const R: usize>(
    w: &[Packed4K],
    a: [&[BlockQ8K]; R],
) -> [[f32; GROUP]; R] {
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, p) in w.iter().enumerate() {
        let mut sum_q = [_mm256_setzero_si256(); R];
        for sub in 0..8 {
            let mut isum = [_mm256_setzero_si256(); R];
            for c in 0..4 {
                let packed = _mm256_loadu_si256(p.qs.as_ptr().add(128 * sub + 32 * c).cast());
                let lo = _mm256_and_si256(packed, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
                for r in 0..R {
                    let y = a[r].get_unchecked(b);
                    isum[r] = D::dpbusd(isum[r], lo, broadcast4k(y, 32 * sub + 4 * c));
                    isum[r] = D::dpbusd(isum[r], hi, broadcast4k(y, 32 * sub + 16 + 4 * c));
                }
            }
            let scale = widen_u8(p.scales.as_ptr().add(8 * sub));
            for r in 0..R {
                sum_q[r] = _mm256_add_epi32(sum_q[r], _mm256_mullo_epi32(isum[r], scale));
            }
        }
        let (d, dmin) = (scales(&p.d), scales(&p.dmin));
        for r in 0..R {
            let y = a[r].get_unchecked(b);
            let mut sum_m = _mm256_setzero_si256();
            for sub in 0..8 {
                let bsum = y.bsums[2 * sub] as i32 + y.bsums[2 * sub + 1] as i32;
                let min = widen_u8(p.mins.as_ptr().add(8 * sub));
                sum_m = _mm256_add_epi32(sum_m, _mm256_mullo_epi32(min, _mm256_set1_epi32(bsum)));
            }
            let yd = _mm256_set1_ps(y.d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_q[r]), _mm256_mul_ps(d, yd), acc[r]);
            acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(sum_m), _mm256_mul_ps(dmin, yd), acc[r]);
        }
    }
    lanes(acc)
}

#[inline(always)]
unsafe fn dot6k_body<D: Dpbusd, const R: usize>(
    w: &[Packed6K],
    a: [&[BlockQ8K]; R],
) -> [[f32; GROUP]; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, p) in w.iter().enumerate() {
        let mut sum = [_mm256_setzero_si256(); R];
        for g in 0..16 {
            let mut isum = [_mm256_setzero_si256(); R];
            for c in 0..4 {
                let u = _mm256_loadu_si256(p.qs.as_ptr().add(32 * (4 * g + c)).cast());
                for r in 0..R {
                    isum[r] = D::dpbusd(
                        isum[r],
                        u,
                        broadcast4k(a[r].get_unchecked(b), 16 * g + 4 * c),
                    );
                }
            }
            let scale = widen_i8(p.scales.as_ptr().add(8 * g));
            for r in 0..R {
                // The zero point 32, subtracted in integers: 32 * sum(q) over the group.
                let zero = _mm256_set1_epi32(32 * a[r].get_unchecked(b).bsums[g] as i32);
                let centred = _mm256_sub_epi32(isum[r], zero);
                sum[r] = _mm256_add_epi32(sum[r], _mm256_mullo_epi32(centred, scale));
            }
        }
        let d = scales(&p.d);
        for r in 0..R {
            let yd = _mm256_set1_ps(a[r].get_unchecked(b).d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r]), _mm256_mul_ps(d, yd), acc[r]);
        }
    }
    lanes(acc)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot4k_avx_vnni<const R: usize>(w: &[Packed4K], a: [&[BlockQ8K]; R]) -> [[f32; GROUP]; R] {
    dot4k_body::<AvxVnni, R>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot4k_avx512_vnni<const R: usize>(
    w: &[Packed4K],
    a: [&[BlockQ8K]; R],
) -> [[f32; GROUP]; R] {
    dot4k_body::<Avx512Vnni, R>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot6k_avx_vnni<const R: usize>(w: &[Packed6K], a: [&[BlockQ8K]; R]) -> [[f32; GROUP]; R] {
    dot6k_body::<AvxVnni, R>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot6k_avx512_vnni<const R: usize>(
    w: &[Packed6K],
    a: [&[BlockQ8K]; R],
) -> [[f32; GROUP]; R] {
    dot6k_body::<Avx512Vnni, R>(w, a)
}

/// Sums of eight interleaved Q4_K rows with each of `R` activation rows: `[r][lane]`.
///
/// # Safety
/// [`super::vnni_available`] holds; every activation row has at least `w.len()` blocks.
pub unsafe fn dot4k<const R: usize>(w: &[Packed4K], a: [&[BlockQ8K]; R]) -> [[f32; GROUP]; R] {
    if has_avx_vnni() {
        dot4k_avx_vnni::<R>(w, a)
    } else {
        dot4k_avx512_vnni::<R>(w, a)
    }
}

/// As [`dot4k`], for Q6_K rows.
///
/// # Safety
/// As [`dot4k`].
pub unsafe fn dot6k<const R: usize>(w: &[Packed6K], a: [&[BlockQ8K]; R]) -> [[f32; GROUP]; R] {
    if has_avx_vnni() {
        dot6k_avx_vnni::<R>(w, a)
    } else {
        dot6k_avx512_vnni::<R>(w, a)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot4_avx_vnni<const R: usize>(
    w: &[Packed4],
    a: [&[ActQ8]; R],
    z: u8,
    min: bool,
) -> [[f32; GROUP]; R] {
    dot4_body::<AvxVnni, R>(w, a, z, min)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot4_avx512_vnni<const R: usize>(
    w: &[Packed4],
    a: [&[ActQ8]; R],
    z: u8,
    min: bool,
) -> [[f32; GROUP]; R] {
    dot4_body::<Avx512Vnni, R>(w, a, z, min)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot8_avx_vnni<const R: usize>(
    w: &[Packed8],
    a: [&[ActQ8]; R],
    z: u8,
    min: bool,
) -> [[f32; GROUP]; R] {
    dot8_body::<AvxVnni, R>(w, a, z, min)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot8_avx512_vnni<const R: usize>(
    w: &[Packed8],
    a: [&[ActQ8]; R],
    z: u8,
    min: bool,
) -> [[f32; GROUP]; R] {
    dot8_body::<Avx512Vnni, R>(w, a, z, min)
}

/// Sums of eight interleaved four-bit weight rows (`w`, one group's blocks) with each of
/// `R` activation rows: `[r][lane]`.
///
/// # Safety
/// [`super::vnni_available`] holds; every activation row has at least `w.len()` blocks.
pub unsafe fn dot4<const R: usize>(
    w: &[Packed4],
    a: [&[ActQ8]; R],
    zero_point: u8,
    has_min: bool,
) -> [[f32; GROUP]; R] {
    if has_avx_vnni() {
        dot4_avx_vnni::<R>(w, a, zero_point, has_min)
    } else {
        dot4_avx512_vnni::<R>(w, a, zero_point, has_min)
    }
}

/// As [`dot4`], for one-byte weights.
///
/// # Safety
/// As [`dot4`].
pub unsafe fn dot8<const R: usize>(
    w: &[Packed8],
    a: [&[ActQ8]; R],
    zero_point: u8,
    has_min: bool,
) -> [[f32; GROUP]; R] {
    if has_avx_vnni() {
        dot8_avx_vnni::<R>(w, a, zero_point, has_min)
    } else {
        dot8_avx512_vnni::<R>(w, a, zero_point, has_min)
    }
}
