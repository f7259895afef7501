//! The backend-adapter trait: the only way the core talks to a tensor backend.
//!
//! A backend builds a model with LoRA layers, runs a training step on a
//! host-side batch and hands back the loss and the gradients of the trainable
//! parameters. The optimizer, schedule, accumulation and clipping then run
//! once, in `lora-train`, on host vectors: trainable parameters are the LoRA
//! matrices and the task head, a few hundred thousand numbers, so the copy is
//! cheap and every backend gets the same update arithmetic.

use crate::batch::{Batch, HostTensor};
use crate::error::{Error, Result};

/// One trainable parameter, named with its key in PEFT's adapter file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// For example `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// Weight decay applies (false for biases, as Hugging Face's trainer does).
    pub weight_decay: bool,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Checks values for [`AdapterModel::write_params`] against the parameters,
/// all of them before any is written, so that a bad call changes nothing.
pub fn check_param_values(params: &[ParamInfo], values: &[Vec<f32>]) -> Result<()> {
    if values.len() != params.len() {
        return Err(Error::Other(format!(
            "expected {} parameter tensors, got {}",
            params.len(),
            values.len()
        )));
    }
    for (info, v) in params.iter().zip(values) {
        if v.len() != info.numel() {
            return Err(Error::Other(format!(
                "{}: expected {} values, got {}",
                info.name,
                info.numel(),
                v.len()
            )));
        }
    }
    Ok(())
}

/// What a training micro-step returns.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Mean loss over the micro-batch.
    pub loss: f32,
    /// Gradients of the mean loss, in the order of [`AdapterModel::params`].
    pub grads: Vec<Vec<f32>>,
}

/// Facts of a built model, for reports and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub architecture: String,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
    pub num_labels: usize,
    pub hidden_size: usize,
    pub max_positions: usize,
}

/// What PEFT's `adapter_config.json` needs from the model.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftInfo {
    /// `SEQ_CLS`, `CAUSAL_LM`, ...
    pub task_type: &'static str,
    /// PEFT's `target_modules`: a list of suffixes, or a regex string when a list would be ambiguous.
    pub target_modules: serde_json::Value,
    pub modules_to_save: Vec<String>,
}

pub trait AdapterModel: Send {
    /// Name of the backend (`candle`, `burn`).
    fn backend(&self) -> &'static str;

    fn summary(&self) -> ModelSummary;

    fn peft_info(&self) -> PeftInfo;

    /// The trainable parameters, in a fixed order.
    fn params(&self) -> &[ParamInfo];

    /// Current values of the trainable parameters, in the order of [`Self::params`].
    fn read_params(&self) -> Result<Vec<Vec<f32>>>;

    /// Replaces the trainable parameters (after an optimizer step, or when loading an adapter).
    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()>;

    /// Forward and backward on one micro-batch in training mode. `dropout_seed`
    /// makes the dropout masks a pure function of the run seed and the step.
    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput>;

    /// Logits `[batch, num_labels]` in evaluation mode (no dropout).
    fn predict(&self, batch: &Batch) -> Result<HostTensor>;

    /// The encoder's last hidden states `[batch, seq, hidden]`, for conformance checks.
    fn hidden_states(&self, _batch: &Batch) -> Result<HostTensor> {
        Err(Error::Unsupported {
            backend: self.backend(),
            feature: "hidden states",
        })
    }

    /// Folds `scale * B A` into the base weights of every LoRA layer.
    fn merge(&mut self) -> Result<()>;

    /// Restores the base weights exactly.
    fn unmerge(&mut self) -> Result<()>;

    /// Writes the whole model (base weights included) as a base that a later
    /// run can load, when the model trains its base (pretraining). Returns
    /// whether anything was written; an adapter-only model writes nothing.
    fn save_base(&self, _dir: &std::path::Path) -> Result<bool> {
        Ok(false)
    }

    /// Optional capability: bf16 compute.
    fn enable_bf16(&mut self) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend(),
            feature: "bf16",
        })
    }
}
