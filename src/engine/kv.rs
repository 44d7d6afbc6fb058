//! Per-sequence key/value cache, owned by the caller rather than the model.
//!
//! The model reads and extends a [`KvCache`] handle for each sequence it runs, so the caller
//! decides how many sequences exist and how long they live. Each layer keeps keys and values
//! as `(kv_heads, capacity, head_dim)` buffers grown in whole chunks, so that appending one
//! token never copies what is already cached. Invariant: every layer holds exactly `len()`
//! valid positions between forward calls.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Positions by which a layer's buffer grows when full.
const GROWTH_CHUNK_TOKENS: usize = 256;

/// The cached keys and values of one sequence, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: `(keys, values)` buffers of equal capacity, or `None` before first use.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Number of positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the buffers (allocated capacity, not just the valid part).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flat_map(|(k, v)| [k, v])
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `keys`/`values` of shape `(kv_heads, new, head_dim)` for `layer` after the
    /// cached positions, and returns all keys and values `(kv_heads, len + new, head_dim)`.
    /// The cache length advances only with [`KvCache::advance`], once every layer is written.
    pub fn append(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (kv_heads, new, head_dim) = keys.dims3()?;
        let len = self.len;
        let needed = len + new;
        let n_layers = self.layers.len();
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| Error::InvalidArgument {
                name: "layer".into(),
                reason: format!("{layer} is out of range for a cache of {n_layers} layers"),
            })?;
        let capacity = slot.as_ref().map_or(0, |(k, _)| k.dims()[1]);
        if needed > capacity {
            let new_capacity = needed.div_ceil(GROWTH_CHUNK_TOKENS) * GROWTH_CHUNK_TOKENS;
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buffer = Tensor::zeros(
                    (kv_heads, new_capacity, head_dim),
                    keys.dtype(),
                    keys.device(),
                )?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buffer.slice_set(&old.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Ok(buffer)
            };
            let grown = (
                grow(slot.as_ref().map(|(k, _)| k))?,
                grow(slot.as_ref().map(|(_, v)| v))?,
            );
            *slot = Some(grown);
        }
        let Some((k_buf, v_buf)) = slot.as_ref() else {
            return Err(Error::Request("key/value buffer was not allocated".into()));
        };
        k_buf.slice_set(&keys.contiguous()?, 1, len)?;
        v_buf.slice_set(&values.contiguous()?, 1, len)?;
        Ok((k_buf.narrow(1, 0, needed)?, v_buf.narrow(1, 0, needed)?))
    }

    /// Records that `new` positions were appended to every layer.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }
}
