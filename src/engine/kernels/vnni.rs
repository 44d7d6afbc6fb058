//! Dot products of interleaved weight groups ([`super::packed`]) with up to four activation
//! rows, on `vpdpbusd`: one group of eight rows in 256-bit registers (AVX-VNNI, or AVX-512
//! VNNI with VL encodings), or two groups side by side in 512-bit registers (AVX-512 VNNI),
//! which doubles the products per instruction. One body per layout serves every width:
//! the [`Lanes`] trait supplies the instructions.
//!
//! Per block: for each 32-byte weight chunk, four activation bytes are broadcast to every
//! lane and `vpdpbusd` adds `u * q` over them into each row's i32 lane. The zero point is
//! then subtracted in integers and the lanes scaled by the rows' `d` times the activation's
//! `d`, plus `m * s` for the offset types.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::f16;

use super::blocks::BlockQ8K;
use super::packed::{
    ActQ8, ActQ8KBiased, NibbleBlock, Packed4, Packed4K, Packed5, Packed6K, Packed8, GROUP,
};

/// Output lanes of one call: two groups (the second unused by 256-bit kernels).
pub const PAIR: usize = 2 * GROUP;

/// The vector instructions the kernel bodies need, over one group (256-bit) or two groups
/// (512-bit). Pointers come in pairs, one per group; 256-bit kernels read only the first.
trait Lanes {
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// 32 bytes from each group.
    unsafe fn load(p: [*const u8; 2]) -> Self::I;
    unsafe fn low_nibbles(x: Self::I) -> Self::I;
    unsafe fn high_nibbles(x: Self::I) -> Self::I;
    /// `x` with `0x10` added to each byte whose bit `bit` is set in `qh`: the fifth bits
    /// of one chunk from a [`Packed5::qh`] plane.
    unsafe fn add_fifth(x: Self::I, qh: Self::I, bit: i32) -> Self::I;
    unsafe fn splat(x: i32) -> Self::I;
    unsafe fn dpbusd(acc: Self::I, u: Self::I, s: Self::I) -> Self::I;
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn mullo(a: Self::I, b: Self::I) -> Self::I;
    /// `vpmaddwd`: i16 pairs multiplied and summed into i32 lanes.
    unsafe fn madd16(a: Self::I, b: Self::I) -> Self::I;
    /// Eight i32 from each group.
    unsafe fn load_i32(p: [*const i32; 2]) -> Self::I;
    /// Eight bytes from each group, as i32 lanes.
    unsafe fn widen_u8(p: [*const u8; 2]) -> Self::I;
    unsafe fn widen_i8(p: [*const i8; 2]) -> Self::I;
    /// Eight f16 scales from each group, as f32 lanes.
    unsafe fn scales(p: [*const f16; 2]) -> Self::F;
    unsafe fn to_f(x: Self::I) -> Self::F;
    unsafe fn splat_f(x: f32) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn store(x: Self::F, out: &mut [f32; PAIR]);
}

/// One group in 256-bit registers; `V` picks the `vpdpbusd` encoding.
struct Ymm<V>(std::marker::PhantomData<V>);
/// AVX-VNNI's encoding.
struct AvxVnni;
/// AVX-512 VNNI's encoding of the 256-bit instruction.
struct Avx512VlVnni;
/// Two groups in 512-bit registers.
struct Zmm;

trait YmmDpbusd {
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

impl YmmDpbusd for AvxVnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
}

impl YmmDpbusd for Avx512VlVnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

