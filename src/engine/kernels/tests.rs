//! Kernels against plain references on random data: the SIMD dots against the portable
//! ones (same integer sums, so only float rounding may differ), and the matmul driver
//! against an f32 product of the dequantized weights, within the error that quantizing the
//! activations to 8 bits can cause, bounded element by element.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::blocks::{self, *};
use super::QuantMatrix;

fn random_f16(rng: &mut StdRng) -> f16 {
    f16::from_f32(rng.random_range(-0.05f32..0.05))
}

fn random_q8_0(rng: &mut StdRng) -> BlockQ8_0 {
    BlockQ8_0 {
        d: random_f16(rng),
        qs: std::array::from_fn(|_| rng.random_range(-127i8..=127)),
    }
}

fn random_q8_1(rng: &mut StdRng) -> BlockQ8_1 {
    let qs: [i8; 32] = std::array::from_fn(|_| rng.random_range(-127i8..=127));
    let d = random_f16(rng);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 {
        d,
        s: f16::from_f32(d.to_f32() * sum as f32),
        qs,
    }
}

/// Random bytes in every field: all bit patterns of the packed values are reached.
fn random_weights<T>(rng: &mut StdRng, n: usize, make: impl Fn(&mut StdRng) -> T) -> Vec<T> {
    (0..n).map(|_| make(rng)).collect()
}

fn random_q8k(rng: &mut StdRng) -> BlockQ8K {
    let qs: [i8; 256] = std::array::from_fn(|_| rng.random_range(-127i8..=127));
    let mut bsums = [0i16; 16];
    for (sum, chunk) in bsums.iter_mut().zip(qs.chunks(16)) {
        *sum = chunk.iter().map(|&q| q as i16).sum();
    }
    BlockQ8K {
        d: rng.random_range(-0.05f32..0.05),
        qs,
        bsums,
    }
}

/// Four activation rows of `blocks` blocks each.
fn rows<T>(rng: &mut StdRng, blocks: usize, make: impl Fn(&mut StdRng) -> T) -> [Vec<T>; 4] {
    std::array::from_fn(|_| random_weights(rng, blocks, &make))
}

/// Equal up to float rounding: the integer sums are exact, but a K-quant super-block's
/// i32 lanes (up to about 2^25 with random full-range scales) round when converted.
fn assert_close(kind: &str, blocks: usize, simd: &[f32], reference: &[f32]) {
    for (row, (s, r)) in simd.iter().zip(reference).enumerate() {
        assert!(
            (s - r).abs() <= 1e-4 + 1e-5 * r.abs(),
            "{kind} x {blocks} blocks, row {row}: simd {s} vs portable {r}"
        );
    }
}

