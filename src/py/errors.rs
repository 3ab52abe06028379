//! The one mapping of `crate::Error` onto Python exception classes.
//!
//! The classes are created here, at module init, as real multiple-inheritance classes
//! (`ShapeError(VoxlmError, ValueError)`, `CheckpointError(VoxlmError, OSError)`, ...), so user code
//! can catch either voxlm's class or the builtin one. `voxlm.exceptions` re-exports them.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::Error;

/// (name, builtin base, docstring). `VoxlmError` itself derives from `Exception`.
const CLASSES: &[(&str, &str, &str)] = &[
    (
        "ShapeError",
        "ValueError",
        "A tensor or array of the wrong rank or size.",
    ),
    (
        "DTypeError",
        "ValueError",
        "A tensor or array of the wrong element type.",
    ),
    (
        "DeviceError",
        "ValueError",
        "Tensors on different devices, or a device that is not available.",
    ),
    (
        "ConfigError",
        "ValueError",
        "An invalid configuration or argument value.",
    ),
    (
        "CheckpointError",
        "OSError",
        "A checkpoint or adapter file that is missing, misnamed or misshapen.",
    ),
    (
        "VolumeFormatError",
        "OSError",
        "A volume file (NIfTI) that is corrupt, truncated or unsupported.",
    ),
    (
        "VoxlmTypeError",
        "TypeError",
        "An argument of the wrong type (a list where a tensor was expected).",
    ),
    ("VoxlmIOError", "OSError", "An I/O failure on a named path."),
    (
        "TorchError",
        "RuntimeError",
        "A libtorch failure no voxlm check anticipated (message without backtrace).",
    ),
];

static TYPES: PyOnceLock<Vec<(&'static str, Py<PyType>)>> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Bound<'py, PyTuple>,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "voxlm.exceptions")?;
    ns.set_item("__doc__", doc)?;
    let cls = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, ns))?;
    Ok(cls.cast_into::<PyType>()?)
}

/// Create the classes and add them to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let builtins = py.import("builtins")?;
    let base = make_class(
        py,
        "VoxlmError",
        PyTuple::new(py, [builtins.getattr("Exception")?])?,
        "Base class of every error voxlm raises.",
    )?;
    let mut types = vec![("VoxlmError", base.clone().unbind())];
    for (name, builtin, doc) in CLASSES {
        let bases = PyTuple::new(py, [base.as_any().clone(), builtins.getattr(*builtin)?])?;
        types.push((*name, make_class(py, name, bases, doc)?.unbind()));
    }
    for (name, t) in &types {
        m.add(*name, t.bind(py))?;
    }
    let _ = TYPES.set(py, types);
    Ok(())
}

fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Shape(_) => "ShapeError",
        Error::DType(_) => "DTypeError",
        Error::Device(_) => "DeviceError",
        Error::Type(_) => "VoxlmTypeError",
        Error::Config(_) => "ConfigError",
        Error::Checkpoint(_) => "CheckpointError",
        Error::VolumeFormat(_) => "VolumeFormatError",
        Error::Io { .. } => "VoxlmIOError",
        Error::Torch(_) => "TorchError",
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let name = class_name(&e);
        let msg = e.to_string();
        Python::attach(|py| {
            let cls = TYPES.get(py).and_then(|ts| {
                ts.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| t.clone_ref(py))
            });
            match cls {
                Some(c) => PyErr::from_type(c.into_bound(py), msg),
                None => PyValueError::new_err(msg),
            }
        })
    }
}