impl<V: YmmDpbusd> Lanes for Ymm<V> {
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: [*const u8; 2]) -> __m256i {
        _mm256_loadu_si256(p[0].cast())
    }
    #[inline(always)]
    unsafe fn low_nibbles(x: __m256i) -> __m256i {
        _mm256_and_si256(x, _mm256_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn high_nibbles(x: __m256i) -> __m256i {
        _mm256_and_si256(_mm256_srli_epi16(x, 4), _mm256_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn add_fifth(x: __m256i, qh: __m256i, bit: i32) -> __m256i {
        let b = _mm256_set1_epi8((1u8 << bit) as i8);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, b), b);
        _mm256_or_si256(x, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m256i {
        _mm256_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        V::dpbusd(acc, u, s)
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn madd16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_madd_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn load_i32(p: [*const i32; 2]) -> __m256i {
        _mm256_loadu_si256(p[0].cast())
    }
    #[inline(always)]
    unsafe fn widen_u8(p: [*const u8; 2]) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p[0].cast()))
    }
    #[inline(always)]
    unsafe fn widen_i8(p: [*const i8; 2]) -> __m256i {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p[0].cast()))
    }
    #[inline(always)]
    unsafe fn scales(p: [*const f16; 2]) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p[0].cast()))
    }
    #[inline(always)]
    unsafe fn to_f(x: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(x)
    }
    #[inline(always)]
    unsafe fn splat_f(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(x: __m256, out: &mut [f32; PAIR]) {
        _mm256_storeu_ps(out.as_mut_ptr(), x)
    }
}

