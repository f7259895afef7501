//! The memory planner on a built pipeline: the prediction of `lora plan`, the
//! micro-batch of `batch-size = "auto"` (the largest that fits the budget, or
//! the fastest per example in throughput mode) and the accumulation that keeps
//! the effective batch. The arithmetic is `lora_core::memory`'s.

use std::time::Instant;

use lora_core::memory::{self, AutoBatch, ModelShape, Prediction, StepShape};
use lora_core::stage::{Dataset, PreparedData};
use lora_core::{AdapterModel, Batch, Error, Result};
use serde::Serialize;

use crate::pipeline::Pipeline;

/// What the planner knows of a built pipeline.
pub struct Planner {
    pub backend: String,
    pub shape: ModelShape,
    /// Tokens of the longest training example, and of the longest validation one.
    pub train_tokens: usize,
    pub eval_tokens: usize,
    pub eval_batch: usize,
    pub options: lora_core::ModelOptions,
    /// Host buffers of the optimizer per parameter (AdamW 2, Lion 1, ...).
    pub optimizer_buffers: usize,
    pub available: Option<u64>,
}

/// A candidate micro-batch with its prediction (and its measured time in throughput mode).
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub micro_batch: usize,
    pub accumulation: usize,
    pub predicted: Prediction,
    pub fits: bool,
    pub seconds_per_example: Option<f64>,
}

/// The planner's answer for `batch-size = "auto"`.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub effective: usize,
    pub budget_bytes: u64,
    pub throughput: bool,
    pub candidates: Vec<Candidate>,
    pub micro_batch: usize,
    pub accumulation: usize,
}

/// Tokens of the longest example, bytes of the examples in memory, and whether they are images.
fn scan(data: &dyn Dataset) -> Result<(usize, u64, bool)> {
    let (mut longest, mut bytes) = (0, 0u64);
    let mut images = false;
    for batch in data.batches(256, None) {
        match batch? {
            Batch::Text(t) => {
                longest = longest.max(t.seq_len);
                // Ids and mask of each example at about its own length.
                bytes += 8 * t.attention_mask.iter().filter(|&&m| m != 0).count() as u64;
            }
            Batch::Image(i) => {
                images = true;
                bytes += 4 * i.pixels.len() as u64;
            }
            Batch::Tokens(t) => {
                longest = longest.max(t.seq_len);
                // Ids, targets and weights of each token.
                bytes += 12 * t.attention_mask.iter().filter(|&&m| m != 0).count() as u64;
            }
            _ => {}
        }
    }
    Ok((longest, bytes, images))
}

/// Optimizer buffers per parameter, by `type`.
fn optimizer_buffers(pipeline: &Pipeline) -> usize {
    let resolved = pipeline.train.resolved();
    match resolved["optimizer"]["type"].as_str() {
        Some("sgd") => 1,
        Some("lion") => 1,
        // Factored second moments are a few rows and columns; the first moment is optional.
        Some("adafactor") => usize::from(resolved["optimizer"]["beta1"].is_number()),
        _ => 2,
    }
}

impl Planner {
    /// `available`: the machine's available memory, for a budget given as a share.
    pub fn new(
        pipeline: &Pipeline,
        model: &dyn AdapterModel,
        data: &PreparedData,
        available: Option<u64>,
    ) -> Result<Self> {
        let mut shape = model.memory_shape().ok_or_else(|| Error::Unsupported {
            backend: model.backend(),
            feature: "memory planning of this model",
        })?;
        let (train_longest, train_bytes, images) = scan(data.train.as_ref())?;
        let (eval_longest, eval_bytes, _) = scan(data.validation.as_ref())?;
        shape.data_bytes = train_bytes + eval_bytes + u64::from(images) * memory::IMAGE_PIPELINE_BYTES;
        let (train_tokens, eval_tokens) = match shape.tokens {
            Some(t) => (t, t),
            None => (train_longest.max(1), eval_longest.max(1)),
        };
        let eval_batch = pipeline.eval.resolved()["batch-size"].as_u64().unwrap_or(64) as usize;
        Ok(Self {
            backend: pipeline.config.run.backend.clone(),
            shape,
            train_tokens,
            eval_tokens,
            eval_batch,
            options: pipeline.model_options(),
            optimizer_buffers: optimizer_buffers(pipeline),
            available,
        })
    }

