//! Rotary position embedding for tokens at arbitrary, per-token positions.
//!
//! Tables are computed for the positions of one forward step only (a few kilobytes), so a
//! batch can mix sequences at any positions and no table the size of the context is kept.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Inverse frequencies of one rotary variant (a base, a position scale, optional factors).
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `rope_dim / 2` inverse frequencies, already divided by per-frequency factors.
    inv_freq: Vec<f32>,
    /// Multiplier applied to positions (1 / linear scaling factor).
    position_scale: f32,
    rope_dim: usize,
}

/// Cosines and sines for the tokens of one step, each `(tokens, rope_dim / 2)`.
#[derive(Debug, Clone)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    rope_dim: usize,
}

impl Rotary {
    /// A rotary embedding over `rope_dim` dimensions with frequency `base`, positions
    /// multiplied by `position_scale`, and optional per-frequency divisors (Llama 3's
    /// `rope_freqs.weight`).
    pub fn new(rope_dim: usize, base: f32, position_scale: f32, factors: Option<&[f32]>) -> Self {
        let half = rope_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf((2 * i) as f32 / rope_dim as f32);
                f / factors.and_then(|fs| fs.get(i).copied()).unwrap_or(1.0)
            })
            .collect();
        Self {
            inv_freq,
            position_scale,
            rope_dim,
        }
    }

    /// Tables for tokens at `positions`.
    pub fn tables(&self, positions: &[usize], device: &Device) -> Result<RotaryTables> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let p = p as f32 * self.position_scale;
            for &f in &self.inv_freq {
                let (s, c) = (p * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        let shape = (positions.len(), half);
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, shape, device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
            rope_dim: self.rope_dim,
        })
    }
}

impl RotaryTables {
    /// Rotates `x` of shape `(1, tokens, heads, head_dim)`, pairing dimensions as the file
    /// stores them (`interleaved`: (2i, 2i+1); otherwise (i, i + rope_dim/2)); dimensions
    /// past `rope_dim` pass through unchanged.
    pub fn apply(&self, x: &Tensor, interleaved: bool) -> Result<Tensor> {
        let head_dim = x.dim(3)?;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            if interleaved {
                // candle's interleaved kernel wants (batch, heads, tokens, dim).
                let t = x.transpose(1, 2)?.contiguous()?;
                let r = candle_nn::rotary_emb::rope_i(&t, &self.cos, &self.sin)?;
                Ok(r.transpose(1, 2)?.contiguous()?)
            } else {
                Ok(candle_nn::rotary_emb::rope_thd(x, &self.cos, &self.sin)?)
            }
        };
        if self.rope_dim == head_dim {
            return rotate(&x);
        }
        let rotated = rotate(&x.narrow(3, 0, self.rope_dim)?.contiguous()?)?;
        let rest = x.narrow(3, self.rope_dim, head_dim - self.rope_dim)?;
        Ok(Tensor::cat(&[&rotated, &rest], 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating by position p then taking a dot product with a vector rotated by q depends
    /// only on p - q: the property attention relies on.
    #[test]
    fn dot_products_depend_only_on_relative_position() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rotary::new(8, 10_000.0, 1.0, None);
        let a = Tensor::arange(0f32, 8.0, &dev)?.reshape((1, 1, 1, 8))?;
        let b = Tensor::arange(1f32, 9.0, &dev)?
            .sqrt()?
            .reshape((1, 1, 1, 8))?;
        let dot = |pa: usize, pb: usize| -> Result<f32> {
            let ra = rope.tables(&[pa], &dev)?.apply(&a, false)?;
            let rb = rope.tables(&[pb], &dev)?.apply(&b, false)?;
            Ok((ra * rb)?.sum_all()?.to_scalar::<f32>()?)
        };
        let d1 = dot(5, 2)?;
        let d2 = dot(103, 100)?;
        assert!((d1 - d2).abs() < 1e-3, "{d1} vs {d2}");
        assert!((dot(0, 0)? - dot(7, 7)?).abs() < 1e-3);
        assert!((dot(5, 2)? - dot(2, 5)?).abs() > 1e-3);
        Ok(())
    }
}
