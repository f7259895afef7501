//! What a checkpoint holds of a training run, as data, and the seam through
//! which the loop writes checkpoints and learns that it was asked to stop.
//!
//! The loop fills a [`TrainSnapshot`] at a step boundary (after the step's
//! events and any evaluation it triggered); everything it needs to continue
//! from there bit for bit is in it. Where and how a snapshot is stored (the
//! folder, its manifest and checksums) belongs to the [`Checkpoints`]
//! implementation, so that this crate stays free of file formats.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::adapter::AdapterModel;
use crate::error::Result;
use crate::loop_state::LoopState;
use crate::optim::OptimizerState;
use crate::stage::EvalReport;

/// `[train] checkpoint-every-steps` and `keep-last`: read by the core from the
/// trainer's table (every trainer has them), skipped by the trainer's own schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many optimizer steps (0: only when interrupted).
    #[serde(default)]
    pub checkpoint_every_steps: usize,
    /// Checkpoints kept; older ones are deleted once a newer one is complete.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
}

/// The keys of [`CheckpointConfig`] in `[train]`.
pub const TRAIN_KEYS: [&str; 2] = ["checkpoint-every-steps", "keep-last"];

fn default_keep_last() -> usize {
    2
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_steps: 0,
            keep_last: default_keep_last(),
        }
    }
}

/// One callback's state, by its name (several callbacks may share a name: they
/// are matched in order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackState {
    pub name: String,
    pub state: serde_json::Value,
}

/// The loop's own state at a step boundary, besides the parameters (which the
/// model holds and a checkpoint stores as the adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopSnapshot {
    /// Epoch, position in the epoch, steps, learning-rate scale, RNG counters.
    pub state: LoopState,
    /// Seconds of training before this point (elapsed times continue from it).
    pub elapsed_s: f64,
    /// The mean loss of every step so far.
    pub losses: Vec<f64>,
    /// Every evaluation so far, with its step.
    pub evals: Vec<(usize, EvalReport)>,
    /// States of the callbacks that have one (`Callback::state` not null).
    pub callbacks: Vec<CallbackState>,
}

/// Everything a run continues from: the loop's state, the optimizer's, and the
/// parameters a rollback would return to.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSnapshot {
    pub loop_state: LoopSnapshot,
    pub optimizer: OptimizerState,
    /// The parameters (flat) before the last update that gave a finite loss.
    pub good_params: Vec<f32>,
    /// The optimizer state then, kept only when a callback can roll back.
    pub good_optimizer: Option<OptimizerState>,
    /// On several processes, with a strategy whose processes hold state of
    /// their own (`Strategy::per_process_state`): every process's state, in
    /// rank order, as the encoded file the checkpoint stores for it. Empty
    /// otherwise (one process, or state that is rank 0's on every process).
    pub processes: Vec<Vec<u8>>,
}

/// A snapshot read back from a checkpoint, with the parameters to load into the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeFrom {
    pub snapshot: TrainSnapshot,
    /// The trainable parameters, one vector per `AdapterModel::params` entry.
    pub params: Vec<Vec<f32>>,
    /// Where it came from, for messages.
    pub path: PathBuf,
}

/// Where the loop writes checkpoints, and how it learns that it should stop.
pub trait Checkpoints: Send {
    /// Whether a checkpoint is due after optimizer step `step` (1-based).
    fn due(&self, step: usize) -> bool;

    /// Whether the process was asked to stop (SIGINT, SIGTERM): the loop
    /// finishes the step, writes a checkpoint and returns [`crate::Error::Interrupted`].
    fn interrupted(&self) -> Option<String> {
        None
    }

    /// Writes a checkpoint of the run at this point (the model holds the
    /// current parameters) and returns its folder.
    fn save(&mut self, model: &dyn AdapterModel, snapshot: &TrainSnapshot) -> Result<PathBuf>;
}
