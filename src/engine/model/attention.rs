//! Causal (optionally sliding-window, optionally soft-capped) attention of one sequence's
//! new tokens over its cached keys and values, with grouped-query heads.

use candle_core::{Device, Tensor, D};

use crate::error::Result;

/// Attention settings of one layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Keys further back than this many positions are invisible.
    pub window: Option<usize>,
}

/// Computes attention for `q` `(n_heads, new, head_dim)` against all keys and values
/// `(n_kv_heads, total, head_dim)` of the sequence, where the new tokens occupy the last
/// `new` positions. Returns `(new, n_heads * head_dim)`.
pub fn attend(spec: &AttentionSpec, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n_heads, new, head_dim) = q.dims3()?;
    let total = k.dim(1)?;
    let group = spec.n_heads / spec.n_kv_heads;
    // Heads h*group..(h+1)*group share kv head h: fold them into the row dimension so that
    // keys and values are used without being repeated.
    let q = q
        .contiguous()?
        .reshape((spec.n_kv_heads, group * new, head_dim))?;
    let k = k.contiguous()?;
    let mut scores = (q.matmul(&k.t()?)? * f64::from(spec.scale))?;
    if let Some(cap) = spec.softcap {
        scores = ((scores / f64::from(cap))?.tanh()? * f64::from(cap))?;
    }
    if let Some(mask) = causal_mask(new, total, spec.window, q.device())? {
        scores = scores
            .reshape((spec.n_kv_heads, group, new, total))?
            .broadcast_add(&mask)?
            .reshape((spec.n_kv_heads, group * new, total))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?;
    Ok(out
        .reshape((n_heads, new, head_dim))?
        .transpose(0, 1)?
        .reshape((new, n_heads * head_dim))?)
}

/// An additive `(new, total)` mask (0 or -inf), or `None` when every key is visible to
/// every new token (a single new token with no window in effect).
fn causal_mask(
    new: usize,
    total: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let past = total - new;
    let windowed = window.is_some_and(|w| total > w);
    if new == 1 && !windowed {
        return Ok(None);
    }
    let mut mask = Vec::with_capacity(new * total);
    for i in 0..new {
        let pos = past + i;
        for key in 0..total {
            let visible = key <= pos && window.is_none_or(|w| pos - key < w);
            mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
        }
    }
    Ok(Some(Tensor::from_vec(mask, (new, total), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() -> Result<()> {
        let dev = Device::Cpu;
        let m = causal_mask(3, 5, None, &dev)?.expect("mask").to_vec2::<f32>()?;
        let visible = |row: &Vec<f32>| row.iter().filter(|x| x.is_finite()).count();
        assert_eq!(m.iter().map(visible).collect::<Vec<_>>(), vec![3, 4, 5]);
        let w = causal_mask(2, 6, Some(3), &dev)?.expect("mask").to_vec2::<f32>()?;
        assert!(w[0][1].is_infinite() && w[0][2].is_finite() && w[0][4].is_finite());
        assert!(w[0][5].is_infinite() && w[1][2].is_infinite() && w[1][5].is_finite());
        assert!(causal_mask(1, 6, None, &dev)?.is_none());
        Ok(())
    }

    /// With one key, attention returns that key's value for every head of the group.
    #[test]
    fn single_key_returns_its_value() -> Result<()> {
        let dev = Device::Cpu;
        let spec = AttentionSpec {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 3,
            scale: 1.0,
            softcap: None,
            window: None,
        };
        let q = Tensor::randn(0f32, 1.0, (4, 1, 3), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 1, 3), &dev)?;
        let v = Tensor::new(&[[[1f32, 2., 3.]], [[4., 5., 6.]]], &dev)?;
        let out = attend(&spec, &q, &k, &v)?.to_vec2::<f32>()?;
        assert_eq!(
            out,
            vec![vec![1., 2., 3., 1., 2., 3., 4., 5., 6., 4., 5., 6.]]
        );
        Ok(())
    }
}
