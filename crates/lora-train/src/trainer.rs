//! `[train] type = "supervised"`: epochs or max steps, gradient accumulation,
//! clipping by global norm, a learning-rate schedule, periodic evaluation and
//! events. Runs on host vectors; the backend only computes losses and gradients.

use std::time::Instant;

use lora_core::adapter::AdapterModel;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::events::{Callback, Control, NonFiniteKind, StepMetrics, TrainEvent};
use lora_core::init::derive_seed;
use lora_core::inventory;
use lora_core::optim::{Optimizer, Scheduler};
use lora_core::registry::{self, OptimizerEntry, SchedulerEntry, TrainerEntry};
use lora_core::stage::{EvalStage, PreparedData, TrainStage, TrainSummary};
use lora_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::checks::{self, Severity};
use crate::stats::{self, ModuleIndex};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SupervisedConfig {
    /// Passes over the training split (default 1). `max-steps` stops earlier.
    pub epochs: Option<usize>,
    /// Optimizer steps; when set without `epochs`, epochs repeat until it is reached.
    pub max_steps: Option<usize>,
    /// Micro-batch size: examples per forward/backward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the effective batch is their product.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Compute per-module norms, update ratios and effective ranks every this many steps (0: never).
    #[serde(default = "one")]
    pub module_stats_every: usize,
    /// Check the split and this many first micro-batches for label imbalance,
    /// constant or non-finite inputs, bad labels and heavy truncation (0: no checks).
    #[serde(default = "default_check_batches")]
    pub check_batches: usize,
}

fn default_check_batches() -> usize {
    4
}

fn default_batch() -> usize {
    32
}
fn one() -> usize {
    1
}
fn default_clip() -> f64 {
    1.0
}

pub struct SupervisedTrainer {
    pub cfg: SupervisedConfig,
    pub optimizer: Box<dyn Optimizer>,
    pub scheduler: Box<dyn Scheduler>,
}

impl SupervisedTrainer {
    /// Optimizer steps in one epoch over `samples` examples.
    pub fn steps_per_epoch(&self, samples: usize) -> usize {
        samples
            .div_ceil(self.cfg.batch_size)
            .div_ceil(self.cfg.gradient_accumulation_steps)
    }

    /// Total optimizer steps of the run.
    pub fn total_steps(&self, samples: usize) -> usize {
        let per_epoch = self.steps_per_epoch(samples);
        match (self.cfg.epochs, self.cfg.max_steps) {
            (Some(e), Some(m)) => (e * per_epoch).min(m),
            (None, Some(m)) => m,
            (Some(e), None) => e * per_epoch,
            (None, None) => per_epoch,
        }
    }
}

/// Accumulated gradients of one optimizer step, weighted by micro-batch size so
/// that k micro-batches of b give the gradient of one batch of k*b.
struct Accumulator {
    grads: Vec<Vec<f32>>,
    loss_sum: f64,
    samples: usize,
    tokens: usize,
}

impl Accumulator {
    fn new(shapes: &[usize]) -> Self {
        Self {
            grads: shapes.iter().map(|&n| vec![0.0; n]).collect(),
            loss_sum: 0.0,
            samples: 0,
            tokens: 0,
        }
    }

    fn add(&mut self, grads: &[Vec<f32>], loss: f32, n: usize, tokens: usize) {
        let w = n as f32;
        for (acc, g) in self.grads.iter_mut().zip(grads) {
            for (a, g) in acc.iter_mut().zip(g) {
                *a += w * g;
            }
        }
        self.loss_sum += loss as f64 * n as f64;
        self.samples += n;
        self.tokens += tokens;
    }

    /// Mean gradients and mean loss over the step's samples.
    fn finish(mut self) -> (Vec<Vec<f32>>, f64, usize, usize) {
        let inv = 1.0 / self.samples.max(1) as f32;
        for g in self.grads.iter_mut().flatten() {
            *g *= inv;
        }
        (
            self.grads,
            self.loss_sum / self.samples.max(1) as f64,
            self.samples,
            self.tokens,
        )
    }
}

