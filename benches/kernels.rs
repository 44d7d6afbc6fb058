//! Benchmarks of the quantized matrix kernels on one thread: a matrix-vector product (one
//! decoded token) over weights that fit in cache and over weights streamed from memory, in
//! bytes of weights per second, and a 16-row product (batched decoding).
//!
//! `cargo bench --bench kernels`. Memory bandwidth here is about 31 to 36 GB/s with two
//! threads, so a streamed single-thread matvec near 15 GB/s is bound by memory.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fgo::engine::kernels::QuantMatrix;

/// A random `rows x cols` matrix of `dtype`.
fn matrix(dtype: GgmlDType, rows: usize, cols: usize) -> QuantMatrix {
    let t = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).expect("random weights");
    let q = QTensor::quantize(&t, dtype).expect("quantize");
    QuantMatrix::new(Arc::new(q)).expect("matrix")
}

fn matvec(c: &mut Criterion) {
    // One thread: the driver then runs on the calling thread without waking a pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let mut group = c.benchmark_group("matvec_1_thread");
    group.sample_size(20);
    // (type, rows, cols, matrices): one cache-resident projection, then enough matrices
    // (64 MB of Q4_1) that each product reads its weights from memory.
    let cases = [
        (GgmlDType::Q4_1, 1536, 576, 1),
        (GgmlDType::Q4_1, 1536, 576, 120),
        (GgmlDType::Q8_0, 1536, 576, 1),
        (GgmlDType::Q5_0, 1536, 896, 1),
        (GgmlDType::Q4K, 1536, 1536, 1),
        (GgmlDType::Q6K, 1536, 1536, 1),
    ];
    for (dtype, rows, cols, count) in cases {
        let mats: Vec<QuantMatrix> = (0..count).map(|_| matrix(dtype, rows, cols)).collect();
        let bytes = rows * cols / dtype.block_size() * dtype.type_size();
        group.throughput(Throughput::Bytes(bytes as u64));
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; rows];
        let mut next = 0;
        let id = format!(
            "{dtype:?}_{rows}x{cols}_{}",
            if count > 1 { "streamed" } else { "cached" }
        );
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                mats[next].forward_into(&x, &mut out).expect("product");
                next = (next + 1) % mats.len();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matvec);
criterion_main!(benches);