    /// The predicted peak of the run at micro-batch `micro`.
    pub fn predict(&self, micro: usize) -> Prediction {
        memory::predict(
            &memory::profile(&self.backend),
            &self.shape,
            StepShape {
                batch: micro,
                tokens: self.train_tokens,
            },
            (self.eval_batch > 0).then_some(StepShape {
                batch: self.eval_batch,
                tokens: self.eval_tokens,
            }),
            self.options,
            self.optimizer_buffers,
        )
    }

    /// Candidates for `auto`: every divisor of the effective batch, largest first.
    pub fn candidates(&self, auto: &AutoBatch, budget: u64) -> Vec<Candidate> {
        (1..=auto.effective.max(1))
            .rev()
            .filter(|b| auto.effective.is_multiple_of(*b))
            .map(|b| {
                let predicted = self.predict(b);
                Candidate {
                    micro_batch: b,
                    accumulation: auto.effective / b,
                    fits: predicted.total <= budget as f64,
                    predicted,
                    seconds_per_example: None,
                }
            })
            .collect()
    }

    /// The micro-batch for `auto`: the largest that fits, or in throughput mode
    /// the fastest per example of the (up to three) largest that fit, each timed
    /// on two micro-steps after one warm-up, on the first training examples.
    pub fn choose(&self, auto: &AutoBatch, model: &mut dyn AdapterModel, data: &PreparedData) -> Result<Choice> {
        let budget = auto.budget.bytes(self.available).ok_or_else(|| {
            Error::Other("the memory budget is a share of the available memory, which this machine does not report; give memory-budget in bytes (\"4GiB\")".into())
        })?;
        let mut candidates = self.candidates(auto, budget);
        let Some(largest) = candidates.iter().position(|c| c.fits) else {
            let one = self.predict(1);
            return Err(Error::Other(format!(
                "not even a micro-batch of 1 fits the memory budget of {:.2} GiB (predicted {:.2} GiB)",
                gib(budget as f64),
                gib(one.total)
            )));
        };
        let mut best = largest;
        if auto.throughput {
            let mut fastest = f64::INFINITY;
            let fitting: Vec<usize> = (largest..candidates.len())
                .filter(|&i| candidates[i].fits)
                .take(3)
                .collect();
            for i in fitting {
                let b = candidates[i].micro_batch;
                let batches: Vec<Batch> = data.train.batches(b, None).take(3).collect::<Result<_>>()?;
                let mut elapsed = 0.0;
                let mut examples = 0;
                for (k, batch) in batches.iter().enumerate() {
                    let t = Instant::now();
                    model.train_step(batch, k as u64)?;
                    if k > 0 || batches.len() == 1 {
                        elapsed += t.elapsed().as_secs_f64();
                        examples += batch.len();
                    }
                }
                let per = elapsed / examples.max(1) as f64;
                candidates[i].seconds_per_example = Some(per);
                if per < fastest {
                    (fastest, best) = (per, i);
                }
            }
        }
        Ok(Choice {
            effective: auto.effective,
            budget_bytes: budget,
            throughput: auto.throughput,
            micro_batch: candidates[best].micro_batch,
            accumulation: candidates[best].accumulation,
            candidates,
        })
    }
}

pub fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

pub fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// One line of a prediction, for `lora plan` and the run's log.
pub fn describe(p: &Prediction) -> String {
    format!(
        "{:.0} MiB (fixed {:.0}, data {:.0}, weights {:.0}, parameters and optimizer {:.1}, activations {:.0})",
        mib(p.total),
        mib(p.fixed),
        mib(p.data),
        mib(p.weights),
        mib(p.training_state),
        mib(p.activations)
    )
}

/// Chooses the micro-batch of `batch-size = "auto"` and sets it on the trainer;
/// `None` for a fixed batch.
pub fn resolve_auto(
    pipeline: &mut Pipeline,
    model: &mut dyn AdapterModel,
    data: &PreparedData,
) -> Result<Option<Choice>> {
    let Some(auto) = pipeline.train.auto_batch() else {
        return Ok(None);
    };
    let available = lora_validate::machine::facts().available_memory_bytes;
    let planner = Planner::new(pipeline, model, data, available)?;
    let choice = planner.choose(&auto, model, data)?;
    pipeline.train.set_batch(choice.micro_batch, choice.accumulation)?;
    Ok(Some(choice))
}
