//! `voxlm._core` vision: inflation, the 3D ViT and perceiver bound to Python-owned parameters,
//! and the functional reducers/projectors.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::bridge;
use crate::error::Error;
use crate::vision::disease::disease_pool as disease_pool_core;
use crate::vision::inflate::{self, InflateMode};
use crate::vision::perceiver::Perceiver;
use crate::vision::projector;
use crate::vision::vit::{Vit3d, Vit3dConfig};

/// `[D, C, kh, kw] -> [D, C, depth, kh, kw]` with mode `mean`, `replicate` or `center`.
#[pyfunction]
pub fn inflate_patch_embedding<'py>(
    py: Python<'py>,
    weight2d: &Bound<'py, PyAny>,
    depth: i64,
    mode: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let w = bridge::tensor(weight2d, "weight2d")?;
    let m = InflateMode::parse(mode)?;
    let out = py.detach(move || inflate::inflate_patch_embedding(&w, depth, m))?;
    bridge::to_py(py, &out)
}

/// 2D grid position embeddings onto a 3D grid (trilinear).
#[pyfunction]
pub fn interpolate_pos_embedding<'py>(
    py: Python<'py>,
    pos: &Bound<'py, PyAny>,
    grid2d: (i64, i64),
    grid3d: (i64, i64, i64),
    has_cls: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let p = bridge::tensor(pos, "position_embeddings")?;
    let out = py.detach(move || inflate::interpolate_pos_embedding(&p, grid2d, grid3d, has_cls))?;
    bridge::to_py(py, &out)
}

/// M3D spatial pooling of a token grid.
#[pyfunction]
pub fn spatial_pool<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grid: [i64; 3],
    pooling_size: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let x = bridge::tensor(x, "x")?;
    let out = py.detach(move || projector::spatial_pool(&x, grid, pooling_size))?;
    bridge::to_py(py, &out)
}

/// Linears with exact GELU between them.
#[pyfunction]
pub fn mlp_project<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: Vec<Bound<'py, PyAny>>,
    biases: Vec<Option<Bound<'py, PyAny>>>,
) -> PyResult<Bound<'py, PyAny>> {
    if weights.len() != biases.len() {
        return Err(Error::config("mlp_project: expected one bias (or None) per weight").into());
    }
    let x = bridge::tensor(x, "x")?;
    let mut layers = Vec::with_capacity(weights.len());
    for (w, b) in weights.iter().zip(&biases) {
        layers.push((
            bridge::tensor(w, "weight")?,
            bridge::opt_tensor(b.as_ref(), "bias")?,
        ));
    }
    let out = py.detach(move || projector::mlp(&x, &layers))?;
    bridge::to_py(py, &out)
}

/// Dia-LLaMA disease-aware pooling: `x [B, M, D]`, `prototype [L, M]` -> `[B, L, D]`.
#[pyfunction]
pub fn disease_pool<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    prototype: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (x, w) = (
        bridge::tensor(x, "x")?,
        bridge::tensor(prototype, "prototype")?,
    );
    let out = py.detach(move || disease_pool_core(&x, &w))?;
    bridge::to_py(py, &out)
}

/// MONAI-named 3D ViT bound by reference to Python-owned parameters.
#[pyclass(module = "voxlm._core", name = "Vit3dCore")]
pub struct PyVit3d {
    inner: crate::py::Core<Vit3d>,
}

#[pymethods]
impl PyVit3d {
    /// Patch embedding (+ class token): the input of block 0.
    fn tokens<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> { inner.lock("Vit3dCore")?.tokens(&x) })?;
        bridge::to_py(py, &out)
    }

    /// Block `index` on tokens `[B, N, hidden]` (for activation checkpointing).
    #[pyo3(signature = (index, h, training=false))]
    fn block<'py>(
        &self,
        py: Python<'py>,
        index: i64,
        h: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let index = usize::try_from(index).map_err(|_| {
            Error::config(format!("index: expected a block index >= 0, got {index}"))
        })?;
        let h = bridge::tensor(h, "h")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            inner.lock("Vit3dCore")?.block_forward(index, &h, training)
        })?;
        bridge::to_py(py, &out)
    }

    /// The final LayerNorm.
    fn final_norm<'py>(
        &self,
        py: Python<'py>,
        h: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = bridge::tensor(h, "h")?;
        let inner = &self.inner;
        let out =
            py.detach(move || -> crate::Result<_> { inner.lock("Vit3dCore")?.final_norm(&h) })?;
        bridge::to_py(py, &out)
    }

    #[new]
    #[pyo3(signature = (in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, perceptron, params, lora=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_channels: i64,
        img_size: [i64; 3],
        patch_size: [i64; 3],
        hidden_size: i64,
        mlp_dim: i64,
        num_layers: i64,
        num_heads: i64,
        perceptron: bool,
        params: &Bound<'_, PyDict>,
        lora: Option<HashMap<String, (f64, f64)>>,
    ) -> PyResult<Self> {
        let cfg = Vit3dConfig {
            in_channels,
            img_size,
            patch_size,
            hidden_size,
            mlp_dim,
            num_layers,
            num_heads,
            perceptron,
            eps: 1e-5,
        };
        let vit = Vit3d::new(cfg, bridge::tensor_dict(params)?, &lora.unwrap_or_default())?;
        Ok(PyVit3d {
            inner: crate::py::Core::new(vit),
        })
    }

    /// `x [B, C, D, H, W] -> (tokens [B, N, hidden], [each block's output])`.
    #[pyo3(signature = (x, training=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let (out, hidden) = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("Vit3dCore")?;
            m.forward(&x, training)
        })?;
        let hs = PyList::empty(py);
        for h in &hidden {
            hs.append(bridge::to_py(py, h)?)?;
        }
        Ok((bridge::to_py(py, &out)?, hs))
    }
}

