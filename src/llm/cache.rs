//! A preallocated KV cache: per layer `[B, n_kv_heads, capacity, head_dim]`, filled in place.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Tokens already stored (the same for every layer once a forward completes).
    pub len: i64,
    pub capacity: i64,
}

impl KvCache {
    pub fn new(
        layers: i64,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut k = Vec::with_capacity(layers as usize);
        let mut v = Vec::with_capacity(layers as usize);
        for _ in 0..layers {
            k.push(Tensor::f_zeros(
                [batch, kv_heads, capacity, head_dim],
                (kind, device),
            )?);
            v.push(Tensor::f_zeros(
                [batch, kv_heads, capacity, head_dim],
                (kind, device),
            )?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Store `k_new`, `v_new` (`[B, n_kv, T, hd]`) for `layer` after the cached tokens and return
    /// views of all keys and values so far.
    pub fn append(
        &mut self,
        layer: usize,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k_new.size()[2];
        if self.len + t > self.capacity {
            return Err(Error::shape(format!(
                "KV cache: {} cached + {t} new tokens exceed its capacity {}",
                self.len, self.capacity
            )));
        }
        self.k[layer].f_narrow(2, self.len, t)?.f_copy_(k_new)?;
        self.v[layer].f_narrow(2, self.len, t)?.f_copy_(v_new)?;
        Ok((
            self.k[layer].f_narrow(2, 0, self.len + t)?,
            self.v[layer].f_narrow(2, 0, self.len + t)?,
        ))
    }

    /// Every layer's key and value tensors `[B, n_kv, capacity, hd]`, in place.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = (&mut Tensor, &mut Tensor)> {
        self.k.iter_mut().zip(self.v.iter_mut())
    }

    pub fn num_layers(&self) -> usize {
        self.k.len()
    }

    pub fn advance(&mut self, t: i64) {
        self.len += t;
    }

    /// Reorder the batch (beam search): row `i` becomes old row `index[i]`.
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.f_index_select(0, index)?;
        }
        Ok(())
    }
}
