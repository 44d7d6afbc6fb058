//! Weights of the 32-element block types repacked at load for the VNNI dot-product
//! instruction: eight weight rows interleaved, one 32-bit lane per row.
//!
//! Why: in GGML's layout each weight row is reduced on its own, so a block costs a nibble
//! unpack, two scale conversions from f16, a horizontal pair-sum chain and a scale
//! broadcast for 32 products, and port 5 becomes the bottleneck (about 12 cycles a block
//! here). Interleaved, one `vpdpbusd` multiplies four activation bytes (broadcast to every
//! lane) with four weights of each of eight rows and adds them to eight row sums, the
//! eight rows' scales convert in one instruction, and the output needs no horizontal sum.
//!
//! Every type becomes `x = d * (u - z) + m` with `u` unsigned: Q4_0 (`z` = 8) and Q4_1
//! keep four bits per weight, in the same bytes per row as stored; Q5_0 (`z` = 16) and
//! Q5_1 keep the four low bits as nibbles and the fifth bits in a plane of one byte per
//! four weights, which holds every chunk's fifth bits so that one bit test per chunk and
//! half finds them (24 bytes per row and block against 22 and 24 stored); Q8_0 (`u = q + 128`, `z` = 128)
//! takes one byte per weight. The zero point `z` is
//! subtracted in integers (`z * sum(q_a)`), so the products are exact before scaling, as
//! in the stored layout. Nothing is re-quantized: the repacking is lossless.
//!
//! The K-quants keep their super-blocks of 256: Q4_K as eight 32-element sub-blocks of
//! nibbles with the rows' 6-bit scales unpacked to bytes and their mins to 16-bit pairs
//! for `vpmaddwd` (156 bytes per row and super-block against 144 stored); Q6_K as sixteen
//! groups of 16 signed bytes `u - 32` with the rows' scales and a precomputed correction
//! (278 bytes against 210). For Q6_K the activations are the unsigned side of `vpdpbusd`,
//! biased by 128, and `128 * sum(scale * w)` per row, known at load, removes the bias.
//! Each sub-block's integer sum is exact; Q6_K scales it in integers as GGML does, Q4_K in
//! f32 (each product exact, only the eight additions round) to spare the port that
//! `vpdpbusd` needs.

use half::f16;

use super::blocks::{
    self, five_bit, nibbles, q4k_scales_mins, q6k_value, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BLOCK, SUPER_BLOCK,
};
use super::matmul::quantize_rows;
use super::vnni::{Small, PAIR};
use crate::engine::team::{team, Disjoint};

/// Weight rows per interleaved group: one 32-bit lane each in a 256-bit register.
pub const GROUP: usize = 8;

/// Block `b` of eight rows at four bits per weight: 32-byte chunk `c`, lane `r`, byte
/// `j` holds `u[r][4c + j]` in its low nibble and `u[r][16 + 4c + j]` in its high one.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Packed4 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qs: [u8; GROUP * BLOCK / 2],
}

/// Block `b` of eight rows at five bits per weight: `qs` holds the low four bits as
/// [`Packed4::qs`] does, and byte `4r + j` of `qh` holds in bit `c` the fifth bit of
/// `u[r][4c + j]` and in bit `4 + c` that of `u[r][16 + 4c + j]`, for chunk `c` of 4.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Packed5 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qs: [u8; GROUP * BLOCK / 2],
    pub qh: [u8; GROUP * 4],
}

/// The four-bit layouts, with ([`Packed5`]) or without ([`Packed4`]) a plane of fifth
/// bits: one packing loop and one kernel body serve both, the fifth-bit steps behind
/// [`FIFTH`](Self::FIFTH), a constant, so the four-bit instantiation carries none of them.
pub trait NibbleBlock: Copy + Send + Sync {
    /// Whether [`qh`](Self::qh) holds fifth bits.
    const FIFTH: bool;
    /// A block of zeros.
    const ZERO: Self;
    fn d(&self) -> &[f16; GROUP];
    fn m(&self) -> &[f16; GROUP];
    fn qs(&self) -> &[u8; GROUP * BLOCK / 2];
    /// The fifth-bit plane (empty without one).
    fn qh(&self) -> &[u8];
    /// Sets lane `lane` to scale `d`, min `m` and unsigned values `u`.
    fn set_lane(&mut self, lane: usize, d: f16, m: f16, u: &[u8; BLOCK]);
}