/// Perceiver resampler bound by reference to Python-owned parameters.
#[pyclass(module = "voxlm._core", name = "PerceiverCore")]
pub struct PyPerceiver {
    inner: crate::py::Core<Perceiver>,
}

#[pymethods]
impl PyPerceiver {
    #[new]
    fn new(params: &Bound<'_, PyDict>, depth: i64, heads: i64, dim_head: i64) -> PyResult<Self> {
        Ok(PyPerceiver {
            inner: crate::py::Core::new(Perceiver::new(
                bridge::tensor_dict(params)?,
                depth,
                heads,
                dim_head,
            )?),
        })
    }

    /// `x [B, N, dim] -> [B, num_latents, dim]`.
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("PerceiverCore")?;
            m.forward(&x)
        })?;
        bridge::to_py(py, &out)
    }
}

/// HF CLIP vision tower (2D, or 3D after inflation) bound by reference.
#[pyclass(module = "voxlm._core", name = "ClipVisionCore")]
pub struct PyClipVision {
    inner: crate::py::Core<crate::vision::clip::ClipVision>,
}

#[pymethods]
impl PyClipVision {
    #[new]
    fn new(
        params: &Bound<'_, PyDict>,
        num_layers: i64,
        num_heads: i64,
        eps: f64,
    ) -> PyResult<Self> {
        let m = crate::vision::clip::ClipVision::new(
            bridge::tensor_dict(params)?,
            num_layers,
            num_heads,
            eps,
        )?;
        Ok(PyClipVision {
            inner: crate::py::Core::new(m),
        })
    }

    /// `(last_hidden_state, pooler_output, hidden_states)`.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("ClipVisionCore")?;
            m.forward(&x)
        })?;
        let hs = PyList::empty(py);
        for h in &out.hidden_states {
            hs.append(bridge::to_py(py, h)?)?;
        }
        Ok((
            bridge::to_py(py, &out.last_hidden_state)?,
            bridge::to_py(py, &out.pooler_output)?,
            hs,
        ))
    }

    /// `hidden_states[layer]` of `forward` (negative from the end), running only the layers it
    /// needs (LLaVA's layer -2 skips the last one).
    fn hidden_state<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        layer: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("ClipVisionCore")?;
            m.hidden_state(&x, layer)
        })?;
        bridge::to_py(py, &out)
    }
}

/// PICG's adapter query blocks bound by reference.
#[pyclass(module = "voxlm._core", name = "QueryBlocksCore")]
pub struct PyQueryBlocks {
    inner: crate::py::Core<crate::vision::query::QueryBlocks>,
}

#[pymethods]
impl PyQueryBlocks {
    /// `eps`: the blocks' LayerNorm epsilon (1e-5: timm 0.3-0.6 `Block`, LLaMA-Adapter / PICG).
    #[new]
    #[pyo3(signature = (params, depth, heads, eps=1e-5))]
    fn new(params: &Bound<'_, PyDict>, depth: i64, heads: i64, eps: f64) -> PyResult<Self> {
        let q = crate::vision::query::QueryBlocks::new(
            bridge::tensor_dict(params)?,
            depth,
            heads,
            eps,
        )?;
        Ok(PyQueryBlocks {
            inner: crate::py::Core::new(q),
        })
    }

    #[pyo3(signature = (feats, training=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        feats: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = bridge::tensor(feats, "feats")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("QueryBlocksCore")?;
            m.forward(&f, training)
        })?;
        bridge::to_py(py, &out)
    }
}
