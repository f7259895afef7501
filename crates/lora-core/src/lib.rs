//! The contracts of lora-scripts.
//!
//! Everything that the stages, backends and plugins agree on lives here and
//! nowhere else: the configuration schema and its spanned diagnostics, the
//! host-side batch currency, the backend-adapter trait, the stage traits and
//! one `inventory` registry per pluggable kind.
//!
//! This crate depends on no other workspace crate and on no tensor library,
//! so every crate can depend on it without pulling a backend in.

pub mod adapter;
pub mod augment;
pub mod batch;
pub mod bert;
pub mod calibration;
pub mod checkpoint;
pub mod config;
pub mod diag;
pub mod doc;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod gguf;
pub mod init;
pub mod llama;
pub mod loop_state;
pub mod lora;
pub mod memory;
pub mod optim;
pub mod registry;
pub mod rules;
pub mod shard;
pub mod stage;
pub mod strategy;
pub mod task;
pub mod vit;

pub use adapter::{AdapterModel, CausalDecoder, DType, EvalSums, ModelOptions, ParamInfo, ParamLayout, StepOutput};
pub use batch::{Batch, HostTensor, ImageBatch, TextBatch, TokenBatch};
pub use error::{Error, Result};
pub use loop_state::LoopState;
pub use lora::{LoraSpec, TargetModule};
pub use task::{Targets, Task};

/// Re-exported so that registering crates use the same `inventory` as the registries.
pub use inventory;