impl NibbleBlock for Packed4 {
    const FIFTH: bool = false;
    const ZERO: Self = Packed4 {
        d: [f16::ZERO; GROUP],
        m: [f16::ZERO; GROUP],
        qs: [0; GROUP * BLOCK / 2],
    };
    fn d(&self) -> &[f16; GROUP] {
        &self.d
    }
    fn m(&self) -> &[f16; GROUP] {
        &self.m
    }
    fn qs(&self) -> &[u8; GROUP * BLOCK / 2] {
        &self.qs
    }
    fn qh(&self) -> &[u8] {
        &[]
    }
    fn set_lane(&mut self, lane: usize, d: f16, m: f16, u: &[u8; BLOCK]) {
        self.d[lane] = d;
        self.m[lane] = m;
        interleave_nibbles(&mut self.qs, lane, u);
    }
}

impl NibbleBlock for Packed5 {
    const FIFTH: bool = true;
    const ZERO: Self = Packed5 {
        d: [f16::ZERO; GROUP],
        m: [f16::ZERO; GROUP],
        qs: [0; GROUP * BLOCK / 2],
        qh: [0; GROUP * 4],
    };
    fn d(&self) -> &[f16; GROUP] {
        &self.d
    }
    fn m(&self) -> &[f16; GROUP] {
        &self.m
    }
    fn qs(&self) -> &[u8; GROUP * BLOCK / 2] {
        &self.qs
    }
    fn qh(&self) -> &[u8] {
        &self.qh
    }
    fn set_lane(&mut self, lane: usize, d: f16, m: f16, u: &[u8; BLOCK]) {
        self.d[lane] = d;
        self.m[lane] = m;
        interleave_nibbles(&mut self.qs, lane, &u.map(|x| x & 0x0F));
        interleave_fifth_bits(&mut self.qh, lane, u);
    }
}

/// Block `b` of eight rows at one byte per weight: chunk `c`, lane `r`, byte `j` holds
/// `u[r][4c + j]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Packed8 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qs: [u8; GROUP * BLOCK],
}

/// Super-block `b` of eight Q4_K rows: `x = d * scale[s] * u - dmin * min[s]` for
/// sub-block `s`; `scales[8s + lane]`; `mins[16p + 2 lane + j]` is the min of sub-block
/// `2p + j`; `qs[128s..]` holds sub-block `s` as [`Packed4::qs`] holds a block.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Packed4K {
    pub d: [f16; GROUP],
    pub dmin: [f16; GROUP],
    pub scales: [u8; GROUP * 8],
    pub mins: [i16; GROUP * 8],
    pub qs: [u8; GROUP * SUPER_BLOCK / 2],
}

/// Super-block `b` of eight Q6_K rows: `x = d * scale[g] * w` for group `g` of 16, `w` in
/// -32..32; `scales[8g + lane]`; chunk `c` (of 64) lane `r` byte `j` holds `w[r][4c + j]`;
/// `correction[lane]` is `128 * sum over g of scale[g] * sum(w)` of the group.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Packed6K {
    pub d: [f16; GROUP],
    pub correction: [i32; GROUP],
    pub scales: [i8; GROUP * 16],
    pub qs: [i8; GROUP * SUPER_BLOCK],
}

/// Q8_K activations biased to unsigned bytes (`q + 128`), for the Q6_K kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActQ8KBiased {
    pub d: f32,
    pub qs: [u8; SUPER_BLOCK],
}

impl ActQ8KBiased {
    const ZERO: Self = Self {
        d: 0.0,
        qs: [128; SUPER_BLOCK],
    };
}

blocks::multiversion! {
    /// Quantizes `xs` (a multiple of 256 long) into biased Q8_K activation blocks.
    pub fn quantize_q8k_biased(xs: &[f32], out: &mut [ActQ8KBiased]) {
        debug_assert_eq!(xs.len(), out.len() * SUPER_BLOCK);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(SUPER_BLOCK)) {
            let mut qs = [0i8; SUPER_BLOCK];
            block.d = blocks::quantize_symmetric(xs, &mut qs);
            block.qs = qs.map(|q| (q as i16 + 128) as u8);
        }
    }
}

