//! Events of a training run, in the manner of `burn-train`: the loop emits
//! them; progress bars, metric sinks and anomaly callbacks consume them.

use serde::Serialize;

use crate::error::Result;
use crate::stage::EvalReport;

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer step, 1-based.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean loss over the samples of this optimizer step.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub samples: usize,
    pub tokens: usize,
    /// Seconds since training started.
    pub elapsed_s: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TrainEvent {
    Start {
        total_steps: usize,
        epochs: usize,
        train_samples: usize,
        trainable_parameters: usize,
    },
    Step(StepMetrics),
    Eval {
        step: usize,
        report: EvalReport,
    },
    EpochEnd {
        epoch: usize,
        step: usize,
    },
    End {
        step: usize,
        elapsed_s: f64,
    },
}

pub trait Callback: Send {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()>;
}
