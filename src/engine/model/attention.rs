//! Causal (optionally sliding-window, optionally soft-capped) attention of one sequence's
//! new tokens over its cached keys and values, with grouped-query heads.

use candle_core::{Device, Tensor};

use crate::error::Result;

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

/// Query rows of a long prompt chunk attended together: each tile's products reach only
/// the keys its rows can see, so a chunk that starts a sequence computes about half of its
/// `new x new` scores instead of all of them (the dense products are the largest cost of a
/// long prompt's attention; decoding and short chunks take the paged kernels instead).
const PROMPT_TILE: usize = 64;

/// Computes attention for `q` `(n_heads, new, head_dim)` against all keys and values
/// `(n_kv_heads, total, head_dim)` of the sequence, where the new tokens occupy the last
/// `new` positions. Returns `(new, n_heads * head_dim)`.
pub fn attend(spec: &AttentionSpec, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attend_tiled(spec, q, k, v, PROMPT_TILE)
}

/// [`attend`] over tiles of at most `tile` query rows.
fn attend_tiled(
    spec: &AttentionSpec,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tile: usize,
) -> Result<Tensor> {
    let (n_heads, new, head_dim) = q.dims3()?;
    let total = k.dim(1)?;
    let past = total - new;
    let out = if new <= tile {
        attend_rows(spec, q, k, v, past, 0)?
    } else {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let mut tiles = Vec::with_capacity(new.div_ceil(tile));
        for a in (0..new).step_by(tile.max(1)) {
            let rows = tile.min(new - a);
            // Keys the tile's rows can see: up to its last row's position, and from its
            // first row's window start.
            let end = past + a + rows;
            let first = spec.window.map_or(0, |w| (past + a + 1).saturating_sub(w));
            tiles.push(attend_rows(
                spec,
                &q.narrow(1, a, rows)?,
                &k.narrow(1, first, end - first)?,
                &v.narrow(1, first, end - first)?,
                past + a,
                first,
            )?);
        }
        Tensor::cat(&tiles, 1)?
    };
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
fn causal_mask(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Tiled prompt attention equals one dense product over all keys, with a window, a soft
    /// cap, cached keys before the chunk, and a last tile shorter than the others.
    #[test]
    fn tiles_equal_one_product() -> Result<()> {
        let dev = Device::Cpu;
        for (window, softcap, past) in [(None, None, 0), (Some(9), Some(5.0), 7), (None, None, 5)] {
            let spec = AttentionSpec {
                n_heads: 6,
                n_kv_heads: 2,
                scale: 0.2,
                softcap,
                window,
            };
            let (new, hd) = (23, 16);
            let q = Tensor::randn(0f32, 1.0, (6, new, hd), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (2, past + new, hd), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (2, past + new, hd), &dev)?;
            let whole = attend_tiled(&spec, &q, &k, &v, usize::MAX)?;
            for tile in [1, 4, 8, 22] {
                let tiled = attend_tiled(&spec, &q, &k, &v, tile)?;
                let diff = (tiled - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "tile {tile}, window {window:?}: {diff}");
            }
        }
        Ok(())
    }
}
