//! The training loop of lora-scripts, written once for every backend.
//!
//! A backend computes a loss and the gradients of the trainable parameters;
//! everything else (accumulation, clipping, the optimizer update, the
//! learning-rate schedule, evaluation, events and adapter files) happens here
//! on host vectors.

pub mod eval;
pub mod metrics;
pub mod optim;
pub mod peft;
pub mod schedule;
pub mod trainer;

pub use peft::{load_adapter, save_adapter};
