//! The backend-adapter trait: the only way the core talks to a tensor backend.
//!
//! A backend builds a model with LoRA layers, runs a training step on a
//! host-side batch and hands back the loss and the gradients of the trainable
//! parameters. The optimizer, schedule, accumulation and clipping then run
//! once, in `lora-train`, on host vectors: trainable parameters are the LoRA
//! matrices and the task head, a few hundred thousand numbers, so the copy is
//! cheap and every backend gets the same update arithmetic.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::batch::{Batch, HostTensor};
use crate::error::{Error, Result};
use crate::task::Targets;

/// One trainable parameter, named with its key in PEFT's adapter file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// For example `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`.
    pub name: String,
    /// The shape in the adapter file (PEFT's): the ViT patch adapter is `[r, c, p, p]`.
    pub shape: Vec<usize>,
    /// The shape the model computes with: the same patch adapter is `[r, c*p*p]`.
    /// Optimizers and sharding see this one; the values are the same, in the same order.
    pub compute_shape: Vec<usize>,
    /// Weight decay applies (false for biases, as Hugging Face's trainer does).
    pub weight_decay: bool,
}

impl ParamInfo {
    /// A parameter whose file and compute shapes agree.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, weight_decay: bool) -> Self {
        Self {
            name: name.into(),
            compute_shape: shape.clone(),
            shape,
            weight_decay,
        }
    }

    /// The same parameter computed with another shape of as many values.
    pub fn with_compute_shape(mut self, compute_shape: Vec<usize>) -> Self {
        debug_assert_eq!(
            compute_shape.iter().product::<usize>(),
            self.shape.iter().product::<usize>()
        );
        self.compute_shape = compute_shape;
        self
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where each trainable parameter lives in one flat buffer: gradients,
/// parameters and optimizer moments of a step are each one `Vec<f32>` in this
/// layout, so that a strategy reduces or shards one buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    params: Vec<ParamInfo>,
    /// `offsets[i]..offsets[i + 1]` holds parameter `i`.
    offsets: Vec<usize>,
}

impl ParamLayout {
    pub fn new(params: &[ParamInfo]) -> Self {
        let mut offsets = Vec::with_capacity(params.len() + 1);
        offsets.push(0);
        for p in params {
            offsets.push(offsets.last().copied().unwrap_or(0) + p.numel());
        }
        Self {
            params: params.to_vec(),
            offsets,
        }
    }

    /// Values in the whole buffer.
    pub fn len(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// The range of parameter `i` in the flat buffer.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Each parameter with its range, in order.
    pub fn segments(&self) -> impl Iterator<Item = (&ParamInfo, Range<usize>)> + '_ {
        self.params.iter().enumerate().map(|(i, p)| (p, self.range(i)))
    }

    /// Per-parameter values joined into one buffer (checked against the layout).
    pub fn flatten(&self, values: &[Vec<f32>]) -> Result<Vec<f32>> {
        check_param_values(&self.params, values)?;
        Ok(values.concat())
    }

    /// One buffer cut back into per-parameter values.
    pub fn split(&self, flat: &[f32]) -> Vec<Vec<f32>> {
        debug_assert_eq!(flat.len(), self.len());
        (0..self.params.len()).map(|i| flat[self.range(i)].to_vec()).collect()
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
    /// Mean loss over the micro-batch's weight.
    pub loss: f32,
    /// What the mean is taken over: examples for classification, target tokens
    /// for a language model ([`Targets::weight`]). Accumulation weights by it.
    pub weight: f64,
    /// Gradients of the mean loss, one flat buffer in the [`ParamLayout`] of
    /// [`AdapterModel::params`].
    pub grads: Vec<f32>,
}

impl StepOutput {
    /// The gradients cut into one vector per parameter, in the order of `params`.
    pub fn split_grads(&self, params: &[ParamInfo]) -> Vec<Vec<f32>> {
        ParamLayout::new(params).split(&self.grads)
    }
}

/// What an evaluation step returns: sums that add up across batches (and
/// processes), never the logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalSums {
    /// Sum of the per-target losses.
    pub loss_sum: f64,
    /// Targets summed over: examples, or target tokens.
    pub weight: f64,
    /// The predicted class of each example, in batch order (classification);
    /// the evaluator turns them and the labels into a confusion matrix.
    pub predictions: Vec<u32>,
    /// Weight of the targets predicted right (causal LM: token accuracy's numerator).
    pub correct: f64,
}

