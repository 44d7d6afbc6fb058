//! One layer's attention settings, and attention by dense products, the reference that
//! tests hold the engine's paged kernels ([`super::paged_attention`]) to.

/// Attention settings of one layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Keys further back than this many positions are invisible.
    pub window: Option<usize>,
}

#[cfg(test)]
pub(crate) use dense::attend;

/// Causal (optionally sliding-window, optionally soft-capped) attention of one sequence's
/// new tokens over its keys and values, with grouped-query heads, in candle's products.
#[cfg(test)]
mod dense {
    use candle_core::{Device, Tensor};

    use super::AttentionSpec;
    use crate::error::Result;

    /// Computes attention for `q` `(n_heads, new, head_dim)` against all keys and values
    /// `(n_kv_heads, total, head_dim)` of the sequence, where the new tokens occupy the last
    /// `new` positions, by dense products. Returns `(new, n_heads * head_dim)`.
    pub(crate) fn attend(
        spec: &AttentionSpec,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (n_heads, new, head_dim) = q.dims3()?;
        let past = k.dim(1)? - new;
        let out = attend_rows(spec, q, k, v, past, 0)?;
        Ok(out.transpose(0, 1)?.reshape((new, n_heads * head_dim))?)
    }

    /// Attention of query rows `q` `(n_heads, rows, head_dim)` at positions `row0..` over the
    /// keys and values `(n_kv_heads, keys, head_dim)` at positions `key0..`. Returns
    /// `(n_heads, rows, head_dim)`.
    fn attend_rows(
        spec: &AttentionSpec,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        row0: usize,
        key0: usize,
    ) -> Result<Tensor> {
        let (n_heads, rows, head_dim) = q.dims3()?;
        let keys = k.dim(1)?;
        let group = spec.n_heads / spec.n_kv_heads;
        // Heads h*group..(h+1)*group share kv head h: fold them into the row dimension so that
        // keys and values are used without being repeated.
        let q = q
            .contiguous()?
            .reshape((spec.n_kv_heads, group * rows, head_dim))?;
        let k = k.contiguous()?;
        let mut scores = (q.matmul(&k.t()?)? * f64::from(spec.scale))?;
        if let Some(cap) = spec.softcap {
            scores = ((scores / f64::from(cap))?.tanh()? * f64::from(cap))?;
        }
        if let Some(mask) = causal_mask(rows, keys, row0, key0, spec.window, q.device())? {
            scores = scores
                .reshape((spec.n_kv_heads, group, rows, keys))?
                .broadcast_add(&mask)?
                .reshape((spec.n_kv_heads, group * rows, keys))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?;
        Ok(out.reshape((n_heads, rows, head_dim))?)
    }

    /// An additive `(rows, keys)` mask (0 or -inf) for query positions `row0..row0 + rows` over
    /// key positions `key0..key0 + keys`, or `None` when every key is visible to every row.
    pub(super) fn causal_mask(
        rows: usize,
        keys: usize,
        row0: usize,
        key0: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let visible = |pos: usize, key: usize| key <= pos && window.is_none_or(|w| pos - key < w);
        let (last_row, last_key) = (row0 + rows.max(1) - 1, key0 + keys.max(1) - 1);
        // Every key visible: the last key to the first row, the first key to the last row.
        if visible(row0, last_key) && visible(last_row, key0) {
            return Ok(None);
        }
        let mut mask = Vec::with_capacity(rows * keys);
        for i in 0..rows {
            for j in 0..keys {
                mask.push(if visible(row0 + i, key0 + j) {
                    0f32
                } else {
                    f32::NEG_INFINITY
                });
            }
        }
        Ok(Some(Tensor::from_vec(mask, (rows, keys), device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::dense::*;
    use super::*;
    use crate::error::Result;
    use candle_core::{Device, Tensor};

    #[test]
    fn mask_is_causal_and_windowed() -> Result<()> {
        let dev = Device::Cpu;
        let m = causal_mask(3, 5, 2, 0, None, &dev)?
            .expect("mask")
            .to_vec2::<f32>()?;
        let visible = |row: &Vec<f32>| row.iter().filter(|x| x.is_finite()).count();
        assert_eq!(m.iter().map(visible).collect::<Vec<_>>(), vec![3, 4, 5]);
        let w = causal_mask(2, 6, 4, 0, Some(3), &dev)?
            .expect("mask")
            .to_vec2::<f32>()?;
        assert!(w[0][1].is_infinite() && w[0][2].is_finite() && w[0][4].is_finite());
        assert!(w[0][5].is_infinite() && w[1][2].is_infinite() && w[1][5].is_finite());
        assert!(causal_mask(1, 6, 5, 0, None, &dev)?.is_none());
        Ok(())
    }

    /// With one key, attention returns that key's value for every head of the group.
    #[test]
    fn single_key_returns_its_value() -> Result<()> {
        let dev = Device::Cpu;
        let spec = AttentionSpec {
            n_heads: 4,
            n_kv_heads: 2,
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

#[cfg(test)]
mod prefill_tests {
    use super::*;
    use crate::error::Result;
    use candle_core::{Device, Tensor};

    /// Attending for all new tokens at once equals attending for each token over the keys up
    /// to and including its own position (what decoding does).
    #[test]
    fn prefill_equals_incremental() -> Result<()> {
        let dev = Device::Cpu;
        let spec = AttentionSpec {
            n_heads: 9,
            n_kv_heads: 3,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        let (t, hd) = (14, 64);
        let q = Tensor::randn(0f32, 1.0, (9, t, hd), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, t, hd), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, t, hd), &dev)?;
        let all = attend(&spec, &q, &k, &v)?;
        for i in 0..t {
            let one = attend(
                &spec,
                &q.narrow(1, i, 1)?,
                &k.narrow(1, 0, i + 1)?,
                &v.narrow(1, 0, i + 1)?,
            )?;
            let diff = (one - all.narrow(0, i, 1)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "token {i}: {diff}");
        }
        Ok(())
    }
}
