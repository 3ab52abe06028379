//! voxlm's one error type. Every fallible operation of the core returns [`Result`];
//! `src/py/errors.rs` maps each variant once onto a Python class under `voxlm.VoxlmError`.

use std::fmt;

/// Errors of the voxlm core. Messages are short and name what was expected and what was given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or array of the wrong rank or size.
    #[error("{0}")]
    Shape(String),
    /// A tensor or array of the wrong element type.
    #[error("{0}")]
    DType(String),
    /// Tensors on different devices, or a device that is not available.
    #[error("{0}")]
    Device(String),
    /// An argument of the wrong Python/Rust type (a list where a tensor was expected).
    #[error("{0}")]
    Type(String),
    /// An invalid configuration (model config, adapter config, argument value).
    #[error("{0}")]
    Config(String),
    /// A checkpoint or adapter file that is missing, misnamed or misshapen.
    #[error("{0}")]
    Checkpoint(String),
    /// A volume file (NIfTI) that is corrupt, truncated or unsupported.
    #[error("{0}")]
    VolumeFormat(String),
    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A libtorch failure that none of the checks above anticipated (message shortened, no backtrace).
    #[error("libtorch: {0}")]
    Torch(String),
}

/// Result alias of the voxlm core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(msg: impl fmt::Display) -> Self {
        Error::Shape(msg.to_string())
    }
    pub fn dtype(msg: impl fmt::Display) -> Self {
        Error::DType(msg.to_string())
    }
    pub fn device(msg: impl fmt::Display) -> Self {
        Error::Device(msg.to_string())
    }
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(msg.to_string())
    }
    pub fn checkpoint(msg: impl fmt::Display) -> Self {
        Error::Checkpoint(msg.to_string())
    }
    pub fn volume(msg: impl fmt::Display) -> Self {
        Error::VolumeFormat(msg.to_string())
    }
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Keep the first meaningful line of a libtorch message: drop the C++ backtrace
/// ("Exception raised from ...", frame lists) that `TchError::Torch` carries.
pub fn short_torch_message(msg: &str) -> String {
    let mut out = Vec::new();
    for line in msg.lines() {
        let t = line.trim();
        if t.starts_with("Exception raised from")
            || t.starts_with("frame #")
            || t.starts_with("Error in Python")
        {
            break;
        }
        if !t.is_empty() {
            out.push(t);
        }
        if out.len() == 3 {
            break;
        }
    }
    let joined = out.join(" ");
    if joined.is_empty() {
        "unknown libtorch error".to_string()
    } else {
        joined
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        match e {
            tch::TchError::Shape(s) => Error::Shape(short_torch_message(&s)),
            tch::TchError::Kind(s) => Error::DType(short_torch_message(&s)),
            tch::TchError::Torch(s) => Error::Torch(short_torch_message(&s)),
            tch::TchError::Io(io) => Error::Io {
                path: String::from("<libtorch>"),
                source: io,
            },
            other => Error::Torch(short_torch_message(&other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtrace_is_dropped() {
        let m = "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\nException raised from meta at /pytorch/aten.cpp:1\nframe #0: c10::Error";
        assert_eq!(
            short_torch_message(m),
            "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"
        );
    }

    #[test]
    fn tch_errors_map_to_short_messages() {
        let e: Error = tch::TchError::Torch("boom\nException raised from x".into()).into();
        assert_eq!(e.to_string(), "libtorch: boom");
    }
}
