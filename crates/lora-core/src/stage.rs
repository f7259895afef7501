//! The four stage traits: data -> model -> train -> eval.
//!
//! Each is chosen by the `type` key of its TOML table and built from a
//! registry entry. Stage boundaries are trait objects so that everything
//! around a backend compiles once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::adapter::{AdapterModel, ModelOptions};
use crate::batch::Batch;
use crate::checkpoint::{Checkpoints, ResumeFrom};
use crate::error::Result;
use crate::events::Callback;
use crate::lora::LoraSpec;
use crate::strategy::Strategy;
use crate::task::Task;

/// Turns `asset:NAME/path` references into local paths, fetching when missing.
pub trait AssetResolver: Send + Sync {
    fn resolve(&self, path: &str) -> Result<PathBuf>;
}

/// Plain paths only; an `asset:` reference is an error. For tests and tools without a cache.
pub struct NoAssets;

impl AssetResolver for NoAssets {
    fn resolve(&self, path: &str) -> Result<PathBuf> {
        if path.starts_with("asset:") {
            return Err(crate::Error::Other(format!(
                "`{path}` names an asset, but no asset cache is configured"
            )));
        }
        Ok(PathBuf::from(path))
    }
}

/// What every stage may read while it is built or run.
pub struct StageContext<'a> {
    pub seed: u64,
    pub assets: &'a dyn AssetResolver,
    /// The model's tokenizer file, when the model has one.
    pub tokenizer: Option<PathBuf>,
}

/// A split of examples that yields host-side batches.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class index of every example, in storage order.
    fn labels(&self) -> Vec<u32>;

    /// Examples cut to the maximum length, when the data stage counts them.
    fn truncated(&self) -> Option<usize> {
        None
    }

    /// Batches of one pass. With `order_seed`, the order is a seeded shuffle
    /// (a new seed each epoch reshuffles); without, storage order.
    fn batches(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_>;

    /// The same pass from batch `first` on, exactly as [`Self::batches`] yields
    /// it there (same order, same augmentation streams): where a resumed run
    /// picks up an epoch. The default skips the first batches, building them;
    /// a dataset that can start anywhere overrides it.
    fn batches_from(
        &self,
        batch_size: usize,
        order_seed: Option<u64>,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
        Box::new(self.batches(batch_size, order_seed).skip(first))
    }

    /// Feeds the examples' contents (inputs and labels, in storage order) to
    /// `feed`, for the data fingerprint that a checkpoint records. Returns
    /// false when the dataset does not know its contents; the labels then
    /// stand for them.
    fn fingerprint(&self, _feed: &mut dyn FnMut(&[u8])) -> bool {
        false
    }
}

/// Encodes raw inputs the way the data stage does, for `lora predict`.
pub trait InputEncoder: Send + Sync {
    /// What an input is, for messages and output: `"text"` or `"image"`.
    fn input_kind(&self) -> &'static str;
    /// Texts for text data; paths of image files (PNG, JPEG) for image data.
    fn encode_inputs(&self, inputs: &[String]) -> Result<Batch>;
}

pub struct PreparedData {
    /// What the examples train: for labelled data, classification over their class names.
    pub task: Task,
    pub train: Box<dyn Dataset>,
    pub validation: Box<dyn Dataset>,
    pub encoder: Box<dyn InputEncoder>,
}

impl PreparedData {
    /// Class names in index order (empty for a task without classes).
    pub fn label_names(&self) -> &[String] {
        self.task.labels()
    }
}

pub trait DataStage: Send {
    /// Reads, splits, tokenises and batches the data.
    fn prepare(&self, ctx: &StageContext) -> Result<PreparedData>;

    /// The encoder alone, without reading the data (for prediction).
    fn encoder(&self, ctx: &StageContext) -> Result<Box<dyn InputEncoder>>;

    /// Facts for the validation rules: rows, labels, token lengths of a sample.
    /// Cheaper than [`Self::prepare`]: nothing is tokenized beyond the sample.
    fn facts(&self, _ctx: &StageContext) -> Result<Option<crate::rules::DataFacts>> {
        Ok(None)
    }

    /// The component's configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

pub trait ModelStage: Send {
    /// The tokenizer that belongs to this model, if any.
    fn tokenizer(&self, ctx: &StageContext) -> Result<Option<PathBuf>>;

    /// `base_model_name_or_path` for PEFT's adapter config.
    fn base_model_name(&self, ctx: &StageContext) -> Result<String>;