const _: () = assert!(std::mem::size_of::<Packed4>() == 8 * 20);
const _: () = assert!(std::mem::size_of::<Packed5>() == 8 * 24);
const _: () = assert!(std::mem::size_of::<Packed8>() == 8 * 36);
const _: () = assert!(std::mem::size_of::<Packed4K>() == 8 * 156);
const _: () = assert!(std::mem::size_of::<Packed6K>() == 8 * 278);

/// An activation block for the packed kernels: `a = d * q`, with `s = d * sum(q)` for the
/// offset term and `sum(q)` for the zero point.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActQ8 {
    pub d: f32,
    pub s: f32,
    pub sum: i32,
    pub qs: [i8; BLOCK],
}

impl ActQ8 {
    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        sum: 0,
        qs: [0; BLOCK],
    };
}

blocks::multiversion! {
    /// Quantizes `xs` (a multiple of 32 long) into activation blocks.
    pub fn quantize_act(xs: &[f32], out: &mut [ActQ8]) {
        debug_assert_eq!(xs.len(), out.len() * BLOCK);
        for (block, xs) in out.iter_mut().zip(xs.chunks_exact(BLOCK)) {
            let d = blocks::quantize_block(xs, &mut block.qs);
            let sum: i32 = block.qs.iter().map(|&q| q as i32).sum();
            block.d = d;
            block.s = d * sum as f32;
            block.sum = sum;
        }
    }
}

/// A stored block type seen as `d * (u - z) + m` per element.
pub trait Unpack: Copy {
    /// The zero point `z` of the type.
    const ZERO_POINT: u8;
    /// Bits of `u`: 4 packs into [`Packed4`], 5 into [`Packed5`], 8 into [`Packed8`].
    const BITS: u32;
    /// Whether blocks carry an offset `m` (Q4_1, Q5_1).
    const HAS_MIN: bool;
    /// `(d, m, u)` of the block.
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]);
}

impl Unpack for BlockQ4_0 {
    const ZERO_POINT: u8 = 8;
    const BITS: u32 = 4;
    const HAS_MIN: bool = false;
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]) {
        (self.d, f16::ZERO, nibbles(&self.qs))
    }
}

impl Unpack for BlockQ4_1 {
    const ZERO_POINT: u8 = 0;
    const BITS: u32 = 4;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]) {
        (self.d, self.m, nibbles(&self.qs))
    }
}

impl Unpack for BlockQ5_0 {
    const ZERO_POINT: u8 = 16;
    const BITS: u32 = 5;
    const HAS_MIN: bool = false;
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]) {
        (self.d, f16::ZERO, five_bit(self.qh, &self.qs))
    }
}

impl Unpack for BlockQ5_1 {
    const ZERO_POINT: u8 = 0;
    const BITS: u32 = 5;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]) {
        (self.d, self.m, five_bit(self.qh, &self.qs))
    }
}

impl Unpack for BlockQ8_0 {
    const ZERO_POINT: u8 = 128;
    const BITS: u32 = 8;
    const HAS_MIN: bool = false;
    fn unpack(&self) -> (f16, f16, [u8; BLOCK]) {
        (self.d, f16::ZERO, self.qs.map(|q| (q as i16 + 128) as u8))
    }
}

/// The repacked weights of one matrix, by layout.
#[derive(Debug, Clone)]
enum PackedBlocks {
    Four(Vec<Packed4>),
    Five(Vec<Packed5>),
    Eight(Vec<Packed8>),
    Q4K(Vec<Packed4K>),
    Q6K(Vec<Packed6K>),
}

impl PackedBlocks {
    /// Blocks held, of whichever layout.
    fn len(&self) -> usize {
        match self {
            Self::Four(v) => v.len(),
            Self::Five(v) => v.len(),
            Self::Eight(v) => v.len(),
            Self::Q4K(v) => v.len(),
            Self::Q6K(v) => v.len(),
        }
    }
}

/// One interleaved layout: its blocks, the activation blocks it pairs with, and the kernel.
trait Layout {
    type Block: Sync;
    type Act: Copy + Send + Sync;
    /// Elements per block.
    const ELEMS: usize;
    const ZERO_ACT: Self::Act;
    fn quantize(xs: &[f32], out: &mut [Self::Act]);
    /// A matrix's blocks, if they are of this layout.
    fn blocks(blocks: &PackedBlocks) -> Option<&[Self::Block]>;
    /// Sums of one group's blocks `w[0]` (and a second group's `w[1]` if `pair`) with `R`
    /// activation rows, `[r][lane]`.
    ///
    /// # Safety
    /// As [`super::vnni::dot4`].
    unsafe fn dot<const R: usize>(
        w: [&[Self::Block]; 2],
        pair: bool,
        a: [&[Self::Act]; R],
        params: Small,
    ) -> [[f32; PAIR]; R];
}

