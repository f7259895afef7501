//! The candle backend of lora-scripts: [`CandleOps`] implements the tensor
//! operations of `lora-nn` on candle, with custom kernels ([`ops`]) whose
//! backward passes skip what LoRA never needs (frozen weights' gradients).
//! The models themselves are `lora-nn`'s, registered here for this backend.

pub mod error;
pub mod ops;
pub mod tensor_ops;

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::ModelEntry;
use lora_core::stage::ModelStage;
use lora_nn::stage::{BertStage, VitStage};

pub use tensor_ops::CandleOps;

pub const BACKEND: &str = "candle";

fn bert(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
    BertStage::from_component(c, CandleOps::default())
}

fn vit(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
    VitStage::from_component(c, CandleOps::default())
}

inventory::submit! {
    ModelEntry {
        backend: BACKEND,
        name: "bert-classifier",
        summary: "BERT-family encoder with LoRA and a sequence-classification head (BertForSequenceClassification layout)",
        build: bert,
    }
}

inventory::submit! {
    ModelEntry {
        backend: BACKEND,
        name: "vit-classifier",
        summary: "Vision Transformer with a classification head (ViTForImageClassification layout): full training or LoRA",
        build: vit,
    }
}