    /// Facts for the validation rules, from the model's config and weight-file header only.
    fn facts(&self, _ctx: &StageContext) -> Result<Option<crate::rules::ModelFacts>> {
        Ok(None)
    }

    /// The files of the pretrained base (configuration, weights), hashed into a
    /// checkpoint's manifest; empty for a model built from scratch.
    fn base_files(&self, _ctx: &StageContext) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    /// The build options the configuration asks of the model (its `dtype`).
    fn options(&self) -> ModelOptions {
        ModelOptions::default()
    }

    /// Loads the pretrained base, inserts LoRA layers and the head of `task`.
    /// An option of `options` that the backend does not implement is an
    /// [`crate::Error::Unsupported`] error; a task the architecture cannot
    /// train is an error naming both.
    fn build(
        &self,
        ctx: &StageContext,
        lora: &LoraSpec,
        task: &Task,
        options: &ModelOptions,
    ) -> Result<Box<dyn AdapterModel>>;

    /// The component's configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Result of one evaluation pass.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub samples: usize,
    pub loss: f64,
    /// Named scalar metrics (`accuracy`, `macro_f1`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Structured extras such as the confusion matrix.
    pub details: serde_json::Value,
}

impl EvalReport {
    /// `loss` or a named metric; the error lists the names this report has.
    pub fn value(&self, name: &str) -> std::result::Result<f64, String> {
        if name == "loss" {
            return Ok(self.loss);
        }
        self.metrics.get(name).copied().ok_or_else(|| {
            let known: Vec<&str> = self.metrics.keys().map(String::as_str).collect();
            format!(
                "the evaluator reports no metric `{name}`; known: loss, {}",
                known.join(", ")
            )
        })
    }
}

pub trait EvalStage: Send {
    fn evaluate(&self, model: &dyn AdapterModel, data: &dyn Dataset, task: &Task) -> Result<EvalReport>;

    /// The evaluation of a run on several processes: each evaluates its part
    /// (`shard`) and `reduce` sums a vector over the processes, so that every
    /// process gets the report of the whole split. The default evaluates the
    /// whole split (`full`) on every process: right, but not shared out.
    fn evaluate_reduced(
        &self,
        model: &dyn AdapterModel,
        full: &dyn Dataset,
        _shard: &dyn Dataset,
        task: &Task,
        _reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    ) -> Result<EvalReport> {
        self.evaluate(model, full, task)
    }

    /// Evaluate every this many optimizer steps during training (0: only at the end).
    fn interval(&self) -> usize;

    /// The component's configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_completed: usize,
    pub losses: Vec<f64>,
    pub elapsed_s: f64,
    pub evals: Vec<(usize, EvalReport)>,
}

/// What a training run works with, besides the trainer's own configuration.
pub struct TrainContext<'a> {
    pub model: &'a mut dyn AdapterModel,
    pub data: &'a PreparedData,
    pub eval: &'a dyn EvalStage,
    pub callbacks: &'a mut [Box<dyn Callback>],
    /// How gradients are combined and updates applied (one process, or many).
    pub strategy: &'a mut dyn Strategy,
    pub seed: u64,
    /// Where checkpoints go and whether the run was asked to stop; `None`: no checkpoints.
    pub checkpoints: Option<&'a mut dyn Checkpoints>,
    /// A checkpoint to continue from instead of starting afresh.
    pub resume: Option<ResumeFrom>,
}

pub trait TrainStage: Send {
    fn train(&mut self, ctx: TrainContext<'_>) -> Result<TrainSummary>;

    /// Whether the configuration asks the model to recompute activations in the backward pass.
    fn gradient_checkpointing(&self) -> bool {
        false
    }

    /// The micro-batch and accumulation it trains with; `None` while the
    /// micro-batch is still to be chosen ([`Self::auto_batch`]).
    fn batch(&self) -> Option<(usize, usize)> {
        None
    }

    /// What the planner is to choose, for `batch-size = "auto"` (until [`Self::set_batch`]).
    fn auto_batch(&self) -> Option<crate::memory::AutoBatch> {
        None
    }

    /// The planner's choice: the micro-batch and the accumulation that keep the effective batch.
    fn set_batch(&mut self, _micro: usize, _accumulation: usize) -> Result<()> {
        Err(crate::Error::Other("this trainer has a fixed batch".into()))
    }

    /// The component's configuration with every default filled in, `type` included.
    fn resolved(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
