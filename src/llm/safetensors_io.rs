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
        let mut files = Vec::with_capacity(map.len());
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| {
                Error::checkpoint(format!(
                    "{}: weight_map[{tensor}] must be a file name, got {f}",
                    index.display()
                ))
            })?;
            // a shard is a plain file name beside the index, never a path elsewhere
            if f.is_empty()
                || f.contains('/')
                || f.contains('\\')
                || f == ".."
                || f == "."
                || !f.ends_with(".safetensors")
            {
                return Err(Error::checkpoint(format!(
                    "{}: weight_map[{tensor}] = {f:?} is not a .safetensors file name beside the index",
                    index.display()
                )));
            }
            files.push(f.to_string());
        }
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
///
/// Each file is memory-mapped only to validate its header (which touches the header's pages,
/// not the data); each tensor's bytes are then read with `pread` straight into the tensor's own
/// freshly allocated buffer. So the process never holds a page of the file and a copy of it at
/// once: the peak while loading is the loaded tensors (plus one tensor when converting dtype),
/// not twice the checkpoint, and nothing of the file stays mapped afterwards.
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
        let what = f.display().to_string();
        let base = mmap.as_ptr() as usize;
        let read = |bytes: &[u8], t: &mut Tensor| -> Result<()> {
            // the view lies inside the map (validated by the header parse): its file offset
            let offset = (bytes.as_ptr() as usize - base) as u64;
            read_into(&file, offset, bytes.len(), t, &what)
        };
        for (name, t) in parse_with(&mmap, &what, kind, device, read)? {
            if out.contains_key(&name) {
                return Err(Error::checkpoint(format!(
                    "tensor {name} appears in more than one shard"
                )));
            }
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// The bytes of the fresh contiguous CPU tensor `t`, which must be exactly `len` bytes.
fn bytes_mut<'t>(t: &'t mut Tensor, len: usize, what: &str) -> Result<&'t mut [u8]> {
    let have = t.numel() * t.f_kind()?.elt_size_in_bytes();
    if have != len || !t.is_contiguous() || t.device() != Device::Cpu {
        return Err(Error::checkpoint(format!(
            "{what}: internal: buffer of {have} bytes for a tensor of {len} bytes"
        )));
    }
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: `t` was just allocated by `f_empty` (in `parse_with`) as a contiguous CPU tensor
    // of exactly `len` bytes (checked above); it is not shared with anyone until returned.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) })
}

/// Fill the fresh tensor `t` with `len` bytes of `file` from `offset`.
fn read_into(
    file: &std::fs::File,
    offset: u64,
    len: usize,
    t: &mut Tensor,
    what: &str,
) -> Result<()> {
    let buf = bytes_mut(t, len, what)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
            .map_err(|e| Error::io(what, e))
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(what, e))?;
        f.read_exact(buf).map_err(|e| Error::io(what, e))
    }
}

/// The tensors of one safetensors buffer (`what` names it in errors). The buffer is validated
/// before anything is copied: header length within the buffer, a JSON header, offsets that tile
/// the data region exactly (no overlap, no gap, nothing past the end), and every tensor's byte
/// length equal to its dtype size times its shape.
pub fn parse(
    bytes: &[u8],
    what: &str,
    kind: Option<Kind>,
    device: Device,
) -> Result<Vec<(String, Tensor)>> {
    parse_with(bytes, what, kind, device, |data, t| {
        bytes_mut(t, data.len(), what)?.copy_from_slice(data);
        Ok(())
    })
}

/// [`parse`] with the data of each tensor filled by `fill(view bytes, fresh empty CPU tensor)`
/// (taken `&mut`: `fill` writes through the tensor's storage).
fn parse_with(
    bytes: &[u8],
    what: &str,
    kind: Option<Kind>,
    device: Device,
    fill: impl Fn(&[u8], &mut Tensor) -> Result<()>,
) -> Result<Vec<(String, Tensor)>> {
    if bytes.len() < 8 {
        return Err(Error::checkpoint(format!(
            "{what}: not a valid safetensors file (truncated: {} bytes, the header length alone takes 8)",
            bytes.len()
        )));
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(format!("{what}: not a valid safetensors file ({e})")))?;
    let mut out = Vec::with_capacity(st.len());
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let k =
            kind_of(view.dtype()).map_err(|e| Error::checkpoint(format!("{what}: {name}: {e}")))?;
        let shape = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(|_| {
                Error::checkpoint(format!(
                    "{what}: {name}: shape {:?} is too large",
                    view.shape()
                ))
            })?;
        let mut t = Tensor::f_empty(&shape, (k, Device::Cpu))?;
        fill(view.data(), &mut t)?;
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
        out.push((name, t));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Vec<u8> {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let dir = std::env::temp_dir().join(format!("voxlm_st_{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let p = dir.join("t.safetensors");
        save(&[("a".into(), t.shallow_clone()), ("b".into(), t)], &p).ok();
        std::fs::read(&p).unwrap_or_default()
    }

    fn header(json: &str, data: usize) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    }

    fn refused(bytes: &[u8]) -> String {
        match parse(bytes, "x.safetensors", None, Device::Cpu) {
            Err(Error::Checkpoint(m)) => m,
            other => panic!(
                "expected a CheckpointError, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }

    #[test]
    fn a_valid_file_reads_back() -> Result<()> {
        let v = parse(&valid(), "t", Some(Kind::Double), Device::Cpu)?;
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].1.kind(), Kind::Double);
        assert_eq!(v[0].1.size(), [2, 2]);
        Ok(())
    }

    #[test]
    fn corrupt_files_are_named_checkpoint_errors() {
        let good = valid();
        // truncated anywhere
        for cut in [0, 4, 7, 8, 20, good.len() - 1] {
            let m = refused(&good[..cut]);
            assert!(m.contains("x.safetensors"), "{m}");
        }
        // header length past the end
        let mut b = good.clone();
        b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        refused(&b);
        // overlapping offsets
        refused(&header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ));
        // a gap (uncovered bytes) between tensors and bytes after the last one
        refused(&header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
        ));
        refused(&header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            12,
        ));
        // dtype x shape disagreeing with the byte length
        refused(&header(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ));
        // a shape whose element count overflows
        refused(&header(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            8,
        ));
        // unknown dtype, not JSON
        refused(&header(
            r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ));
        refused(&header("{not json", 0));
    }

    #[test]
    fn an_index_cannot_point_outside_its_folder() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("voxlm_idx_{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        for bad in [
            r#""../../etc/passwd""#,
            r#""sub/x.safetensors""#,
            "3",
            r#""x.bin""#,
        ] {
            let text = format!(r#"{{"weight_map":{{"a":{bad}}}}}"#);
            std::fs::write(dir.join("model.safetensors.index.json"), text)
                .map_err(|e| Error::io(dir.display(), e))?;
            assert!(
                matches!(checkpoint_files(&dir), Err(Error::Checkpoint(_))),
                "{bad}"
            );
        }
        Ok(())
    }
}
