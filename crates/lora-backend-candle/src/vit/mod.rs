//! A small Vision Transformer for image classification, trained from scratch
//! (full mode) or LoRA-adapted from a saved base.

pub mod classifier;
pub mod model;

pub use classifier::{VitClassifier, VitClassifierConfig};
