//! Optimizer and learning-rate schedule traits. Implementations live in
//! `lora-train` and work on flat host buffers, once for every backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::adapter::ParamLayout;
use crate::error::{Error, Result};

/// An optimizer's state as data: its step count and named flat buffers in the
/// parameter layout (`exp_avg`, `exp_avg_sq`, `momentum_buffer`). Rollbacks
/// and checkpoints keep this, never a copy of the optimizer object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OptimizerState {
    /// The optimizer's `type`, checked when the state is loaded.
    pub optimizer: String,
    pub step: u64,
    pub buffers: BTreeMap<String, Vec<f32>>,
}

impl OptimizerState {
    /// Checks that a state belongs to optimizer `kind` and has buffers of `len` values.
    pub fn check(&self, kind: &str, len: usize) -> Result<()> {
        self.check_kind(kind)?;
        if let Some((name, b)) = self.buffers.iter().find(|(_, b)| b.len() != len) {
            return Err(Error::Other(format!(
                "optimizer buffer `{name}` has {} values, the parameters {len}",
                b.len()
            )));
        }
        Ok(())
    }

    /// Checks that a state belongs to optimizer `kind` (for optimizers whose
    /// buffers are not all in the parameter layout, such as factored moments).
    pub fn check_kind(&self, kind: &str) -> Result<()> {
        if self.optimizer != kind {
            return Err(Error::Other(format!(
                "optimizer state of `{}` cannot be loaded into `{kind}`",
                self.optimizer
            )));
        }
        Ok(())
    }
}

pub trait Optimizer: Send {
    /// The peak learning rate from the configuration.
    fn base_lr(&self) -> f64;

    /// One update of every parameter at learning rate `lr`; `params` and
    /// `grads` are flat buffers in `layout`.
    fn step(&mut self, params: &mut [f32], grads: &[f32], layout: &ParamLayout, lr: f64);

    /// The configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The state (moments, step count) as data.
    fn state(&self) -> OptimizerState;

    /// Restores a state from [`Self::state`]; the next step continues from it exactly.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

pub trait Scheduler: Send {
    /// Multiplier of the base learning rate for optimizer step `step` (0-based) of `total`.
    fn factor(&self, step: usize, total: usize) -> f64;

    /// The configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