/// Declares a layout: its marker type, blocks, activation format and kernel.
macro_rules! layout {
    ($name:ident: $block:ty, $variant:ident, $act:ty, $elems:expr, $zero:expr,
     $quantize:path, $dot:ident) => {
        struct $name;

        impl Layout for $name {
            type Block = $block;
            type Act = $act;
            const ELEMS: usize = $elems;
            const ZERO_ACT: $act = $zero;
            fn blocks(blocks: &PackedBlocks) -> Option<&[$block]> {
                match blocks {
                    PackedBlocks::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn quantize(xs: &[f32], out: &mut [$act]) {
                $quantize(xs, out)
            }
            unsafe fn dot<const R: usize>(
                w: [&[$block]; 2],
                pair: bool,
                a: [&[$act]; R],
                p: Small,
            ) -> [[f32; PAIR]; R] {
                super::vnni::$dot::<R>(w, pair, a, p)
            }
        }
    };
}

layout!(FourBit: Packed4, Four, ActQ8, BLOCK, ActQ8::ZERO, quantize_act, dot4);
layout!(FiveBit: Packed5, Five, ActQ8, BLOCK, ActQ8::ZERO, quantize_act, dot5);
layout!(EightBit: Packed8, Eight, ActQ8, BLOCK, ActQ8::ZERO, quantize_act, dot8);
layout!(FourBitK: Packed4K, Q4K, BlockQ8K, SUPER_BLOCK, BlockQ8K::ZERO, blocks::quantize_q8k, dot4k);
layout!(SixBitK: Packed6K, Q6K, ActQ8KBiased, SUPER_BLOCK, ActQ8KBiased::ZERO, quantize_q8k_biased, dot6k);

/// A matrix of `rows x cols` in interleaved groups of [`GROUP`] rows (the last group padded
/// with zero rows), block-major within a group.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    blocks: PackedBlocks,
    rows: usize,
    cols: usize,
    params: Small,
}

/// The four- or five-bit blocks of `groups` groups of `k_blocks` blocks, lane values from
/// `source(row, block)`.
fn pack_nibbles<B: NibbleBlock>(
    groups: usize,
    k_blocks: usize,
    source: &(impl Fn(usize, usize) -> (f16, f16, [u8; BLOCK]) + Sync),
) -> Vec<B> {
    interleave(groups, k_blocks, |g, b| {
        let mut p = B::ZERO;
        for lane in 0..GROUP {
            let (d, m, u) = source(g * GROUP + lane, b);
            p.set_lane(lane, d, m, &u);
        }
        p
    })
}

/// Builds `groups * k_blocks` packed blocks, filling each from its (group, block) index.
fn interleave<P: Send>(
    groups: usize,
    k_blocks: usize,
    fill: impl Fn(usize, usize) -> P + Sync,
) -> Vec<P> {
    use rayon::prelude::*;
    (0..groups * k_blocks)
        .into_par_iter()
        .map(|i| fill(i / k_blocks, i % k_blocks))
        .collect()
}

impl PackedMatrix {
    /// Repacks `rows x cols` stored blocks of a 32-element type `T` (row-major).
    pub fn pack<T: Unpack + Sync>(stored: &[T], rows: usize, cols: usize) -> Self {
        let k_blocks = cols / BLOCK;
        assert_eq!(stored.len(), rows * k_blocks, "stored blocks of the matrix");
        // (d, m, u) of row `r`, block `b`; zero for the padding rows.
        let source = |r: usize, b: usize| -> (f16, f16, [u8; BLOCK]) {
            if r < rows {
                stored[r * k_blocks + b].unpack()
            } else {
                (f16::ZERO, f16::ZERO, [T::ZERO_POINT; BLOCK])
            }
        };
        let groups = rows.div_ceil(GROUP);
        let blocks = if T::BITS == 4 {
            PackedBlocks::Four(pack_nibbles(groups, k_blocks, &source))
        } else if T::BITS == 5 {
            PackedBlocks::Five(pack_nibbles(groups, k_blocks, &source))
        } else {
            PackedBlocks::Eight(interleave(groups, k_blocks, |g, b| {
                let mut p = Packed8 {
                    d: [f16::ZERO; GROUP],
                    m: [f16::ZERO; GROUP],
                    qs: [0; GROUP * BLOCK],
                };
                for lane in 0..GROUP {
                    let (d, m, u) = source(g * GROUP + lane, b);
                    p.d[lane] = d;
                    p.m[lane] = m;
                    interleave_bytes(&mut p.qs, lane, &u);
                }
                p
            }))
        };
        Self {
            blocks,
            rows,
            cols,
            params: Small {
                zero_point: T::ZERO_POINT,
                has_min: T::HAS_MIN,
            },
        }
    }

    /// Repacks `rows x cols` stored Q4_K super-blocks (row-major).
    pub fn pack_q4k(stored: &[BlockQ4K], rows: usize, cols: usize) -> Self {
        let k_blocks = cols / SUPER_BLOCK;
        assert_eq!(stored.len(), rows * k_blocks, "stored blocks of the matrix");
        let blocks = interleave(rows.div_ceil(GROUP), k_blocks, |g, b| {
            let mut p = Packed4K {
                d: [f16::ZERO; GROUP],
                dmin: [f16::ZERO; GROUP],
                scales: [0; GROUP * 8],
                mins: [0; GROUP * 8],
                qs: [0; GROUP * SUPER_BLOCK / 2],
            };
            for lane in 0..GROUP {
                let r = g * GROUP + lane;
                if r >= rows {
                    continue;
                }
                let x = &stored[r * k_blocks + b];
                let (scales, mins) = q4k_scales_mins(&x.scales);
                p.d[lane] = x.d;
                p.dmin[lane] = x.dmin;
                for sub in 0..8 {
                    p.scales[8 * sub + lane] = scales[sub];
                    p.mins[16 * (sub / 2) + 2 * lane + sub % 2] = mins[sub] as i16;
                    let (pair, high) = (sub / 2, sub % 2 == 1);
                    let u: [u8; BLOCK] = std::array::from_fn(|l| {
                        let byte = x.qs[pair * 32 + l];
                        if high {
                            byte >> 4
                        } else {
                            byte & 0x0F
                        }
                    });
                    interleave_nibbles(&mut p.qs[128 * sub..128 * (sub + 1)], lane, &u);
                }
            }
            p
        });
        Self {
            blocks: PackedBlocks::Q4K(blocks),
            rows,
            cols,
            params: Small::UNUSED,
        }
    }

    /// Repacks `rows x cols` stored Q6_K super-blocks (row-major).
    pub fn pack_q6k(stored: &[BlockQ6K], rows: usize, cols: usize) -> Self {
        let k_blocks = cols / SUPER_BLOCK;
        assert_eq!(stored.len(), rows * k_blocks, "stored blocks of the matrix");
        let blocks = interleave(rows.div_ceil(GROUP), k_blocks, |g, b| {
            let mut p = Packed6K {
                d: [f16::ZERO; GROUP],
                correction: [0; GROUP],
                scales: [0; GROUP * 16],
                qs: [0; GROUP * SUPER_BLOCK],
            };
            for lane in 0..GROUP {
                let r = g * GROUP + lane;
                if r >= rows {
                    continue;
                }
                let x = &stored[r * k_blocks + b];
                p.d[lane] = x.d;
                let w: [i8; SUPER_BLOCK] = std::array::from_fn(|i| q6k_value(x, i) as i8 - 32);
                for group in 0..16 {
                    p.scales[8 * group + lane] = x.scales[group];
                    let sum: i32 = w[16 * group..16 * (group + 1)]
                        .iter()
                        .map(|&v| v as i32)
                        .sum();
                    p.correction[lane] += 128 * x.scales[group] as i32 * sum;
                }
                interleave_bytes(&mut p.qs, lane, &w);
            }
            p
        });
        Self {
            blocks: PackedBlocks::Q6K(blocks),
            rows,
            cols,
            params: Small::UNUSED,
        }
    }

    /// Appends the rows of `tail`, of the same layout, width and constants, below this
    /// matrix's, which must fill whole groups; room for `total_rows` is reserved at once so
    /// that the matrix is never copied as it grows. Loading builds a matrix from chunks of
    /// rows this way.
    pub fn append(&mut self, tail: PackedMatrix, total_rows: usize) {
        assert!(
            self.rows.is_multiple_of(GROUP)
                && self.cols == tail.cols
                && self.params == tail.params
                && self.rows + tail.rows <= total_rows,
            "rows appended to a matrix of whole groups and the same width"
        );
        let blocks = total_rows.div_ceil(GROUP) * (self.blocks.len() / self.groups().max(1));
        fn extend<P>(head: &mut Vec<P>, tail: Vec<P>, total: usize) {
            head.reserve_exact(total.saturating_sub(head.len()));
            head.extend(tail);
        }
        match (&mut self.blocks, tail.blocks) {
            (PackedBlocks::Four(h), PackedBlocks::Four(t)) => extend(h, t, blocks),
            (PackedBlocks::Five(h), PackedBlocks::Five(t)) => extend(h, t, blocks),
            (PackedBlocks::Eight(h), PackedBlocks::Eight(t)) => extend(h, t, blocks),
            (PackedBlocks::Q4K(h), PackedBlocks::Q4K(t)) => extend(h, t, blocks),
            (PackedBlocks::Q6K(h), PackedBlocks::Q6K(t)) => extend(h, t, blocks),
            _ => panic!("rows appended to a matrix of another layout"),
        }
        self.rows += tail.rows;
    }

    /// Interleaved groups of rows.
    fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Row `r` as f32 values in `out` (`cols` of them), by the operations GGML's
    /// dequantization applies to the stored row, in its order, so the values are the same
    /// bits. A tied token embedding looks its rows up here, so that the model holds one
    /// copy of the matrix it shares with the output projection.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "a row of the matrix"
        );
        let (g, lane) = (r / GROUP, r % GROUP);
        let z = i16::from(self.params.zero_point);
        let has_min = self.params.has_min;
        // `(u - z) * d (+ m)` over one 32-element block, as GGML's 32-element types do.
        let block = |out: &mut [f32], d: f16, m: f16, u: [u8; BLOCK]| {
            let (d, m) = (d.to_f32(), m.to_f32());
            for (y, &u) in out.iter_mut().zip(&u) {
                let x = (i16::from(u) - z) as f32 * d;
                *y = if has_min { x + m } else { x };
            }
        };
        match &self.blocks {
            PackedBlocks::Four(v) => {
                let k = self.cols / BLOCK;
                for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let p = &v[g * k + b];
                    block(out, p.d[lane], p.m[lane], lane_nibbles(&p.qs, lane));
                }
            }
            PackedBlocks::Five(v) => {
                let k = self.cols / BLOCK;
                for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let p = &v[g * k + b];
                    let mut u = lane_nibbles(&p.qs, lane);
                    for j in 0..4 {
                        let bits = p.qh[4 * lane + j];
                        for c in 0..4 {
                            u[4 * c + j] |= ((bits >> c) & 1) << 4;
                            u[16 + 4 * c + j] |= ((bits >> (4 + c)) & 1) << 4;
                        }
                    }
                    block(out, p.d[lane], p.m[lane], u);
                }
            }
            PackedBlocks::Eight(v) => {
                let k = self.cols / BLOCK;
                for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let p = &v[g * k + b];
                    let u = std::array::from_fn(|i| p.qs[32 * (i / 4) + 4 * lane + i % 4]);
                    block(out, p.d[lane], p.m[lane], u);
                }
            }
            PackedBlocks::Q4K(v) => {
                let k = self.cols / SUPER_BLOCK;
                for (b, out) in out.chunks_exact_mut(SUPER_BLOCK).enumerate() {
                    let p = &v[g * k + b];
                    let (d, dmin) = (p.d[lane].to_f32(), p.dmin[lane].to_f32());
                    for (sub, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                        let scale = d * f32::from(p.scales[8 * sub + lane]);
                        let min = dmin * f32::from(p.mins[16 * (sub / 2) + 2 * lane + sub % 2]);
                        let u = lane_nibbles(&p.qs[128 * sub..128 * (sub + 1)], lane);
                        for (y, &u) in out.iter_mut().zip(&u) {
                            *y = scale * f32::from(u) - min;
                        }
                    }
                }
            }
            PackedBlocks::Q6K(v) => {
                let k = self.cols / SUPER_BLOCK;
                for (b, out) in out.chunks_exact_mut(SUPER_BLOCK).enumerate() {
                    let p = &v[g * k + b];
                    let d = p.d[lane].to_f32();
                    for (i, y) in out.iter_mut().enumerate() {
                        let scale = f32::from(p.scales[8 * (i / 16) + lane]);
                        *y = d * scale * f32::from(p.qs[32 * (i / 4) + 4 * lane + i % 4]);
                    }
                }
            }
        }
    }

    /// Whether `other` has this matrix's layout and input width, so that the two can share
    /// one [`forward_many`](Self::forward_many).
    pub fn shares_input_with(&self, other: &PackedMatrix) -> bool {
        std::mem::discriminant(&self.blocks) == std::mem::discriminant(&other.blocks)
            && self.cols == other.cols
    }

    /// `out = x W^T` for `m` rows of `x` (`m * cols` values) into `out` (`m * rows`).
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) {
        Self::forward_many(&[self], x, &mut [out]);
    }

    /// `outs[i] = x W_i^T` for matrices that [share an input](Self::shares_input_with),
    /// with the input quantized once and all products in one parallel region (q, k and v;
    /// gate and up).
    pub fn forward_many(mats: &[&PackedMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
        assert!(super::vnni_available(), "packed weights need VNNI");
        assert_eq!(mats.len(), outs.len(), "one output per matrix");
        let Some(first) = mats.first() else {
            return;
        };
        assert!(
            mats.iter().all(|m| m.shares_input_with(first)),
            "matrices of one layout and input width"
        );
        match &first.blocks {
            PackedBlocks::Four(_) => run::<FourBit>(mats, x, outs),
            PackedBlocks::Five(_) => run::<FiveBit>(mats, x, outs),
            PackedBlocks::Eight(_) => run::<EightBit>(mats, x, outs),
            PackedBlocks::Q4K(_) => run::<FourBitK>(mats, x, outs),
            PackedBlocks::Q6K(_) => run::<SixBitK>(mats, x, outs),
        }
    }
}

