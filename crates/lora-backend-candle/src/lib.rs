//! The candle backend of lora-scripts.
//!
//! The project owns its model definitions (candle-transformers' linears are
//! private concrete types that cannot take LoRA): an encoder written against a
//! LoRA-aware linear. Base weights are memory-mapped tensors, never `Var`s, so
//! they are frozen by construction; only the LoRA matrices and the task head
//! are variables.

pub mod bert;
pub mod error;
pub mod lora_linear;
pub mod ops;
pub mod vit;

pub use bert::classifier::{BertClassifier, BertClassifierConfig};

pub const BACKEND: &str = "candle";
