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
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::ModelEntry;
use lora_core::stage::ModelStage;
use lora_nn::stage::{BertStage, VitStage};

pub mod ops;
pub mod tensor_ops;

pub use tensor_ops::{BurnLeaf, BurnOps, BurnTensor};

pub const BACKEND: &str = "burn";

/// The device every tensor of this backend lives on: burn's flex CPU backend.
pub fn device() -> Device {
    Device::flex()
}

fn bert(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
    BertStage::from_component(c, BurnOps)
}

fn llama(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
    lora_nn::llama::CausalLmStage::from_component(c, BurnOps)
}

fn vit(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
    VitStage::from_component(c, BurnOps)
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

inventory::submit! {
    ModelEntry {
        backend: BACKEND,
        name: "llama-causal-lm",
        summary: "Llama decoder (LlamaForCausalLM) from a GGUF file, its base kept quantized, with LoRA; chat and text data",
        build: llama,
    }
}
