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

/// What a rule found; `path` (dotted, like `train.optimizer.lr`) says where.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub message: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Step,
    Eval,
    EpochEnd,
    End,
}

/// A training event: the step, the epoch and the figures of that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub step: usize,
    pub epoch: usize,
    /// Training loss (Step) or evaluation loss (Eval).
    pub loss: Option<f64>,
    /// Named figures: `lr`, `grad_norm` for steps; `accuracy`, `macro_f1`, ... for evaluations.
    pub metrics: Vec<(String, f64)>,
}

/// What the training loop should do after a callback saw an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Continue,
    /// Stop training (the adapter of the last good state is still saved), with the reason.
    Stop(String),
}

pub trait Callback: Send {
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