impl Lanes for Zmm {
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: [*const u8; 2]) -> __m512i {
        let low = _mm512_castsi256_si512(_mm256_loadu_si256(p[0].cast()));
        _mm512_inserti64x4(low, _mm256_loadu_si256(p[1].cast()), 1)
    }
    #[inline(always)]
    unsafe fn low_nibbles(x: __m512i) -> __m512i {
        _mm512_and_si512(x, _mm512_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn high_nibbles(x: __m512i) -> __m512i {
        _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn add_fifth(x: __m512i, qh: __m512i, bit: i32) -> __m512i {
        // A byte mask and a masked add: no shift, which would compete with `vpdpbusd`
        // for its port.
        let set = _mm512_test_epi8_mask(qh, _mm512_set1_epi8((1u8 << bit) as i8));
        _mm512_mask_add_epi8(x, set, x, _mm512_set1_epi8(0x10))
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn madd16(a: __m512i, b: __m512i) -> __m512i {
        _mm512_madd_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn load_i32(p: [*const i32; 2]) -> __m512i {
        Self::load(p.map(|p| p.cast::<u8>()))
    }
    #[inline(always)]
    unsafe fn widen_u8(p: [*const u8; 2]) -> __m512i {
        let bytes = _mm_unpacklo_epi64(_mm_loadl_epi64(p[0].cast()), _mm_loadl_epi64(p[1].cast()));
        _mm512_cvtepu8_epi32(bytes)
    }
    #[inline(always)]
    unsafe fn widen_i8(p: [*const i8; 2]) -> __m512i {
        let bytes = _mm_unpacklo_epi64(_mm_loadl_epi64(p[0].cast()), _mm_loadl_epi64(p[1].cast()));
        _mm512_cvtepi8_epi32(bytes)
    }
    #[inline(always)]
    unsafe fn scales(p: [*const f16; 2]) -> __m512 {
        let halves = _mm256_set_m128i(_mm_loadu_si128(p[1].cast()), _mm_loadu_si128(p[0].cast()));
        _mm512_cvtph_ps(halves)
    }
    #[inline(always)]
    unsafe fn to_f(x: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(x)
    }
    #[inline(always)]
    unsafe fn splat_f(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(x: __m512, out: &mut [f32; PAIR]) {
        _mm512_storeu_ps(out.as_mut_ptr(), x)
    }
}

/// Four activation bytes `qs[at..at + 4]` as one i32.
#[inline(always)]
unsafe fn four(qs: &[i8], at: usize) -> i32 {
    std::ptr::read_unaligned(qs.as_ptr().add(at).cast::<i32>())
}

#[inline(always)]
unsafe fn finish<V: Lanes, const R: usize>(acc: [V::F; R]) -> [[f32; PAIR]; R] {
    let mut out = [[0f32; PAIR]; R];
    for r in 0..R {
        V::store(acc[r], &mut out[r]);
    }
    out
}

/// Per-matrix constants of the 32-element layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Small {
    pub zero_point: u8,
    pub has_min: bool,
}

impl Small {
    /// For the K-quants, whose kernels take no per-matrix constants.
    pub const UNUSED: Small = Small {
        zero_point: 0,
        has_min: false,
    };
}

/// Scales one 32-element block's integer sums into the running float sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate<V: Lanes, const R: usize>(
    acc: &mut [V::F; R],
    isum: [V::I; R],
    d: V::F,
    m: Option<V::F>,
    zero_point: u8,
    a: &[&[ActQ8]; R],
    b: usize,
) {
    for r in 0..R {
        let y = a[r].get_unchecked(b);
        let mut i = isum[r];
        if zero_point != 0 {
            i = V::sub(i, V::splat(zero_point as i32 * y.sum));
        }
        acc[r] = V::fmadd(V::to_f(i), V::mul(d, V::splat_f(y.d)), acc[r]);
        if let Some(m) = m {
            acc[r] = V::fmadd(m, V::splat_f(y.s), acc[r]);
        }
    }
}

/// Sums of four-bit groups, with the fifth bits added where the layout has them.
#[inline(always)]
unsafe fn nibbles_body<V: Lanes, B: NibbleBlock, const R: usize>(
    w: [&[B]; 2],
    a: [&[ActQ8]; R],
    k: Small,
) -> [[f32; PAIR]; R] {
    let mut acc = [V::zero_f(); R];
    for b in 0..w[0].len() {
        let p = [w[0].get_unchecked(b), w[1].get_unchecked(b)];
        let qh = if B::FIFTH {
            V::load(p.map(|p| p.qh().as_ptr()))
        } else {
            V::zero_i()
        };
        let mut isum = [V::zero_i(); R];
        for c in 0..4 {
            let packed = V::load(p.map(|p| p.qs().as_ptr().add(32 * c)));
            let (mut lo, mut hi) = (V::low_nibbles(packed), V::high_nibbles(packed));
            if B::FIFTH {
                lo = V::add_fifth(lo, qh, c as i32);
                hi = V::add_fifth(hi, qh, 4 + c as i32);
            }
            for r in 0..R {
                let y = a[r].get_unchecked(b);
                isum[r] = V::dpbusd(isum[r], lo, V::splat(four(&y.qs, 4 * c)));
                isum[r] = V::dpbusd(isum[r], hi, V::splat(four(&y.qs, 16 + 4 * c)));
            }
        }
        let m = k.has_min.then(|| V::scales(p.map(|p| p.m().as_ptr())));
        let d = V::scales(p.map(|p| p.d().as_ptr()));
        accumulate::<V, R>(&mut acc, isum, d, m, k.zero_point, &a, b);
    }
    finish::<V, R>(acc)
}

#[inline(always)]
unsafe fn dot4_body<V: Lanes, const R: usize>(
    w: [&[Packed4]; 2],
    a: [&[ActQ8]; R],
    k: Small,
) -> [[f32; PAIR]; R] {
    nibbles_body::<V, Packed4, R>(w, a, k)
}

#[inline(always)]
unsafe fn dot5_body<V: Lanes, const R: usize>(
    w: [&[Packed5]; 2],
    a: [&[ActQ8]; R],
    k: Small,
) -> [[f32; PAIR]; R] {
    nibbles_body::<V, Packed5, R>(w, a, k)
}

#[inline(always)]
unsafe fn dot8_body<V: Lanes, const R: usize>(
    w: [&[Packed8]; 2],
    a: [&[ActQ8]; R],
    k: Small,
) -> [[f32; PAIR]; R] {
    let mut acc = [V::zero_f(); R];
    for b in 0..w[0].len() {
        let p = [w[0].get_unchecked(b), w[1].get_unchecked(b)];
        let mut isum = [V::zero_i(); R];
        for c in 0..8 {
            let u = V::load(p.map(|p| p.qs.as_ptr().add(32 * c)));
            for r in 0..R {
                isum[r] = V::dpbusd(isum[r], u, V::splat(four(&a[r].get_unchecked(b).qs, 4 * c)));
            }
        }
        let m = k.has_min.then(|| V::scales(p.map(|p| p.m.as_ptr())));
        let d = V::scales(p.map(|p| p.d.as_ptr()));
        accumulate::<V, R>(&mut acc, isum, d, m, k.zero_point, &a, b);
    }
    finish::<V, R>(acc)
}

#[inline(always)]
unsafe fn dot4k_body<V: Lanes, const R: usize>(
    w: [&[Packed4K]; 2],
    a: [&[BlockQ8K]; R],
    _: Small,
) -> [[f32; PAIR]; R] {
    let mut acc = [V::zero_f(); R];
    for b in 0..w[0].len() {
        let p = [w[0].get_unchecked(b), w[1].get_unchecked(b)];
        // Sub-block sums scaled in floats: a conversion and a fused multiply-add, which
        // can share the ports, instead of `vpmulld`'s two uops on the port `vpdpbusd` needs.
        // Each product is exact in f32 (under 2^22), so only the additions round.
        let mut sum_q = [V::zero_f(); R];
        for sub in 0..8 {
            let mut isum = [V::zero_i(); R];
            for c in 0..4 {
                let packed = V::load(p.map(|p| p.qs.as_ptr().add(128 * sub + 32 * c)));
                let (lo, hi) = (V::low_nibbles(packed), V::high_nibbles(packed));
                for r in 0..R {
                    let qs = &a[r].get_unchecked(b).qs;
                    isum[r] = V::dpbusd(isum[r], lo, V::splat(four(qs, 32 * sub + 4 * c)));
                    isum[r] = V::dpbusd(isum[r], hi, V::splat(four(qs, 32 * sub + 16 + 4 * c)));
                }
            }
            let scale = V::to_f(V::widen_u8(p.map(|p| p.scales.as_ptr().add(8 * sub))));
            for r in 0..R {
                sum_q[r] = V::fmadd(V::to_f(isum[r]), scale, sum_q[r]);
            }
        }
        let d = V::scales(p.map(|p| p.d.as_ptr()));
        let dmin = V::scales(p.map(|p| p.dmin.as_ptr()));
        for r in 0..R {
            let y = a[r].get_unchecked(b);
            // The min terms: pairs of sub-blocks' mins times their activation sums.
            let mut sum_m = V::zero_i();
            for pair in 0..4 {
                let sum = |sub: usize| y.bsums[2 * sub] + y.bsums[2 * sub + 1];
                let sums =
                    (sum(2 * pair) as u16 as u32) | ((sum(2 * pair + 1) as u16 as u32) << 16);
                let mins = V::load(p.map(|p| p.mins.as_ptr().add(16 * pair).cast::<u8>()));
                sum_m = V::add(sum_m, V::madd16(mins, V::splat(sums as i32)));
            }
            let yd = V::splat_f(y.d);
            acc[r] = V::fmadd(sum_q[r], V::mul(d, yd), acc[r]);
            acc[r] = V::fnmadd(V::to_f(sum_m), V::mul(dmin, yd), acc[r]);
        }
    }
    finish::<V, R>(acc)
}

#[inline(always)]
unsafe fn dot6k_body<V: Lanes, const R: usize>(
    w: [&[Packed6K]; 2],
    a: [&[ActQ8KBiased]; R],
    _: Small,
) -> [[f32; PAIR]; R] {
    let mut acc = [V::zero_f(); R];
    for b in 0..w[0].len() {
        let p = [w[0].get_unchecked(b), w[1].get_unchecked(b)];
        let mut sum = [V::zero_i(); R];
        for g in 0..16 {
            let mut isum = [V::zero_i(); R];
            for c in 0..4 {
                let w = V::load(p.map(|p| p.qs.as_ptr().add(32 * (4 * g + c)).cast::<u8>()));
                for r in 0..R {
                    let qs = &a[r].get_unchecked(b).qs;
                    let y = std::ptr::read_unaligned(qs.as_ptr().add(16 * g + 4 * c).cast::<i32>());
                    // Unsigned (biased) activations, signed weights.
                    isum[r] = V::dpbusd(isum[r], V::splat(y), w);
                }
            }
            let scale = V::widen_i8(p.map(|p| p.scales.as_ptr().add(8 * g)));
            for r in 0..R {
                sum[r] = V::add(sum[r], V::mullo(isum[r], scale));
            }
        }
        let d = V::scales(p.map(|p| p.d.as_ptr()));
        let correction = V::load_i32(p.map(|p| p.correction.as_ptr()));
        for r in 0..R {
            let yd = V::splat_f(a[r].get_unchecked(b).d);
            let exact = V::sub(sum[r], correction);
            acc[r] = V::fmadd(V::to_f(exact), V::mul(d, yd), acc[r]);
        }
    }
    finish::<V, R>(acc)
}

/// Which instructions run the kernels, detected once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    AvxVnni,
    Avx512VlVnni,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if std::is_x86_feature_detected!("avxvnni") {
            Isa::AvxVnni
        } else {
            Isa::Avx512VlVnni
        }
    })
}

