//! The models of lora-scripts, written once.
//!
//! Each architecture ([`bert`], [`vit`]) and the LoRA linear ([`linear`]) is
//! written against [`ops::TensorOps`], a trait of coarse tensor operations
//! that each backend crate implements with its own kernels. One generic
//! [`model::Model`] turns an architecture into the core's `AdapterModel`:
//! parameter bookkeeping with PEFT names ([`params`]), training and
//! evaluation steps, merge and unmerge. Weights arrive as typed views of
//! memory-mapped files ([`weights`]); dropout is a mask drawn on the host
//! from the core's seeded streams ([`dropout`]), so every backend draws the
//! same numbers.
//!
//! Invariant: this crate depends on `lora-core` and on no tensor library.

pub mod attention_kernel;
pub mod bert;
pub mod checkpoint;
pub mod dropout;
pub mod gguf;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod params;
pub mod scratch;
pub mod stage;
pub mod sublayer;
pub mod testing;
pub mod vit;
pub mod weights;

pub use model::{Architecture, Model};
pub use ops::{Mask, TensorOps};
pub use weights::{SafetensorsFile, WeightSource, WeightView};

/// What [`register_models!`] names in the registering crate.
#[doc(hidden)]
pub mod __registration {
    pub use lora_core::config::Component;
    pub use lora_core::diag::Diagnostics;
    pub use lora_core::inventory;
    pub use lora_core::registry::ModelEntry;
    pub use lora_core::stage::ModelStage;
}
