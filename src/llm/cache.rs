//! A preallocated KV cache: per layer `[B, n_kv_heads, capacity, head_dim]`, filled in place.
//!
//! For beam search on the fused CPU step the cache can also hold a row table: logical row `r`'s
//! position `l` lives in physical row `rows[r * capacity + l]`. Reordering beams then rewrites
//! that table (a few integers per row) instead of copying keys and values, and the beams of one
//! prompt share its keys and values physically (the attention reads them once for all beams).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Tokens already stored (the same for every layer once a forward completes).
    pub len: i64,
    pub capacity: i64,
    /// `[B, capacity]` physical row of each logical row's position (None: the identity). Positions
    /// at or past `len` always map to the logical row itself, so a step writes its new key there.
    rows: Option<Vec<u32>>,
    /// Consecutive logical rows that likely share history (the beams of one prompt).
    group: usize,
}

/// The fused step's view of a cache: per layer `(keys, values)`, the row table, the row group.
pub struct CacheParts<'a> {
    pub layers: Vec<(&'a mut Tensor, &'a mut Tensor)>,
    pub rows: Option<&'a [u32]>,
    pub group: usize,
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
            rows: None,
            group: 1,
        })
    }

    /// Rows of the batch.
    pub fn batch(&self) -> i64 {
        self.k.first().map_or(0, |t| t.size()[0])
    }

    /// Store `k_new`, `v_new` (`[B, n_kv, T, hd]`) for `layer` after the cached tokens and return
    /// views of all keys and values so far.
    pub fn append(
        &mut self,
        layer: usize,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if self.rows.is_some() {
            return Err(Error::config(
                "KV cache: its rows are remapped for the fused CPU step; a libtorch forward \
                 cannot read it (expected a cache without a row table)",
            ));
        }
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

    /// Every layer's key and value tensors `[B, n_kv, capacity, hd]`, in place, with the row
    /// table and row group.
    pub fn parts_mut(&mut self) -> CacheParts<'_> {
        CacheParts {
            layers: self.k.iter_mut().zip(self.v.iter_mut()).collect(),
            rows: self.rows.as_deref(),
            group: self.group,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.k.len()
    }

    pub fn advance(&mut self, t: i64) {
        self.len += t;
    }

    /// Repeat every row `n` times (`[B, ..] -> [B * n, ..]`, row `i` to rows `i * n .. i * n + n`)
    /// for beam search after the prompt. `shared`: copy each row's tokens once and point the `n`
    /// rows at it through the row table (for the fused CPU step); else copy it `n` times.
    pub fn expand_rows(&mut self, n: i64, shared: bool) -> Result<()> {
        if n < 1 || self.rows.is_some() {
            return Err(Error::config(format!(
                "KV cache: expected an unmapped cache and n >= 1 to expand, got n {n}{}",
                if self.rows.is_some() {
                    " on a remapped cache"
                } else {
                    ""
                }
            )));
        }
        if n == 1 {
            return Ok(());
        }
        let b = self.batch();
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = if shared {
                let s = t.size();
                let mut new = Tensor::f_zeros([b * n, s[1], s[2], s[3]], (t.kind(), t.device()))?;
                let idx = Tensor::f_arange(b, (Kind::Int64, t.device()))?.f_mul_scalar(n)?;
                let _ = new.f_index_copy_(0, &idx, t)?;
                new
            } else {
                t.f_repeat_interleave_self_int(n, Some(0), None::<i64>)?
            };
        }
        if shared {
            let (cap, len) = (self.capacity as usize, self.len as usize);
            let mut rows = vec![0u32; (b * n) as usize * cap];
            for (r, row) in rows.chunks_exact_mut(cap).enumerate() {
                let first = (r / n as usize * n as usize) as u32;
                for (l, p) in row.iter_mut().enumerate() {
                    *p = if l < len { first } else { r as u32 };
                }
            }
            self.rows = Some(rows);
            self.group = n as usize;
        }
        Ok(())
    }

    /// Reorder the batch (beam search): row `i` becomes old row `index[i]`. With a row table
    /// only the table changes; else only the rows whose source differs are copied, and only
    /// their cached positions (beams that keep their own history are not touched).
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        let src = Vec::<i64>::try_from(
            index
                .f_to_kind(Kind::Int64)?
                .f_to_device(Device::Cpu)?
                .f_reshape([-1])?,
        )?;
        self.reorder_rows(&src)
    }

    /// [`KvCache::reorder`] with the indices on the host.
    pub fn reorder_rows(&mut self, src: &[i64]) -> Result<()> {
        let (b, cap, len) = (
            self.batch() as usize,
            self.capacity as usize,
            self.len as usize,
        );
        if src.len() != b || src.iter().any(|&s| s < 0 || s as usize >= b) {
            return Err(Error::shape(format!(
                "KV cache reorder: expected {b} row indices in [0, {b}), got {src:?}"
            )));
        }
        let Some(rows) = &mut self.rows else {
            let (dst, from): (Vec<i64>, Vec<i64>) = src
                .iter()
                .enumerate()
                .filter(|&(i, &s)| s != i as i64)
                .map(|(i, &s)| (i as i64, s))
                .unzip();
            if dst.is_empty() || len == 0 {
                return Ok(());
            }
            let dev = self.k.first().map_or(Device::Cpu, Tensor::device);
            let (dst, from) = (
                Tensor::from_slice(&dst).f_to_device(dev)?,
                Tensor::from_slice(&from).f_to_device(dev)?,
            );
            for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                // gather the moved rows first (a source may itself be overwritten), then copy
                let mut live = t.f_narrow(2, 0, len as i64)?;
                let moved = live.f_index_select(0, &from)?;
                let _ = live.f_index_copy_(0, &dst, &moved)?;
            }
            return Ok(());
        };
        if src.iter().enumerate().all(|(i, &s)| s as usize == i) {
            return Ok(());
        }
        let old = rows[..b * cap].to_vec();
        for (i, &s) in src.iter().enumerate() {
            let s = s as usize;
            rows[i * cap..i * cap + len].copy_from_slice(&old[s * cap..s * cap + len]);
        }
        Ok(())
    }
}
