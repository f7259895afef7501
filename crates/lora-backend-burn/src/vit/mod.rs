//! A small Vision Transformer for image classification, trained from scratch
//! (full mode) or LoRA-adapted from a saved base: the candle backend's ViT on burn.

pub mod classifier;
pub mod model;

pub use classifier::{VitClassifier, VitClassifierConfig};