#[test]
fn simd_dots_equal_the_portable_definitions() {
    if !super::simd_available() {
        eprintln!("no AVX2/FMA/F16C on this CPU: only the portable kernels run here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(7);
    for n_blocks in [1, 2, 3, 18, 48] {
        let q8_0 = rows(&mut rng, n_blocks, random_q8_0);
        let q8_1 = rows(&mut rng, n_blocks, random_q8_1);
        let q4_1 = random_weights(&mut rng, n_blocks, |r| BlockQ4_1 {
            d: random_f16(r),
            m: random_f16(r),
            qs: std::array::from_fn(|_| r.random()),
        });
        let q5_0 = random_weights(&mut rng, n_blocks, |r| BlockQ5_0 {
            d: random_f16(r),
            qh: r.random(),
            qs: std::array::from_fn(|_| r.random()),
        });
        let q5_1 = random_weights(&mut rng, n_blocks, |r| BlockQ5_1 {
            d: random_f16(r),
            m: random_f16(r),
            qh: r.random(),
            qs: std::array::from_fn(|_| r.random()),
        });
        let super_blocks = n_blocks.div_ceil(8);
        let q8k = rows(&mut rng, super_blocks, random_q8k);
        let q4k = random_weights(&mut rng, super_blocks, |r| BlockQ4K {
            d: random_f16(r),
            dmin: random_f16(r),
            scales: std::array::from_fn(|_| r.random()),
            qs: std::array::from_fn(|_| r.random()),
        });
        let q6k = random_weights(&mut rng, super_blocks, |r| BlockQ6K {
            ql: std::array::from_fn(|_| r.random()),
            qh: std::array::from_fn(|_| r.random()),
            scales: std::array::from_fn(|_| r.random()),
            d: random_f16(r),
        });
        let r8_0: [&[BlockQ8_0]; 4] = std::array::from_fn(|i| q8_0[i].as_slice());
        let r8_1: [&[BlockQ8_1]; 4] = std::array::from_fn(|i| q8_1[i].as_slice());
        let r8k: [&[BlockQ8K]; 4] = std::array::from_fn(|i| q8k[i].as_slice());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were checked above.
        unsafe {
            use super::avx2;
            let reference = r8_1.map(|y| portable::dot_q4_1(&q4_1, y));
            assert_close("q4_1", n_blocks, &avx2::dot_q4_1(&q4_1, r8_1), &reference);
            assert_close(
                "q4_1",
                n_blocks,
                &avx2::dot_q4_1(&q4_1, [r8_1[2]]),
                &reference[2..3],
            );
            let q8_0_weights = random_weights(&mut rng, n_blocks, random_q8_0);
            let reference = r8_0.map(|y| portable::dot_q8_0(&q8_0_weights, y));
            assert_close(
                "q8_0",
                n_blocks,
                &avx2::dot_q8_0(&q8_0_weights, r8_0),
                &reference,
            );
            assert_close(
                "q8_0",
                n_blocks,
                &avx2::dot_q8_0(&q8_0_weights, [r8_0[0]]),
                &reference[..1],
            );
            let reference = r8_0.map(|y| portable::dot_q5_0(&q5_0, y));
            assert_close("q5_0", n_blocks, &avx2::dot_q5_0(&q5_0, r8_0), &reference);
            assert_close(
                "q5_0",
                n_blocks,
                &avx2::dot_q5_0(&q5_0, [r8_0[1]]),
                &reference[1..2],
            );
            let reference = r8_1.map(|y| portable::dot_q5_1(&q5_1, y));
            assert_close("q5_1", n_blocks, &avx2::dot_q5_1(&q5_1, r8_1), &reference);
            assert_close(
                "q5_1",
                n_blocks,
                &avx2::dot_q5_1(&q5_1, [r8_1[3]]),
                &reference[3..4],
            );
            let reference = r8k.map(|y| portable::dot_q4k(&q4k, y));
            assert_close("q4k", super_blocks, &avx2::dot_q4k(&q4k, r8k), &reference);
            assert_close(
                "q4k",
                super_blocks,
                &avx2::dot_q4k(&q4k, [r8k[0]]),
                &reference[..1],
            );
            let reference = r8k.map(|y| portable::dot_q6k(&q6k, y));
            assert_close("q6k", super_blocks, &avx2::dot_q6k(&q6k, r8k), &reference);
            assert_close(
                "q6k",
                super_blocks,
                &avx2::dot_q6k(&q6k, [r8k[1]]),
                &reference[1..2],
            );
        }
    }
}

#[test]
fn q8_quantization_round_trips_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(3);
    let xs: Vec<f32> = (0..96).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let mut q0 = vec![BlockQ8_0::ZERO; 3];
    let mut q1 = vec![BlockQ8_1::ZERO; 3];
    blocks::quantize_q8_0(&xs, &mut q0);
    blocks::quantize_q8_1(&xs, &mut q1);
    for (b, chunk) in xs.chunks(32).enumerate() {
        let d = q0[b].d.to_f32();
        let mut sum = 0i32;
        for (i, &x) in chunk.iter().enumerate() {
            assert!((q0[b].qs[i] as f32 * d - x).abs() <= d * 0.5 + 1e-3);
            assert_eq!(q0[b].qs[i], q1[b].qs[i]);
            sum += q1[b].qs[i] as i32;
        }
        let s = q1[b].s.to_f32();
        assert!(
            (s - d * sum as f32).abs() <= 1e-2 * (1.0 + s.abs()),
            "block {b}"
        );
    }
}

/// Error bound of a product whose activations were rounded to 8 bits in blocks of `block`.
fn activation_error_bound(w_row: &[f32], x_row: &[f32], block: usize) -> f32 {
    w_row
        .chunks(block)
        .zip(x_row.chunks(block))
        .map(|(w, x)| {
            let step = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            // Half a step of rounding, plus the f16 rounding of the scale itself.
            let per_element = step * 0.5 + step * 127.0 * 1e-3;
            w.iter().map(|v| v.abs()).sum::<f32>() * per_element
        })
        .sum()
}

fn check_matmul(dtype: GgmlDType, m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let cpu = Device::Cpu;
    let w = Tensor::from_vec(w, (n, k), &cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let dequantized: Vec<f32> = q
        .dequantize(&cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let block = match dtype {
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => 256,
        _ => 32,
    };
    let q = Arc::new(q);
    // Both layouts: as stored, and repacked where the CPU has VNNI.
    let stored = QuantMatrix::stored(q.clone()).unwrap();
    let packed = QuantMatrix::new(q).unwrap();
    assert!(!stored.is_packed());
    assert_eq!(
        packed.is_packed(),
        super::vnni_available()
            && !matches!(dtype, GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q5K),
        "{dtype:?}: repacked exactly when VNNI runs it"
    );
    for matrix in [stored, packed] {
        let got = matrix.forward(&x).unwrap();
        check_against_reference(dtype, (m, n, k), block, &dequantized, &x, &got);
    }
}

/// Each output within the error bound of 8-bit activations around the f32 product.
fn check_against_reference(
    dtype: GgmlDType,
    (m, n, k): (usize, usize, usize),
    block: usize,
    dequantized: &[f32],
    x: &[f32],
    got: &[f32],
) {
    for row in 0..m {
        let x_row = &x[row * k..(row + 1) * k];
        for col in 0..n {
            let w_row = &dequantized[col * k..(col + 1) * k];
            let exact: f32 = w_row.iter().zip(x_row).map(|(a, b)| a * b).sum();
            let bound = activation_error_bound(w_row, x_row, block) * 1.01 + 1e-3;
            let value = got[row * n + col];
            assert!(
                (value - exact).abs() <= bound,
                "{dtype:?} {m}x{n}x{k}: out[{row}][{col}] = {value}, exact {exact}, bound {bound}"
            );
        }
    }
}

#[test]
fn matmul_matches_dequantized_reference_for_every_type_and_odd_shapes() {
    let small_block = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];
    let k_quants = [
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    // m = 12, 17 and 40 take register blocks of 16, 8, 4 and 1 rows.
    let shapes_small = [
        (1, 7, 64),
        (3, 13, 96),
        (12, 9, 64),
        (17, 33, 576),
        (40, 5, 32),
    ];
    let shapes_k = [
        (1, 7, 256),
        (3, 13, 512),
        (12, 9, 256),
        (17, 33, 256),
        (40, 5, 768),
    ];
    let mut seed = 0;
    for dtype in small_block {
        for &(m, n, k) in &shapes_small {
            seed += 1;
            check_matmul(dtype, m, n, k, seed);
        }
    }
    for dtype in k_quants {
        for &(m, n, k) in &shapes_k {
            seed += 1;
            check_matmul(dtype, m, n, k, seed);
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let w = Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let matrix = QuantMatrix::new(Arc::new(q)).unwrap();
    assert!(matrix.forward(&[0.0; 65]).is_err());
    let mut out = vec![0f32; 3];
    let err = matrix.forward_into(&[0.0; 64], &mut out).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

/// Several matrices of one input, some sharing a layout (fused into one region) and some
/// not, give exactly what each gives alone.
#[test]
fn forward_many_equals_one_by_one() {
    let mut rng = StdRng::seed_from_u64(99);
    let k = 512;
    let cpu = Device::Cpu;
    let make = |dtype: GgmlDType, n: usize, rng: &mut StdRng| {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let w = Tensor::from_vec(w, (n, k), &cpu).unwrap();
        QuantMatrix::new(Arc::new(QTensor::quantize(&w, dtype).unwrap())).unwrap()
    };
    let mats = [
        make(GgmlDType::Q4K, 24, &mut rng),
        make(GgmlDType::Q6K, 9, &mut rng),
        make(GgmlDType::Q4K, 40, &mut rng),
        make(GgmlDType::Q8_0, 17, &mut rng),
        make(GgmlDType::Q4K, 8, &mut rng),
    ];
    for m in [1, 5, 16] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let refs: Vec<&QuantMatrix> = mats.iter().collect();
        let many = QuantMatrix::forward_many(&refs, &x).unwrap();
        for (i, mat) in mats.iter().enumerate() {
            assert_eq!(many[i], mat.forward(&x).unwrap(), "matrix {i}, {m} rows");
        }
    }
}

/// The repacked kernels against the stored-layout kernels on the same matrices: the same
/// integer sums of the same quantized activations, so they agree to float rounding for
/// the K-quants (identical Q8_K activations), and to the f16 rounding of the activation
/// scale that the stored 32-element formats carry (2^-11 relative per block).
#[test]
fn packed_equals_stored_up_to_rounding() {
    if !super::vnni_available() {
        eprintln!("no VNNI on this CPU: nothing is repacked here");
        return;
    }
    let cpu = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(5);
    let cases = [
        (GgmlDType::Q4_0, 1e-3),
        (GgmlDType::Q4_1, 1e-3),
        (GgmlDType::Q5_0, 1e-3),
        (GgmlDType::Q5_1, 1e-3),
        (GgmlDType::Q8_0, 1e-3),
        (GgmlDType::Q4K, 1e-5),
        (GgmlDType::Q6K, 1e-5),
    ];
    for (dtype, relative) in cases {
        for &(m, n, k) in &[(1, 9, 512), (5, 17, 768), (16, 33, 256)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let q = QTensor::quantize(&Tensor::from_vec(w, (n, k), &cpu).unwrap(), dtype).unwrap();
            let dequantized: Vec<f32> = q
                .dequantize(&cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let q = Arc::new(q);
            let stored = QuantMatrix::stored(q.clone()).unwrap().forward(&x).unwrap();
            let packed = QuantMatrix::new(q).unwrap().forward(&x).unwrap();
            for row in 0..m {
                for col in 0..n {
                    let magnitude: f32 = (0..k)
                        .map(|i| (dequantized[col * k + i] * x[row * k + i]).abs())
                        .sum();
                    let (s, p) = (stored[row * n + col], packed[row * n + col]);
                    assert!(
                        (s - p).abs() <= relative * magnitude,
                        "{dtype:?} {m}x{n}x{k} [{row}][{col}]: stored {s}, packed {p}"
                    );
                }
            }
        }
    }
}

/// The types with a repacked layout.
const PACKED_TYPES: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// A random `n x k` matrix of `dtype` and its dequantized values.
fn random_quantized(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Arc<QTensor>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let cpu = Device::Cpu;
    let q = QTensor::quantize(&Tensor::from_vec(w, (n, k), &cpu).unwrap(), dtype).unwrap();
    let dequantized = q
        .dequantize(&cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (Arc::new(q), dequantized)
}

/// A repacked row read back (how a tied embedding is looked up) is GGML's dequantization
/// of that row bit for bit, in rows of every group position (13 and 37 rows are not
/// multiples of the group).
#[test]
fn repacked_rows_dequantize_bit_for_bit() {
    if !super::vnni_available() {
        eprintln!("no VNNI on this CPU: nothing is repacked here");
        return;
    }
    for (i, dtype) in PACKED_TYPES.into_iter().enumerate() {
        let k = if dtype.block_size() == 256 { 512 } else { 96 };
        for n in [1, 13, 37] {
            let (q, dequantized) = random_quantized(dtype, n, k, 40 + i as u64);
            let matrix = QuantMatrix::new(q.clone()).unwrap();
            assert!(QuantMatrix::stored(q)
                .unwrap()
                .dequantize_row(0, &mut [0.0; 1])
                .is_none());
            let mut row = vec![f32::NAN; k];
            for r in 0..n {
                matrix
                    .dequantize_row(r, &mut row)
                    .expect("a repacked matrix");
                let expected = &dequantized[r * k..(r + 1) * k];
                let differ = row
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    differ, None,
                    "{dtype:?} {n}x{k}, row {r}: {row:?} vs {expected:?}"
                );
            }
        }
    }
}

/// Loading a matrix a few rows at a time from its stored bytes gives the same matrix as
/// repacking it whole: the same products and rows, across chunk boundaries and a last
/// partial group; a failing read is the load's error.
#[test]
fn chunked_loading_equals_whole_packing() {
    if !super::vnni_available() {
        eprintln!("no VNNI on this CPU: nothing is repacked here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(77);
    for (i, dtype) in PACKED_TYPES.into_iter().enumerate() {
        let k = if dtype.block_size() == 256 { 256 } else { 64 };
        let n = 45;
        let (q, _) = random_quantized(dtype, n, k, 60 + i as u64);
        let bytes = q.data().unwrap().into_owned();
        let whole = QuantMatrix::new(q).unwrap();
        let row_bytes = bytes.len() / n;
        // One group a chunk, three groups a chunk, and everything in one.
        for chunk_bytes in [1, row_bytes * 3 * super::packed::GROUP, usize::MAX / 2] {
            let mut reads = 0;
            let loaded = QuantMatrix::load_packed_in_chunks(dtype, n, k, chunk_bytes, |at, buf| {
                reads += 1;
                let at = at as usize;
                buf.copy_from_slice(&bytes[at..at + buf.len()]);
                Ok(())
            })
            .unwrap()
            .expect("a type with a packed layout");
            let groups = n.div_ceil(super::packed::GROUP);
            if chunk_bytes == 1 {
                assert_eq!(reads, groups, "{dtype:?}: one read per group of rows");
            }
            let x: Vec<f32> = (0..3 * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            assert_eq!(
                loaded.forward(&x).unwrap(),
                whole.forward(&x).unwrap(),
                "{dtype:?}, chunks of {chunk_bytes} bytes"
            );
            let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
            for r in 0..n {
                loaded.dequantize_row(r, &mut a).unwrap();
                whole.dequantize_row(r, &mut b).unwrap();
                assert_eq!(a, b, "{dtype:?} row {r}, chunks of {chunk_bytes} bytes");
            }
        }
        let failed = QuantMatrix::load_packed(dtype, n, k, |_, _| {
            Err(crate::error::Error::Tensor {
                name: "w".into(),
                reason: "disk gone".into(),
            })
        });
        assert!(matches!(failed, Err(e) if e.to_string().contains("disk gone")));
    }
    // A row length that is not a multiple of the block size is an error, not a panic.
    let bad = QuantMatrix::load_packed(GgmlDType::Q4_0, 4, 33, |_, _| Ok(()));
    assert!(bad.unwrap_err().to_string().contains("block size"));
}

/// A row's product does not depend on the other rows of its batch, nor on where it sits:
/// the same activation row gives the same bits alone and at every position of batches of
/// every size (register blocks of every width), for the stored and the repacked layouts
/// alike. With attention's own schedule independence this makes a sequence's logits
/// independent of what else shares its forward steps.
#[test]
fn a_rows_product_does_not_depend_on_its_batch() {
    let (n, k) = (37, 512);
    let mut rng = StdRng::seed_from_u64(17);
    let row: Vec<f32> = (0..k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    for dtype in PACKED_TYPES
        .into_iter()
        .chain([GgmlDType::F16, GgmlDType::F32])
    {
        let (q, _) = random_quantized(dtype, n, k, 3);
        let layouts = [
            ("repacked", QuantMatrix::new(q.clone())),
            ("stored", QuantMatrix::stored(q)),
        ];
        for (layout, mat) in layouts {
            let Ok(mat) = mat else { continue };
            let alone = mat.forward(&row).unwrap();
            for m in [2, 3, 7, 8, 9, 15, 16, 17, 31, 33] {
                for at in [0, m / 2, m - 1] {
                    let mut x: Vec<f32> =
                        (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    x[at * k..(at + 1) * k].copy_from_slice(&row);
                    let out = mat.forward(&x).unwrap();
                    let got = &out[at * n..(at + 1) * n];
                    let same = got
                        .iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{dtype:?} {layout}: row {at} of {m} differs from the row alone"
                    );
                }
            }
        }
    }
}