/// The driver: activations quantized once per row, then groups of output columns of every
/// matrix split over the team, each group swept over all rows a tile at a time while its
/// blocks stay in cache. Every matrix is of layout `L`.
fn run<L: Layout>(mats: &[&PackedMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
    let weights: Vec<&[L::Block]> = mats
        .iter()
        .map(|mat| L::blocks(&mat.blocks).expect("matrices of layout L"))
        .collect();
    let k = mats[0].cols;
    let k_blocks = k / L::ELEMS;
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "packed matmul input");
    for ((mat, w), out) in mats.iter().zip(&weights).zip(outs.iter()) {
        assert_eq!(out.len(), m * mat.rows, "packed matmul output");
        assert_eq!(
            w.len(),
            mat.rows.div_ceil(GROUP) * k_blocks,
            "packed blocks"
        );
    }

    let team = team();
    let acts = quantize_rows(x, k, k_blocks, L::ZERO_ACT, L::quantize);

    // Work units: pairs of groups for the 512-bit kernels, else single groups, numbered
    // across the matrices one after another.
    let pairs = super::vnni::pairs_available();
    let per_unit = if pairs { 2 } else { 1 };
    // Activation rows per pass over a group's weights: as many as the registers hold (32
    // vector registers with AVX-512, 16 without).
    let tile = if pairs { MAX_TILE } else { 4 };
    let mut first_unit = Vec::with_capacity(mats.len() + 1);
    first_unit.push(0);
    for mat in mats {
        let units = mat.rows.div_ceil(GROUP).div_ceil(per_unit);
        first_unit.push(first_unit.last().copied().unwrap_or(0) + units);
    }
    let units = first_unit[mats.len()];
    let tasks = (team.threads() * 4).min(units).max(1);
    let per_task = units.div_ceil(tasks);
    let shared: Vec<Disjoint<f32>> = outs.iter_mut().map(|o| Disjoint::new(o)).collect();
    let acts = &acts;
    team.run(tasks, &|task| {
        for unit in task * per_task..((task + 1) * per_task).min(units) {
            let i = first_unit.partition_point(|&f| f <= unit) - 1;
            let (mat, weights, out) = (mats[i], weights[i], shared[i]);
            let (n, groups) = (mat.rows, mat.rows.div_ceil(GROUP));
            let g = (unit - first_unit[i]) * per_unit;
            let pair = pairs && g + 1 < groups;
            let group = |g: usize| &weights[g * k_blocks..(g + 1) * k_blocks];
            let w = [group(g), group(if pair { g + 1 } else { g })];
            let row_acts = |r: usize| &acts[r * k_blocks..(r + 1) * k_blocks];
            let params = mat.params;
            let mut row = 0;
            while row < m {
                let take = (m - row).min(tile);
                let a = |i: usize| row_acts(row + i);
                // SAFETY: VNNI (and AVX-512 for pairs) was checked; every activation row
                // and each group have `k_blocks` blocks.
                let sums: [[f32; PAIR]; MAX_TILE] = unsafe {
                    match take {
                        1 => pad(L::dot::<1>(w, pair, [a(0)], params)),
                        2 => pad(L::dot::<2>(w, pair, std::array::from_fn(a), params)),
                        3 => pad(L::dot::<3>(w, pair, std::array::from_fn(a), params)),
                        4 => pad(L::dot::<4>(w, pair, std::array::from_fn(a), params)),
                        5 => pad(L::dot::<5>(w, pair, std::array::from_fn(a), params)),
                        6 => pad(L::dot::<6>(w, pair, std::array::from_fn(a), params)),
                        7 => pad(L::dot::<7>(w, pair, std::array::from_fn(a), params)),
                        _ => L::dot::<8>(w, pair, std::array::from_fn(a), params),
                    }
                };
                // The lanes that are real columns: the groups' rows, less padding.
                let lanes = (if pair { PAIR } else { GROUP }).min(n - g * GROUP);
                for (r, sums) in sums.iter().enumerate().take(take) {
                    // SAFETY: in bounds; only this task owns these groups' columns.
                    let out = unsafe { out.slice((row + r) * n + g * GROUP, lanes) };
                    out.copy_from_slice(&sums[..lanes]);
                }
                row += take;
            }
        }
    });
}

