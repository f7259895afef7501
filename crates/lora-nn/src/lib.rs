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

pub mod bert;
pub mod checkpoint;
pub mod dropout;
pub mod linear;
pub mod model;
pub mod ops;
pub mod params;
pub mod stage;
pub mod testing;
pub mod vit;
pub mod weights;

pub use model::{Architecture, Model};
pub use ops::{Mask, TensorOps};
pub use weights::{SafetensorsFile, WeightSource, WeightView};
