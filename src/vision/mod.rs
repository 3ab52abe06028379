//! Vision parts on libtorch (autograd): 2D-to-3D patch inflation, a 3D ViT with MONAI's key
//! names, and the token reducers/projectors of the methods. Weights are taken through
//! [`crate::weights`]. Free of pyo3.

pub mod clip;
pub mod disease;
pub mod inflate;
pub mod perceiver;
pub mod projector;
pub mod query;
pub mod vit;
