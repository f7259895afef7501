//! Optimizer and learning-rate schedule traits. Implementations live in
//! `lora-train` and work on host vectors, once for every backend.

use crate::adapter::ParamInfo;

pub trait Optimizer: Send {
    /// The peak learning rate from the configuration.
    fn base_lr(&self) -> f64;

    /// One update of every parameter at learning rate `lr`.
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], info: &[ParamInfo], lr: f64);

    /// The configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// A copy of the optimizer with its state (moments, step count), so that a
    /// training run can roll back to it. `None`: rollback restores parameters only.
    fn snapshot(&self) -> Option<Box<dyn Optimizer>> {
        None
    }
}

pub trait Scheduler: Send {
    /// Multiplier of the base learning rate for optimizer step `step` (0-based) of `total`.
    fn factor(&self, step: usize, total: usize) -> f64;

    /// The configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
