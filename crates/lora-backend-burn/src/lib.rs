//! The burn backend of lora-scripts.
//!
//! The same models as the candle backend, with the same numbers: a BERT encoder
//! written against a LoRA-aware linear (PEFT semantics), the
//! `BertForSequenceClassification` head, a ViT (`ViTForImageClassification`:
//! full training from a seed, or LoRA on a saved base), safetensors loading.
//! Randomness (a new ViT's weights, LoRA `A`, the head, dropout masks) comes
//! from `lora_core::init`, so both backends draw the same numbers from the same seed.
//!
//! burn 0.22 picks its backend at run time through a [`Device`]; this crate
//! computes on the pure-Rust `flex` CPU backend. Base weights are plain
//! tensors, never tracked, so they are frozen by construction; for a training
//! step the LoRA matrices and the head become autodiff leaves
//! ([`Device::autodiff`]) and burn computes the input gradient only through
//! the frozen linears. GELU, the attention softmax and layer norm are fused
//! operations with hand-written backward passes ([`ops`]), written against
//! burn's backend-extension API: burn's own run single-threaded or, under
//! autodiff, as chains of element-wise operations.

use burn::tensor::Device;

pub mod bert;
pub mod lora_linear;
pub mod loss;
pub mod ops;
pub mod vit;
pub mod weights;

pub use bert::classifier::{BertClassifier, BertClassifierConfig};
pub use vit::{VitClassifier, VitClassifierConfig};
pub use weights::{SafetensorsWeights, WeightSource};

pub const BACKEND: &str = "burn";

/// The device every tensor of this backend lives on: burn's flex CPU backend.
pub fn device() -> Device {
    Device::flex()
}