/// Scales gradients in place so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g *= coef as f32;
            }
        }
    }
    norm
}

/// Every callback sees the event; the gravest answer wins, with its callback's name.
fn dispatch(callbacks: &mut [Box<dyn Callback>], event: &TrainEvent) -> Result<(Control, String)> {
    let mut out = (Control::Continue, String::new());
    for c in callbacks.iter_mut() {
        let control = c.control(event)?;
        if control.severity() > out.0.severity() {
            out = (control, c.name().to_string());
        }
    }
    Ok(out)
}

/// Announces an event whose answers cannot steer the loop (start, end, interventions).
fn emit(callbacks: &mut [Box<dyn Callback>], event: &TrainEvent) -> Result<()> {
    callbacks.iter_mut().try_for_each(|c| c.on_event(event))
}

/// One pass of the evaluator over the validation split, announced to the callbacks.
fn evaluate(
    model: &dyn AdapterModel,
    data: &PreparedData,
    eval: &dyn EvalStage,
    callbacks: &mut [Box<dyn Callback>],
    step: usize,
    epoch: usize,
) -> Result<((usize, lora_core::stage::EvalReport), (Control, String))> {
    let report = eval.evaluate(model, data.validation.as_ref(), &data.label_names)?;
    let control = dispatch(
        callbacks,
        &TrainEvent::Eval {
            step,
            epoch,
            report: report.clone(),
        },
    )?;
    Ok(((step, report), control))
}

/// The last parameters (and optimizer state) that gave a finite loss: where a rollback returns.
struct GoodState {
    params: Vec<Vec<f32>>,
    optimizer: Option<Box<dyn Optimizer>>,
}

/// What the loop does after a callback answered.
enum Flow {
    Go,
    /// Finish gracefully (final evaluation, adapter written).
    Stop,
}

/// Everything the loop needs to act on a [`Control`].
struct Actor<'a> {
    start: Instant,
    lr_scale: f64,
    callbacks: &'a mut [Box<dyn Callback>],
}

impl Actor<'_> {
    fn announce(&mut self, step: usize, source: &str, action: &str, message: &str) -> Result<()> {
        emit(
            self.callbacks,
            &TrainEvent::Intervention {
                step,
                source: source.to_string(),
                action: action.to_string(),
                message: message.to_string(),
                elapsed_s: self.start.elapsed().as_secs_f64(),
            },
        )
    }

    /// Acts on a callback's answer. `restore` puts the last good state back.
    fn act(
        &mut self,
        step: usize,
        (control, source): (Control, String),
        restore: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Flow> {
        match control {
            Control::Continue => Ok(Flow::Go),
            Control::Warn { message } => {
                self.announce(step, &source, "warn", &message)?;
                Ok(Flow::Go)
            }
            Control::Stop { reason } => {
                self.announce(step, &source, "stop", &reason)?;
                Ok(Flow::Stop)
            }
            Control::Rollback { lr_factor, reason } => {
                restore()?;
                self.lr_scale *= lr_factor;
                self.announce(
                    step,
                    &source,
                    "rollback",
                    &format!("{reason} (learning-rate scale now {:.3e})", self.lr_scale),
                )?;
                Ok(Flow::Go)
            }
            Control::Fail { reason } => {
                self.announce(step, &source, "fail", &reason)?;
                Err(Error::Other(reason))
            }
        }
    }
}

fn all_finite(vs: &[Vec<f32>]) -> bool {
    vs.iter().flatten().all(|v| v.is_finite())
}

impl TrainStage for SupervisedTrainer {
    fn resolved(&self) -> serde_json::Value {
        let mut v = crate::with_type("supervised", &self.cfg);
        v["optimizer"] = self.optimizer.resolved();
        v["scheduler"] = self.scheduler.resolved();
        v
    }

