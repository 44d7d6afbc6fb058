//! Loading a model's tensors from GGUF: quantized projections and f32 norm vectors, with
//! names, shapes and types checked so that a bad file is an error naming the tensor.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::engine::gguf::GgufFile;
use crate::error::{Error, Result};

/// Tensor types the engine can multiply with (candle's CPU kernels exist for all of them).
const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// A projection `y = x W^T (+ b)` with a quantized weight.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// How a projection's weight is multiplied.
#[derive(Debug, Clone)]
enum Weight {
    /// candle's dispatch (its own kernels per type and device).
    Dispatch(QMatMul),
    /// Q4_K on the CPU through candle's generic kernel on the weights as stored. candle's
    /// dispatch would repack every Q4_K tensor on first use into a second, cached copy,
    /// doubling the resident weights (2.3 GB instead of 1.2 GB for qwen2.5-coder-1.5b).
    CompactQ4K(Arc<QTensor>),
}

impl Linear {
    /// Applies the projection to `x` of shape `(tokens, in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dispatch(w) => w.forward(x)?,
            Weight::CompactQ4K(w) => compact_q4k_matmul(w, x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x W^T` for a Q4_K weight on the CPU, without candle's repacked copy.
fn compact_q4k_matmul(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    use candle_core::quantized::k_quants::{self, BlockQ4K};
    let (n, k) = w.shape().dims2()?;
    let m = x.elem_count() / k;
    let lhs = x.flatten_all()?.to_vec1::<f32>()?;
    let data = w.data()?;
    let n_blocks = data.len() / std::mem::size_of::<BlockQ4K>();
    if n_blocks * std::mem::size_of::<BlockQ4K>() != data.len()
        || (data.as_ptr() as usize) % std::mem::align_of::<BlockQ4K>() != 0
    {
        return Err(Error::Tensor {
            name: "Q4_K weight".into(),
            reason: "storage is not a whole, aligned array of Q4_K blocks".into(),
        });
    }
    // SAFETY: a CPU Q4_K tensor's storage is a `Vec<BlockQ4K>`; size and alignment were
    // checked above, and the bytes live as long as `data`.
    let blocks = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<BlockQ4K>(), n_blocks) };
    let mut out = vec![0f32; m * n];
    k_quants::matmul((m, k, n), &lhs, blocks, &mut out)?;
    Ok(Tensor::from_vec(out, (m, n), x.device())?)
}

/// Reads tensors from one GGUF file onto one device, checking names, shapes and types.
pub struct WeightLoader<'a> {
    file: &'a mut GgufFile,
    device: Device,
}

impl<'a> WeightLoader<'a> {
    /// A loader reading from `file` onto `device`.
    pub fn new(file: &'a mut GgufFile, device: &Device) -> Self {
        Self {
            file,
            device: device.clone(),
        }
    }

    /// Whether `name` exists in the file.
    pub fn has(&self, name: &str) -> bool {
        self.file.has_tensor(name)
    }

    fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let (dims, dtype) = self.file.tensor_info(name).ok_or_else(|| Error::Tensor {
            name: name.to_string(),
            reason: "missing from the model file".to_string(),
        })?;
        if dims != shape {
            return Err(Error::Tensor {
                name: name.to_string(),
                reason: format!("shape {dims:?}, expected {shape:?}"),
            });
        }
        if !SUPPORTED_TYPES.contains(&dtype) {
            return Err(Error::Tensor {
                name: name.to_string(),
                reason: format!("unsupported tensor type {dtype:?}"),
            });
        }
        Ok(())
    }

    /// A quantized tensor of the given shape (outermost dimension first).
    pub fn qtensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        self.check(name, shape)?;
        self.file.tensor(name, &self.device)
    }

    /// A weight vector dequantized to f32 (norm scales, biases).
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        Ok(self.qtensor(name, &[len])?.dequantize(&self.device)?)
    }

    /// An optional weight vector.
    pub fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A projection from `in_dim` to `out_dim`, with its bias if the file has `<stem>.bias`.
    pub fn linear(&mut self, stem: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let weight = self.qtensor(&format!("{stem}.weight"), &[out_dim, in_dim])?;
        let bias = self.opt_vector(&format!("{stem}.bias"), out_dim)?;
        let weight = if weight.dtype() == GgmlDType::Q4K && self.device.is_cpu() {
            Weight::CompactQ4K(Arc::new(weight))
        } else {
            Weight::Dispatch(QMatMul::from_arc(Arc::new(weight))?)
        };
        Ok(Linear { weight, bias })
    }
}
