//! Events of a training run, in the manner of `burn-train`: the loop emits
//! them; progress bars, metric sinks and anomaly callbacks consume them, and
//! callbacks may answer with a [`Control`] that stops the run or rolls it back.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::stage::EvalReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Seconds of this step spent waiting for batches (tokenising, padding).
    pub data_s: f64,
    /// Seconds in the backend's forward and backward passes.
    pub forward_backward_s: f64,
    /// Seconds in clipping, the optimizer update and writing the parameters back.
    pub optimizer_s: f64,
    /// Global `||update|| / ||weights||` of this step's update.
    pub update_ratio: f64,
    /// Per-LoRA-module figures; empty on steps where they are not computed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleStats>,
    /// Each process's figures in a run on several; empty in one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<RankFigures>,
}

/// One process's part of a distributed step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RankFigures {
    pub rank: usize,
    /// Seconds of the step on this process.
    pub step_s: f64,
    /// Bytes this process sent in the step's collectives (ring-algorithm figures).
    pub bytes_sent: f64,
    /// Seconds of the step spent in collectives (waiting for the others included).
    pub comm_s: f64,
}

/// Figures of one LoRA module (one adapted linear layer) after a step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleStats {
    /// The module's PEFT key without prefix and suffix, e.g. `bert.encoder.layer.0.attention.self.query`.
    pub module: String,
    pub a_weight_norm: f64,
    pub b_weight_norm: f64,
    pub a_grad_norm: f64,
    pub b_grad_norm: f64,
    /// `||update of A and B|| / ||A and B||` for this step.
    pub update_ratio: f64,
    /// Entropy-based effective rank (Roy and Vetterli) of `B A`: 0 while `B` is zero.
    pub effective_rank: f64,
}

/// What a callback asks of the loop after an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Control {
    Continue,
    /// Something worth a line in the log and on the dashboard; training goes on.
    Warn {
        message: String,
    },
    /// Finish gracefully: final evaluation, adapter written.
    Stop {
        reason: String,
    },
    /// Restore the last state that gave a finite loss, scale the learning rate, go on.
    Rollback {
        lr_factor: f64,
        reason: String,
    },
    /// End the run with an error; nothing is saved.
    Fail {
        reason: String,
    },
}

impl Control {
    /// Precedence when several callbacks answer the same event: the gravest wins.
    pub fn severity(&self) -> u8 {
        match self {
            Control::Continue => 0,
            Control::Warn { .. } => 1,
            Control::Stop { .. } => 2,
            Control::Rollback { .. } => 3,
            Control::Fail { .. } => 4,
        }
    }
}

/// Which figure was not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFiniteKind {
    Loss,
    Gradients,
    Parameters,
}

/// Serialized as the lines of `metrics.jsonl`; read back when a resumed run
/// replays its log into the dashboard and the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        /// The epoch (0-based, like [`StepMetrics::epoch`]) the evaluation happened in.
        epoch: usize,
        report: EvalReport,
    },
    EpochEnd {
        epoch: usize,
        step: usize,
    },
    /// A loss, gradient or parameter was NaN or infinite; the step's update was not applied.
    /// Without a callback that answers `Rollback` or `Stop`, the run fails.
    NonFinite {
        /// The step that failed (1-based: the one that would have been taken).
        step: usize,
        epoch: usize,
        what: NonFiniteKind,
        elapsed_s: f64,
    },
    /// A callback or a check acted: logged, and shown on the dashboard.
    Intervention {
        step: usize,
        /// The callback or check, e.g. `early-stopping`, `input-checks`.
        source: String,
        /// `warn`, `stop`, `rollback` or `fail`.
        action: String,
        message: String,
        elapsed_s: f64,
    },
    End {
        step: usize,
        /// The epoch (0-based) of the last step taken.
        epoch: usize,
        elapsed_s: f64,
    },
}

pub trait Callback: Send {
    fn on_event(&mut self, event: &TrainEvent) -> Result<()>;

    /// Like [`Self::on_event`], but may steer the loop. Sinks keep the default.
    fn control(&mut self, event: &TrainEvent) -> Result<Control> {
        self.on_event(event)?;
        Ok(Control::Continue)
    }

    /// Shown as the `source` of an intervention.
    fn name(&self) -> &str {
        "callback"
    }

    /// Whether this callback may answer [`Control::Rollback`]: only then does
    /// the loop keep the optimizer state of the last good step.
    fn can_roll_back(&self) -> bool {
        false
    }

    /// What the callback has learnt so far (best metric, patience used, ...),
    /// as data; `Null` for a callback without state.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores a state from [`Self::state`].
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}
