//! Loading a model's tensors from GGUF: quantized projections and f32 norm vectors, with
//! names, shapes and types checked so that a bad file is an error naming the tensor.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::engine::gguf::GgufFile;
use crate::engine::kernels::QuantMatrix;
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
    bias: Option<Bias>,
}

/// A projection's bias, as a tensor for candle's path and on the host for the kernels' (so
/// that no step copies it out of the tensor again).
#[derive(Debug, Clone)]
struct Bias {
    tensor: Tensor,
    host: Arc<[f32]>,
}

/// How a projection's weight is multiplied.
#[derive(Debug, Clone)]
enum Weight {
    /// candle's dispatch: GPUs, and float weights on the CPU.
    Dispatch(QMatMul),
    /// Quantized weights on the CPU through the engine's own kernels, on the blocks as
    /// stored (candle would repack Q4_K into a second copy and run Q4_1/Q5_0 as scalar
    /// code on a spinning thread pool).
    Kernels(QuantMatrix),
}

impl Linear {
    /// Applies the projection to `x` of shape `(tokens, in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dispatch(w) => w.forward(x)?,
            Weight::Kernels(w) => {
                let (tokens, _) = x.dims2()?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(w.forward(&input)?, (tokens, w.rows()), x.device())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.tensor)?,
            None => y,
        })
    }
}

impl Linear {
    /// The rows `ids` of the weight as f32 values, one after the other, when it is repacked
    /// for the CPU kernels (a tied token embedding reads its rows from the output
    /// projection); `None` otherwise. An id past the last row is an error.
    pub fn rows(&self, ids: &[u32]) -> Result<Option<Vec<f32>>> {
        let Weight::Kernels(w) = &self.weight else {
            return Ok(None);
        };
        let cols = w.cols();
        let mut out = vec![0f32; ids.len() * cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
            if id as usize >= w.rows() {
                return Err(Error::Request(format!(
                    "token id {id} is past the vocabulary of {} tokens",
                    w.rows()
                )));
            }
            if w.dequantize_row(id as usize, row).is_none() {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// Several projections of one input `h` (`(tokens, in)`) on host buffers, sharing the
    /// quantized input where their layouts agree; `None` (and no copy of `h`) unless every
    /// one runs on the CPU kernels.
    pub fn forward_host_many(linears: &[&Linear], h: &Tensor) -> Result<Option<Vec<Vec<f32>>>> {
        let mut mats = Vec::with_capacity(linears.len());
        for linear in linears {
            match &linear.weight {
                Weight::Kernels(w) => mats.push(w),
                Weight::Dispatch(_) => return Ok(None),
            }
        }
        let x = h.flatten_all()?.to_vec1::<f32>()?;
        let mut outs = QuantMatrix::forward_many(&mats, &x)?;
        for (linear, y) in linears.iter().zip(&mut outs) {
            if let Some(bias) = &linear.bias {
                for row in y.chunks_mut(bias.host.len()) {
                    row.iter_mut()
                        .zip(bias.host.iter())
                        .for_each(|(v, b)| *v += b);
                }
            }
        }
        Ok(Some(outs))
    }
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
        let mut linear = self.weight(&format!("{stem}.weight"), out_dim, in_dim)?;
        let bias = self.opt_vector(&format!("{stem}.bias"), out_dim)?;
        linear.bias = match bias {
            Some(tensor) => Some(Bias {
                host: tensor.to_vec1::<f32>()?.into(),
                tensor,
            }),
            None => None,
        };
        Ok(linear)
    }

    /// A projection without bias, `out_dim x in_dim`: repacked for the CPU kernels chunk by
    /// chunk as it is read where its type has a repacked layout, so that the stored matrix
    /// is never held whole beside its copy; otherwise read whole.
    pub fn weight(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        match self.packed(name, out_dim, in_dim)? {
            Some(linear) => Ok(linear),
            None => {
                let tensor = self.qtensor(name, &[out_dim, in_dim])?;
                self.matrix(name, Arc::new(tensor))
            }
        }
    }

    /// The projection repacked as it is read, `None` where the device, the CPU or the type
    /// has no repacked layout.
    pub fn packed(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<Option<Linear>> {
        self.check(name, &[out_dim, in_dim])?;
        let dtype = match self.file.tensor_info(name) {
            Some((_, dtype)) if self.device.is_cpu() => dtype,
            _ => return Ok(None),
        };
        let file = &mut *self.file;
        let matrix = QuantMatrix::load_packed(dtype, out_dim, in_dim, |start, buf| {
            file.read_tensor_bytes(name, start, buf)
        })
        .map_err(|e| match e {
            // The kernels name a weight by its type; the file's name is the one to show.
            Error::Tensor { reason, .. } => Error::Tensor {
                name: name.to_string(),
                reason,
            },
            e => e,
        })?;
        Ok(matrix.map(|m| Linear {
            weight: Weight::Kernels(m),
            bias: None,
        }))
    }

    /// A projection without bias over an already loaded tensor (a tied output matrix).
    pub fn matrix(&self, name: &str, tensor: Arc<QTensor>) -> Result<Linear> {
        let weight = if self.device.is_cpu() && QuantMatrix::supports(tensor.dtype()) {
            Weight::Kernels(QuantMatrix::new(tensor).map_err(|e| Error::Tensor {
                name: name.to_string(),
                reason: e.to_string(),
            })?)
        } else {
            Weight::Dispatch(QMatMul::from_arc(tensor)?)
        };
        Ok(Linear { weight, bias: None })
    }
}
