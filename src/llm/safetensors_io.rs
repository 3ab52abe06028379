//! HF checkpoints in safetensors: `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped and converted to the requested dtype and device;
//! and the writer for `save_pretrained`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

fn kind_of(d: Dtype) -> Result<Kind> {
    Ok(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => {
            return Err(Error::checkpoint(format!(
                "safetensors dtype {other:?} is not supported"
            )))
        }
    })
}

fn dtype_of(k: Kind) -> Result<Dtype> {
    Ok(match k {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(Error::checkpoint(format!(
                "cannot save dtype {other:?} to safetensors"
            )))
        }
    })
}

/// The safetensors files of a checkpoint directory (or a single file path).
pub fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::checkpoint(format!(
            "{}: no such checkpoint file or directory",
            path.display()
        )));
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(index.display(), e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(format!("{}: not valid JSON ({e})", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::checkpoint(format!("{}: missing weight_map", index.display())))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = path.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::checkpoint(format!(
                        "{}: shard {f} listed in the index is missing",
                        path.display()
                    )))
                }
            })
            .collect();
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::checkpoint(format!(
        "{}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are read)",
        path.display()
    )))
}

/// Read every tensor of `files`, converting floating tensors to `kind` (None keeps the stored
/// dtype) on `device`.
pub fn load(
    files: &[PathBuf],
    kind: Option<Kind>,
    device: Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f.display(), e))?;
        // SAFETY: the map is read-only and dropped before this function returns; a file changed
        // underneath by another process is the documented hazard of memory-mapping.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f.display(), e))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| {
            Error::checkpoint(format!(
                "{}: not a valid safetensors file ({e})",
                f.display()
            ))
        })?;
        for (name, view) in st.tensors() {
            let k = kind_of(view.dtype())?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, k)?;
            let t = match kind {
                Some(target)
                    if matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
                        && k != target =>
                {
                    t.f_to_kind(target)?
                }
                _ => t,
            };
            let t = if device != Device::Cpu {
                t.f_to_device(device)?
            } else {
                t
            };
            if out.insert(name.clone(), t).is_some() {
                return Err(Error::checkpoint(format!(
                    "tensor {name} appears in more than one shard"
                )));
            }
        }
    }
    Ok(out)
}

/// Write `tensors` (any device) to one safetensors file with `{"format": "pt"}` metadata.
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let k = t.f_kind()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * k.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        bufs.push((name.clone(), dtype_of(k)?, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::checkpoint(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| {
        Error::checkpoint(format!(
            "{}: could not write safetensors ({e})",
            path.display()
        ))
    })
}
