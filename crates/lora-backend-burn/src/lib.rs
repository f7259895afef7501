//! The burn backend of lora-scripts: [`BurnOps`] implements the tensor
//! operations of `lora-nn` on burn's flex CPU backend, with fused kernels
//! ([`ops`]) for what burn runs slowly. The models themselves are `lora-nn`'s,
//! registered here for this backend.
//!
//! burn 0.22 picks its backend at run time through a [`Device`]; this crate
//! computes on the pure-Rust `flex` CPU backend with autodiff. Base weights
//! are plain tensors, never tracked, so they are frozen by construction and
//! burn computes only the input gradient through them; for a training pass the
//! trainable parameters become autodiff leaves ([`tensor_ops`]). GELU, softmax
//! (with attention's scale and mask) and layer norm are fused operations with
//! hand-written backward passes, written against burn's backend-extension API:
//! burn's own run single-threaded or, under autodiff, as chains of element-wise
//! operations.

use burn::tensor::Device;

pub mod ops;
pub mod sublayer;
pub mod tensor_ops;

pub use tensor_ops::{BurnLeaf, BurnOps, BurnTensor};

pub const BACKEND: &str = "burn";

/// The device every tensor of this backend lives on: burn's flex CPU backend.
pub fn device() -> Device {
    Device::flex()
}

lora_nn::register_models!(BACKEND, BurnOps);