    fn train(
        &mut self,
        model: &mut dyn AdapterModel,
        data: &PreparedData,
        eval: &dyn EvalStage,
        callbacks: &mut [Box<dyn Callback>],
        seed: u64,
    ) -> Result<TrainSummary> {
        let n = data.train.len();
        if n == 0 {
            return Err(Error::Data("the training split is empty".into()));
        }
        let total = self.total_steps(n);
        let per_epoch = self.steps_per_epoch(n);
        let epochs = total.div_ceil(per_epoch);
        let sizes: Vec<usize> = model.params().iter().map(|p| p.numel()).collect();
        let info = model.params().to_vec();
        let modules = ModuleIndex::new(&info);
        let num_labels = data.label_names.len();
        let mut params = model.read_params()?;
        emit(
            callbacks,
            &TrainEvent::Start {
                total_steps: total,
                epochs,
                train_samples: n,
                trainable_parameters: sizes.iter().sum(),
            },
        )?;

        let start = Instant::now();
        let mut actor = Actor {
            start,
            lr_scale: 1.0,
            callbacks,
        };
        // Early checks, part one: the split as a whole.
        if self.cfg.check_batches > 0 {
            for f in checks::check_split(&data.train.labels(), num_labels, data.train.truncated()) {
                actor.announce(0, "input-checks", "warn", &f.message)?;
            }
        }
        let mut good = GoodState {
            params: params.clone(),
            optimizer: self.optimizer.snapshot(),
        };
        let mut step = 0;
        let mut micro = 0u64;
        let mut losses = Vec::with_capacity(total);
        let mut evals = Vec::new();
        let mut epoch = 0;
        'epochs: while step < total {
            let order_seed = derive_seed(seed, "epoch-order", epoch as u64);
            let mut batches = data.train.batches(self.cfg.batch_size, Some(order_seed)).peekable();
            loop {
                let step_start = Instant::now();
                // The iterator makes a batch when it is peeked: that is data time too.
                if batches.peek().is_none() {
                    break;
                }
                let (mut data_s, mut fb_s) = (step_start.elapsed().as_secs_f64(), 0.0);
                let mut acc = Accumulator::new(&sizes);
                let mut bad = None;
                for _ in 0..self.cfg.gradient_accumulation_steps {
                    let t = Instant::now();
                    let Some(batch) = batches.next() else { break };
                    let batch = batch?;
                    data_s += t.elapsed().as_secs_f64();
                    // Early checks, part two: the first micro-batches themselves.
                    if (micro as usize) < self.cfg.check_batches {
                        for f in checks::check_batch(&batch, micro as usize, num_labels) {
                            match f.severity {
                                Severity::Warning => actor.announce(step + 1, "input-checks", "warn", &f.message)?,
                                Severity::Error => {
                                    actor.announce(step + 1, "input-checks", "fail", &f.message)?;
                                    return Err(Error::Data(f.message));
                                }
                            }
                        }
                    }
                    let t = Instant::now();
                    let out = model.train_step(&batch, derive_seed(seed, "dropout", micro))?;
                    fb_s += t.elapsed().as_secs_f64();
                    micro += 1;
                    if !out.loss.is_finite() {
                        bad = Some(NonFiniteKind::Loss);
                        break;
                    }
                    if !all_finite(&out.grads) {
                        bad = Some(NonFiniteKind::Gradients);
                        break;
                    }
                    acc.add(&out.grads, out.loss, batch.len(), batch.work_units());
                }
                let t_opt = Instant::now();
                let mut update = None;
                if bad.is_none() {
                    let (mut grads, loss, samples, tokens) = acc.finish();
                    let grad_norm = clip_global_norm(&mut grads, self.cfg.max_grad_norm);
                    // These parameters just gave a finite loss: the state to return to.
                    good.params.clone_from(&params);
                    good.optimizer = self.optimizer.snapshot();
                    let lr = self.optimizer.base_lr() * self.scheduler.factor(step, total) * actor.lr_scale;
                    self.optimizer.step(&mut params, &grads, &info, lr);
                    if all_finite(&params) {
                        update = Some((grads, loss, samples, tokens, grad_norm, lr));
                    } else {
                        bad = Some(NonFiniteKind::Parameters);
                    }
                }
                let optimizer = &mut self.optimizer;
                let mut restore = || -> Result<()> {
                    params.clone_from(&good.params);
                    if let Some(o) = good.optimizer.as_ref().and_then(|o| o.snapshot()) {
                        *optimizer = o;
                    }
                    model.write_params(&params)
                };
                if let Some(what) = bad {
                    let event = TrainEvent::NonFinite {
                        step: step + 1,
                        epoch,
                        what,
                        elapsed_s: start.elapsed().as_secs_f64(),
                    };
                    let answer = dispatch(actor.callbacks, &event)?;
                    if answer.0.severity() < (Control::Stop { reason: String::new() }).severity() {
                        restore()?;
                        return Err(Error::Other(format!(
                            "{} became NaN or infinite at step {}; add [callbacks.nan-rollback] to roll back and go on",
                            match what {
                                NonFiniteKind::Loss => "the loss",
                                NonFiniteKind::Gradients => "a gradient",
                                NonFiniteKind::Parameters => "a parameter",
                            },
                            step + 1
                        )));
                    }
                    if let Flow::Stop = actor.act(step + 1, answer, &mut restore)? {
                        // Never finish on a broken state.
                        restore()?;
                        break 'epochs;
                    }
                    continue;
                }
                let (grads, loss, samples, tokens, grad_norm, lr) = update.expect("set when nothing was bad");
                model.write_params(&params)?;
                let optimizer_s = t_opt.elapsed().as_secs_f64();
                step += 1;
                losses.push(loss);
                let update_ratio = stats::global_update_ratio(&good.params, &params);
                let module_stats = if self.cfg.module_stats_every > 0 && step % self.cfg.module_stats_every == 0 {
                    modules.stats(&info, &good.params, &params, &grads)
                } else {
                    Vec::new()
                };
                let dt = step_start.elapsed().as_secs_f64().max(1e-9);
                let answer = dispatch(
                    actor.callbacks,
                    &TrainEvent::Step(StepMetrics {
                        step,
                        total_steps: total,
                        epoch,
                        loss,
                        lr,
                        grad_norm,
                        samples,
                        tokens,
                        elapsed_s: start.elapsed().as_secs_f64(),
                        samples_per_s: samples as f64 / dt,
                        tokens_per_s: tokens as f64 / dt,
                        data_s,
                        forward_backward_s: fb_s,
                        optimizer_s,
                        update_ratio,
                        modules: module_stats,
                    }),
                )?;
                let optimizer = &mut self.optimizer;
                let mut restore = || -> Result<()> {
                    params.clone_from(&good.params);
                    if let Some(o) = good.optimizer.as_ref().and_then(|o| o.snapshot()) {
                        *optimizer = o;
                    }
                    model.write_params(&params)
                };
                if let Flow::Stop = actor.act(step, answer, &mut restore)? {
                    break 'epochs;
                }
                if eval.interval() > 0 && step % eval.interval() == 0 && step < total {
                    let (done, answer) = evaluate(model, data, eval, actor.callbacks, step, epoch)?;
                    evals.push(done);
                    if let Flow::Stop = actor.act(step, answer, &mut || Ok(()))? {
                        break 'epochs;
                    }
                }
                if step >= total {
                    break 'epochs;
                }
            }
            let answer = dispatch(actor.callbacks, &TrainEvent::EpochEnd { epoch, step })?;
            epoch += 1;
            if let Flow::Stop = actor.act(step, answer, &mut || Ok(()))? {
                break;
            }
        }
        // The epoch of the last step taken: the loop may have moved past it.
        let last_epoch = if step == 0 { 0 } else { (step - 1) / per_epoch };
        let (done, _) = evaluate(model, data, eval, actor.callbacks, step, last_epoch)?;
        evals.push(done);
        let elapsed_s = start.elapsed().as_secs_f64();
        emit(
            actor.callbacks,
            &TrainEvent::End {
                step,
                epoch: last_epoch,
                elapsed_s,
            },
        )?;
        Ok(TrainSummary {
            steps: step,
            epochs_completed: epoch,
            losses,
            elapsed_s,
            evals,
        })
    }
}