/// A model that decodes one sequence incrementally, with a key/value cache (generation).
pub trait CausalDecoder {
    /// Tokens the model can attend over.
    fn context_length(&self) -> usize;
    /// Forgets the sequence decoded so far.
    fn reset(&mut self);
    /// Appends `ids` to the sequence; returns the next-token logits after the last of them.
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Runs the sequence `ids` (alone, uncached) and adds the Gram matrix of
    /// the inputs of each of its quantizable matrices to `stats` (calibration
    /// of an activation-aware quantization).
    fn input_statistics(&mut self, _ids: &[u32], _stats: &mut crate::calibration::InputStatistics) -> Result<()> {
        Err(Error::Other("this decoder does not collect input statistics".into()))
    }
}

/// The floating-point type of the frozen base weights and of the compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// How a model is built, beyond its architecture and adapter: given to
/// [`crate::stage::ModelStage::build`] and checked by validation rules. A
/// backend answers an option it does not implement with [`Error::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    pub dtype: DType,
    /// Recompute each layer's activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
}

impl ModelOptions {
    /// The error for the first option the backend cannot honour, given what it supports.
    pub fn check(&self, backend: &'static str, dtypes: &[DType], checkpointing: bool) -> Result<()> {
        if !dtypes.contains(&self.dtype) {
            return Err(Error::Unsupported {
                backend,
                feature: match self.dtype {
                    DType::F32 => "f32",
                    DType::Bf16 => "bf16 weights and compute",
                    DType::F16 => "f16 weights and compute",
                },
            });
        }
        if self.gradient_checkpointing && !checkpointing {
            return Err(Error::Unsupported {
                backend,
                feature: "gradient checkpointing",
            });
        }
        Ok(())
    }
}

/// Mean cross-entropy sums and arg-max predictions of host logits `[batch, classes]`
/// against class targets: the evaluation step of a classifier that returns logits.
pub fn classification_sums(logits: &HostTensor, targets: Targets<'_>) -> Result<EvalSums> {
    let Targets::Classes(labels) = targets else {
        return Err(Error::Other(
            "classification evaluation needs one class label per example".into(),
        ));
    };
    if logits.shape.len() != 2 || logits.shape[0] != labels.len() {
        return Err(Error::Other(format!(
            "model returned logits of shape {:?}, expected [{}, classes]",
            logits.shape,
            labels.len()
        )));
    }
    let classes = logits.shape[1];
    let mut sums = EvalSums::default();
    for (i, &label) in labels.iter().enumerate() {
        let row = logits.row(i);
        if label as usize >= classes {
            return Err(Error::Data(format!(
                "label {label} is out of range for {classes} classes"
            )));
        }
        sums.loss_sum += cross_entropy(row, label as usize);
        sums.weight += 1.0;
        sums.predictions.push(argmax(row) as u32);
    }
    Ok(sums)
}

/// `-log softmax(logits)[class]`, in f64.
pub fn cross_entropy(logits: &[f32], class: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    lse - logits[class] as f64
}

/// The index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0
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

    /// Logits `[batch, num_labels]` in evaluation mode (no dropout), for
    /// prediction of a classifier. A language model does not return its logits.
    fn predict(&self, batch: &Batch) -> Result<HostTensor>;

    /// Loss sums and predictions of one batch in evaluation mode (no dropout).
    /// The default composes it from [`Self::predict`], for classifiers whose
    /// logits are small; a model with a large output computes it in place.
    fn eval_step(&self, batch: &Batch) -> Result<EvalSums> {
        classification_sums(&self.predict(batch)?, batch.targets())
    }

    /// The encoder's last hidden states `[batch, seq, hidden]`, for conformance checks.
    fn hidden_states(&self, _batch: &Batch) -> Result<HostTensor> {
        Err(Error::Unsupported {
            backend: self.backend(),
            feature: "hidden states",
        })
    }

    /// The dimensions the memory planner needs (`crate::memory`); `None` when the
    /// model does not describe itself (the planner then cannot predict it).
    fn memory_shape(&self) -> Option<crate::memory::ModelShape> {
        None
    }

    /// Folds `scale * B A` into the base weights of every LoRA layer.
    fn merge(&mut self) -> Result<()>;

    /// Restores the base weights exactly.
    fn unmerge(&mut self) -> Result<()>;

    /// The model as an incremental decoder, when it generates text.
    fn decoder(&mut self) -> Option<&mut dyn CausalDecoder> {
        None
    }

    /// Writes the whole model (base weights included) as a base that a later
    /// run can load, when the model trains its base (pretraining). Returns
    /// whether anything was written; an adapter-only model writes nothing.
    fn save_base(&self, _dir: &std::path::Path) -> Result<bool> {
        Ok(false)
    }
}