/// Whether two groups can go through 512-bit registers at once (AVX-512 F, BW and VNNI).
pub fn pairs_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    })
}

/// Declares a kernel's three entry points (one per instruction set) and its dispatcher.
macro_rules! kernel {
    ($(#[$doc:meta])* $name:ident, $body:ident, $block:ty, $act:ty) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// [`super::vnni_available`] holds, and [`pairs_available`] too when `pair` is set;
        /// every activation row has at least as many blocks as each weight group.
        pub unsafe fn $name<const R: usize>(
            w: [&[$block]; 2],
            pair: bool,
            a: [&[$act]; R],
            k: Small,
        ) -> [[f32; PAIR]; R] {
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn avx_vnni<const R: usize>(
                w: [&[$block]; 2],
                a: [&[$act]; R],
                k: Small,
            ) -> [[f32; PAIR]; R] {
                $body::<Ymm<AvxVnni>, R>(w, a, k)
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
            unsafe fn avx512_vl<const R: usize>(
                w: [&[$block]; 2],
                a: [&[$act]; R],
                k: Small,
            ) -> [[f32; PAIR]; R] {
                $body::<Ymm<Avx512VlVnni>, R>(w, a, k)
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
            unsafe fn avx512<const R: usize>(
                w: [&[$block]; 2],
                a: [&[$act]; R],
                k: Small,
            ) -> [[f32; PAIR]; R] {
                $body::<Zmm, R>(w, a, k)
            }
            if pair {
                avx512::<R>(w, a, k)
            } else if isa() == Isa::AvxVnni {
                avx_vnni::<R>(w, a, k)
            } else {
                avx512_vl::<R>(w, a, k)
            }
        }
    };
}

kernel!(
    /// Sums of interleaved four-bit groups with each of `R` activation rows: `[r][lane]`,
    /// lanes 8..16 from the second group when `pair` is set.
    dot4, dot4_body, Packed4, ActQ8
);
kernel!(
    /// As [`dot4`], for five-bit groups.
    dot5, dot5_body, Packed5, ActQ8
);
kernel!(
    /// As [`dot4`], for one-byte weights.
    dot8, dot8_body, Packed8, ActQ8
);
kernel!(
    /// As [`dot4`], for Q4_K groups.
    dot4k, dot4k_body, Packed4K, BlockQ8K
);
kernel!(
    /// As [`dot4`], for Q6_K groups.
    dot6k, dot6k_body, Packed6K, ActQ8KBiased
);