fn build(c: &Component) -> std::result::Result<Box<dyn TrainStage>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let cfg = c
        .deserialize::<SupervisedConfig>()
        .map_err(|e| diags.0.extend(e.0))
        .ok();
    let optimizer = match c.sub_component("optimizer", None) {
        Ok(Some(o)) => registry::build::<OptimizerEntry>(&o)
            .map_err(|e| diags.0.extend(e.0))
            .ok(),
        Ok(None) => {
            diags.push(
                Diagnostic::error("train::missing-optimizer", "[train] needs a [train.optimizer] table")
                    .at(Some(c.location()))
                    .help("for example: [train.optimizer] type = \"adamw\", lr = 5e-4"),
            );
            None
        }
        Err(e) => {
            diags.0.extend(e.0);
            None
        }
    };
    let scheduler = match c.sub_component("scheduler", Some("constant")) {
        Ok(Some(s)) => registry::build::<SchedulerEntry>(&s)
            .map_err(|e| diags.0.extend(e.0))
            .ok(),
        Ok(None) => Some(Box::new(crate::schedule::WarmupSchedule {
            shape: crate::schedule::Shape::Constant,
            cfg: Default::default(),
        }) as Box<dyn Scheduler>),
        Err(e) => {
            diags.0.extend(e.0);
            None
        }
    };
    if let Some(cfg) = &cfg {
        let checks: [(&str, usize); 2] = [
            ("batch-size", cfg.batch_size),
            ("gradient-accumulation-steps", cfg.gradient_accumulation_steps),
        ];
        for (key, value) in checks {
            if value == 0 {
                diags.push(
                    Diagnostic::error(
                        "train::zero",
                        format!("{key} ({value}) must be at least 1. Valid range: 1 <= {key}"),
                    )
                    .at(c.value_location(key)),
                );
            }
        }
        for (key, value) in [("epochs", cfg.epochs), ("max-steps", cfg.max_steps)] {
            if value == Some(0) {
                diags.push(
                    Diagnostic::error(
                        "train::zero",
                        format!("{key} (0) must be at least 1. Valid range: 1 <= {key}"),
                    )
                    .at(c.value_location(key)),
                );
            }
        }
        if !(cfg.max_grad_norm >= 0.0 && cfg.max_grad_norm.is_finite()) {
            diags.push(
                Diagnostic::error(
                    "train::invalid-max-grad-norm",
                    format!(
                        "max-grad-norm ({}) must be finite and >= 0 (0 disables clipping)",
                        cfg.max_grad_norm
                    ),
                )
                .at(c.value_location("max-grad-norm")),
            );
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Box::new(SupervisedTrainer {
        cfg: cfg.expect("no errors"),
        optimizer: optimizer.expect("no errors"),
        scheduler: scheduler.expect("no errors"),
    }))
}

inventory::submit! {
    TrainerEntry { name: "supervised", summary: "supervised fine-tuning: epochs or max steps, accumulation, clipping, schedule", build }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![vec![3.0, 0.0], vec![4.0]];
        let norm = clip_global_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((g[0][0] - 0.6).abs() < 1e-5 && (g[1][0] - 0.8).abs() < 1e-5);
        let mut small = vec![vec![0.3, 0.4]];
        clip_global_norm(&mut small, 1.0);
        assert_eq!(small[0], vec![0.3, 0.4]);
    }

    #[test]
    fn accumulation_weights_micro_batches_by_size() {
        // Mean gradients 1.0 over 3 samples and 4.0 over 1 sample: 7 / 4 overall.
        let mut acc = Accumulator::new(&[1]);
        acc.add(&[vec![1.0]], 2.0, 3, 0);
        acc.add(&[vec![4.0]], 6.0, 1, 0);
        let (g, loss, samples, _) = acc.finish();
        assert_eq!(samples, 4);
        assert!((g[0][0] - 1.75).abs() < 1e-6);
        assert!((loss - 3.0).abs() < 1e-9);
    }
}