/// The most activation rows one kernel call takes.
const MAX_TILE: usize = 8;

/// `R` rows of sums widened to [`MAX_TILE`] (the rest zero).
fn pad<const R: usize>(sums: [[f32; PAIR]; R]) -> [[f32; PAIR]; MAX_TILE] {
    std::array::from_fn(|r| if r < R { sums[r] } else { [0.0; PAIR] })
}

/// Writes row `lane`'s 32 four-bit values into a 128-byte chunk set of [`Packed4`] form.
fn interleave_nibbles(qs: &mut [u8], lane: usize, u: &[u8; BLOCK]) {
    for c in 0..4 {
        for j in 0..4 {
            qs[32 * c + 4 * lane + j] = u[4 * c + j] | (u[16 + 4 * c + j] << 4);
        }
    }
}

/// Row `lane`'s 32 four-bit values from a block's interleaved nibbles (the inverse of
/// [`interleave_nibbles`]).
fn lane_nibbles(qs: &[u8], lane: usize) -> [u8; BLOCK] {
    let mut u = [0u8; BLOCK];
    for c in 0..4 {
        for j in 0..4 {
            let byte = qs[32 * c + 4 * lane + j];
            u[4 * c + j] = byte & 0x0F;
            u[16 + 4 * c + j] = byte >> 4;
        }
    }
    u
}

/// Writes the fifth bits of row `lane`'s 32 five-bit values into [`Packed5::qh`].
fn interleave_fifth_bits(qh: &mut [u8; GROUP * 4], lane: usize, u: &[u8; BLOCK]) {
    for j in 0..4 {
        let mut byte = 0u8;
        for c in 0..4 {
            byte |= ((u[4 * c + j] >> 4) & 1) << c;
            byte |= ((u[16 + 4 * c + j] >> 4) & 1) << (4 + c);
        }
        qh[4 * lane + j] = byte;
    }
}

/// Writes row `lane`'s values (a multiple of four) as one byte each, four per chunk.
fn interleave_bytes<T: Copy>(qs: &mut [T], lane: usize, u: &[T]) {
    for (c, four) in u.chunks_exact(4).enumerate() {
        qs[32 * c + 4 * lane..32 * c + 4 * lane + 4].copy_from_slice(four);
    }
}
