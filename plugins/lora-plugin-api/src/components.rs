//! What a plugin may add: image augmentations, validation rules, callbacks.

use crate::value::{ConfigView, Params};

/// One image, channels first, pixels in [0, 1] (before normalization).
pub struct Image<'a> {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `channels * height * width` values, row-major per channel.
    pub pixels: &'a mut [f32],
}

/// A per-sample image augmentation. `seed` is the sample's own seed: the same
/// seed must give the same result, whatever thread runs it.
pub trait Augmentation: Send + Sync {
    fn apply(&self, image: &mut Image<'_>, seed: u64);
}

pub type AugmentationFactory = Box<dyn Fn(&Params) -> Result<Box<dyn Augmentation>, String> + Send + Sync>;

/// An augmentation by name; `build` reads its parameters (probability, ...) from its TOML table.
pub struct AugmentationEntry {
    pub name: String,
    pub summary: String,
    pub build: AugmentationFactory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// What a rule found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub message: String,
    /// Where, as the path of a value: dotted keys (`train.optimizer.lr`); an element of
    /// an array of tables by its 0-based index, `data.augment.1` or `data.augment[1]`
    /// (the second `[[data.augment]]`), and a key inside it, `data.augment.1.p` or
    /// `data.augment[1].p`. The host shows the value's file:line:column; a path that
    /// names nothing written is reported without a location and with a warning
    /// (`plugin::finding-path`).
    pub path: Option<String>,
    pub help: Option<String>,
}

pub trait Rule: Send + Sync {
    fn check(&self, config: &ConfigView<'_>) -> Vec<Finding>;
}

/// A validation rule, documented like the built-in ones (`lora rules`).
pub struct RuleEntry {
    /// Stable id, `plugin-name::what`.
    pub id: String,
    pub severity: Severity,
    pub summary: String,
    pub doc: String,
    pub rule: Box<dyn Rule>,
}

/// What happened. The figures each kind carries are listed on [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Training is about to begin (after [`Callback::on_start`]).
    Start,
    /// An optimizer step was taken.
    Step,
    /// The validation split was evaluated (every `[eval] every-steps` and once at the end).
    Eval,
    /// An epoch ended.
    EpochEnd,
    /// Training ended (after the final evaluation).
    End,
}

/// A training event: the step, the epoch and the figures of that moment.
///
/// Numbering: `step` counts optimizer steps from 1 (the first step taken is
/// step 1; `Start` has step 0); `epoch` counts epochs from 0 (the first
/// epoch is epoch 0), exactly as the `step` and `epoch` fields of the run's
/// `metrics.jsonl`.
///
/// | kind | `step` | `epoch` | `loss` | `metrics` |
/// |---|---|---|---|---|
/// | `Start` | 0 | 0 | `None` | `total_steps`, `epochs`, `train_samples`, `trainable_parameters` |
/// | `Step` | the step just taken | its epoch | the step's mean training loss | `lr`, `grad_norm`, `update_ratio`, `samples_per_s`, `elapsed_s` |
/// | `Eval` | the last step taken | the epoch of that step | the validation loss | the evaluator's metrics by name (`accuracy`, `macro_f1`, ... as in `[eval] metrics`) |
/// | `EpochEnd` | the last step taken | the epoch that ended | `None` | none |
/// | `End` | the last step taken | the epoch of that step | `None` | `elapsed_s` |
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub step: usize,
    pub epoch: usize,
    /// Training loss (Step) or evaluation loss (Eval).
    pub loss: Option<f64>,
    /// Named figures, per kind as in the table above.
    pub metrics: Vec<(String, f64)>,
}

impl Event {
    /// A named figure of [`Event::metrics`].
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// The run a callback is part of, given to [`Callback::on_start`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunInfo {
    /// `[run] name`.
    pub name: String,
    /// Where the run writes its outputs (`[run] output-dir`, or `lora run --output-dir`),
    /// already created. A callback that writes files should write them here, so that
    /// they move with the run. Empty when the host runs the callback outside a run.
    pub output_dir: std::path::PathBuf,
}

/// What the training loop should do after a callback saw an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Continue,
    /// Stop training (the adapter of the last good state is still saved), with the reason.
    Stop(String),
}

pub trait Callback: Send {
    /// Called once before the `Start` event, with the run's name and output folder.
    /// An `Err` ends the run with that message (for example: a file cannot be created).
    fn on_start(&mut self, run: &RunInfo) -> Result<(), String> {
        let _ = run;
        Ok(())
    }

    /// Called on every event; `Stop` is honoured after `Step`, `Eval` and `EpochEnd`
    /// (the answers to `Start` and `End` cannot change the run).
    fn on_event(&mut self, event: &Event) -> Action;
}

pub type CallbackFactory = Box<dyn Fn(&Params) -> Result<Box<dyn Callback>, String> + Send + Sync>;

pub struct CallbackEntry {
    pub name: String,
    pub summary: String,
    pub build: CallbackFactory,
}

/// Given to the plugin's registration function.
pub trait Registrar {
    fn augmentation(&mut self, entry: AugmentationEntry);
    fn rule(&mut self, entry: RuleEntry);
    fn callback(&mut self, entry: CallbackEntry);
}
