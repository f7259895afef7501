//! `[train] type = "supervised"`: epochs or max steps, gradient accumulation,
//! clipping by global norm, a learning-rate schedule, periodic evaluation and
//! events. Runs on host vectors; the backend only computes losses and gradients.

use std::time::Instant;

use lora_core::checkpoint::{CallbackState, LoopSnapshot, ResumeFrom, TrainSnapshot};
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::events::{Callback, Control, NonFiniteKind, StepMetrics, TrainEvent};
use lora_core::inventory;
use lora_core::optim::{Optimizer, OptimizerState, Scheduler};
use lora_core::registry::{self, OptimizerEntry, SchedulerEntry, TrainerEntry};
use lora_core::shard::Shard;
use lora_core::stage::{Dataset, EvalReport, TrainContext, TrainStage, TrainSummary};
use lora_core::strategy::StepSums;
use lora_core::{Batch, Error, LoopState, ParamLayout, Result, Task};
use serde::{Deserialize, Serialize};

use lora_core::memory::{AutoBatch, Budget};

use crate::batch_size::{AutoMode, BatchSize, MemoryBudget};
use crate::checks::{self, Severity};
use crate::stats::{self, ModuleIndex};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SupervisedConfig {
    /// Passes over the training split (default 1). `max-steps` stops earlier.
    pub epochs: Option<usize>,
    /// Optimizer steps; when set without `epochs`, epochs repeat until it is reached.
    pub max_steps: Option<usize>,
    /// Micro-batch size: examples per forward/backward pass, or `"auto"`.
    #[serde(default = "default_batch")]
    pub batch_size: BatchSize,
    /// Micro-batches per optimizer step; the effective batch is their product.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// With `batch-size = "auto"`: examples per optimizer step, kept whatever
    /// micro-batch is chosen (default 32).
    pub effective_batch_size: Option<usize>,
    /// With `batch-size = "auto"`: `"4GiB"`, or a share of the available memory (default 0.8).
    pub memory_budget: Option<MemoryBudget>,
    /// With `batch-size = "auto"`: the largest micro-batch that fits (`memory`), or
    /// the fastest per example of those that fit, timed on a few steps (`throughput`).
    #[serde(default)]
    pub auto_batch: AutoMode,
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
    /// Keep only each block's input and recompute the block in the backward pass.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

fn default_check_batches() -> usize {
    4
}

fn default_batch() -> BatchSize {
    BatchSize::Fixed(32)
}

/// The effective batch of `batch-size = "auto"` without `effective-batch-size`.
pub const DEFAULT_EFFECTIVE_BATCH: usize = 32;
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

impl SupervisedConfig {
    /// The micro-batch; before the planner has chosen one for `"auto"`, the
    /// effective batch (as if it were not accumulated).
    pub fn micro_batch(&self) -> usize {
        match self.batch_size {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => self.effective_batch_size.unwrap_or(DEFAULT_EFFECTIVE_BATCH),
        }
    }
}

impl SupervisedTrainer {
    /// Optimizer steps in one epoch over `samples` examples.
    pub fn steps_per_epoch(&self, samples: usize) -> usize {
        samples
            .div_ceil(self.cfg.micro_batch())
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

/// Scales gradients in place so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grads.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
    clip_to(grads, norm, max_norm);
    norm
}

/// Scales `grads`, whose global norm (over every process's part) is `norm`, to at most `max_norm`.
fn clip_to(grads: &mut [f32], norm: f64, max_norm: f64) {
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g *= coef as f32;
            }
        }
    }
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

/// Gives each saved state to the callback of its name (the n-th state of a name
/// to the n-th callback of that name).
/// Gives each callback its saved state. `follower`: a process other than rank
/// 0 of several, which lacks rank 0's own sinks (its metrics log): their
/// states are rank 0's to load and are skipped here.
fn load_callback_states(callbacks: &mut [Box<dyn Callback>], states: &[CallbackState], follower: bool) -> Result<()> {
    let mut used = vec![false; callbacks.len()];
    for saved in states {
        let Some(i) = (0..callbacks.len()).find(|&i| !used[i] && callbacks[i].name() == saved.name) else {
            if follower {
                continue;
            }
            return Err(Error::Other(format!(
                "the checkpoint has the state of callback `{}`, which this run does not have",
                saved.name
            )));
        };
        used[i] = true;
        callbacks[i].load_state(&saved.state)?;
    }
    Ok(())
}

fn all_finite(vs: &[f32]) -> bool {
    vs.iter().all(|v| v.is_finite())
}

/// Where a rollback returns: the parameters before the last update that gave
/// a finite loss, and the optimizer's state then (kept only when a callback
/// can answer `Rollback`; a stop or a failure needs the parameters alone).
struct GoodState {
    params: Vec<f32>,
    optimizer: Option<OptimizerState>,
}

/// What the loop does after a callback answered.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// Finish gracefully (final evaluation, adapter written).
    Stop,
}

/// How an attempted optimizer step ended.
enum Attempt {
    /// The update was applied: its figures, for the step event.
    Taken(Taken),
    /// A loss, gradient or parameter was not finite; nothing was applied.
    NonFinite(NonFiniteKind),
    /// The epoch had no micro-batch left.
    NoData,
}

struct Taken {
    grads: Vec<f32>,
    loss: f64,
    examples: usize,
    work: usize,
    grad_norm: f64,
    lr: f64,
}

/// Seconds spent in each part of a step.
#[derive(Default)]
struct StepTimes {
    data_s: f64,
    forward_backward_s: f64,
}

/// One training run: the loop's state ([`LoopState`]), the parameters as one
/// flat buffer, and what the run works with. Each method is one part of the
/// loop; [`Run::run`] strings them together.
struct Run<'t, 'a> {
    cfg: &'t SupervisedConfig,
    optimizer: &'t mut dyn Optimizer,
    scheduler: &'t dyn Scheduler,
    ctx: TrainContext<'a>,
    task: Task,
    layout: ParamLayout,
    modules: ModuleIndex,
    state: LoopState,
    /// Optimizer steps of the run, the epochs they span, and micro-batches in one epoch.
    total: usize,
    epochs: usize,
    micro_per_epoch: usize,
    /// The epoch's batch iterator ran dry (a data stage may yield fewer batches than counted).
    batches_done: bool,
    start: Instant,
    /// Seconds of training before this process (a resumed run continues the count).
    elapsed_before: f64,
    /// Whether the run continues from a checkpoint (its start is already in the log).
    resumed: bool,
    /// The trainable parameters, flat, as the model holds them.
    params: Vec<f32>,
    good: GoodState,
    /// Whether a configured callback can answer `Rollback` (then `good` keeps the optimizer state).
    keep_optimizer: bool,
    losses: Vec<f64>,
    evals: Vec<(usize, EvalReport)>,
    /// Processes training together (the strategy's world).
    world: usize,
}

/// This process's own state in `from`, for a strategy whose processes hold
/// their own (`None` when they share rank 0's); a checkpoint of another
/// number of processes, or of one whose processes shared it, is refused.
fn own_process_state(
    from: &ResumeFrom,
    strategy: &dyn lora_core::strategy::Strategy,
    values: usize,
) -> Result<Option<crate::checkpoint::ProcessState>> {
    let (rank, world) = strategy.rank();
    let saved = from.snapshot.processes.len();
    let per_process = world > 1 && strategy.per_process_state();
    let fail = |why: String| Error::Other(format!("cannot resume from {}: {why}", from.path.display()));
    if !per_process {
        if saved > 0 {
            return Err(fail(format!(
                "it holds the state of {saved} processes; resume it with `{}` on {saved} processes (mpirun -np {saved})",
                strategy.name()
            )));
        }
        return Ok(None);
    }
    if saved != world {
        return Err(fail(if saved == 0 {
            format!(
                "it was written by one process (or a strategy whose processes share their state); `{}` on {world} processes needs every process's state: resume it on one process",
                strategy.name()
            )
        } else {
            format!(
                "it was written by {saved} processes and this run has {world}: `{}` keeps state on every process, so resume it on {saved} (mpirun -np {saved})",
                strategy.name()
            )
        }));
    }
    let what = format!("{} (process {rank})", from.path.display());
    let own = crate::checkpoint::decode_process(&from.snapshot.processes[rank], &what)?;
    if own.rank != rank || own.world != world {
        return Err(fail(format!(
            "process-{rank}'s file says process {} of {}",
            own.rank, own.world
        )));
    }
    if own.params.len() != values {
        return Err(fail(format!(
            "process-{rank}'s file holds {} parameter values, the model {values}",
            own.params.len()
        )));
    }
    Ok(Some(own))
}

impl<'t, 'a> Run<'t, 'a> {
    fn new(trainer: &'t mut SupervisedTrainer, ctx: TrainContext<'a>) -> Result<Self> {
        let n = ctx.data.train.len();
        if n == 0 {
            return Err(Error::Data("the training split is empty".into()));
        }
        let layout = ParamLayout::new(ctx.model.params());
        let mut ctx = ctx;
        let resume = ctx.resume.take();
        // This process's own state, from a checkpoint of several processes.
        let own = match &resume {
            Some(r) => own_process_state(r, ctx.strategy, layout.len())?,
            None => None,
        };
        if let Some(r) = &resume {
            match &own {
                // Between meetings (local-sgd, diloco) each process has its own.
                Some(own) => ctx.model.write_params(&layout.split(&own.params))?,
                None => ctx.model.write_params(&r.params)?,
            }
        }
        let params = layout.flatten(&ctx.model.read_params()?)?;
        let keep_optimizer = ctx.callbacks.iter().any(|c| c.can_roll_back());
        let mut run = Self {
            total: trainer.total_steps(n),
            epochs: trainer.total_steps(n).div_ceil(trainer.steps_per_epoch(n)),
            micro_per_epoch: n.div_ceil(trainer.cfg.micro_batch()),
            batches_done: false,
            cfg: &trainer.cfg,
            optimizer: trainer.optimizer.as_mut(),
            scheduler: trainer.scheduler.as_ref(),
            task: ctx.data.task.clone(),
            modules: ModuleIndex::new(layout.params()),
            state: LoopState::new(ctx.seed),
            start: Instant::now(),
            elapsed_before: 0.0,
            resumed: false,
            good: GoodState {
                params: params.clone(),
                optimizer: None,
            },
            params,
            layout,
            keep_optimizer,
            losses: Vec::new(),
            evals: Vec::new(),
            world: ctx.strategy.rank().1,
            ctx,
        };
        if let Some(r) = resume {
            run.resume(r, own.as_ref().map(|o| &o.optimizer))?;
        }
        run.ctx.strategy.start(&run.layout, &run.params)?;
        if let Some(own) = own {
            run.ctx.strategy.load_state(&own.strategy)?;
        }
        Ok(run)
    }

    /// Continues from a checkpoint: the loop's, the optimizer's and the
    /// callbacks' states (`own_optimizer`: this process's, from a checkpoint of
    /// several processes, instead of rank 0's).
    fn resume(&mut self, from: ResumeFrom, own_optimizer: Option<&OptimizerState>) -> Result<()> {
        let ResumeFrom { snapshot, path, .. } = from;
        let TrainSnapshot {
            loop_state,
            optimizer,
            good_params,
            good_optimizer,
            processes: _,
        } = snapshot;
        let context = |e: Error| Error::Other(format!("cannot resume from {}: {e}", path.display()));
        if loop_state.state.seed != self.state.seed {
            return Err(context(Error::Other(format!(
                "the checkpoint's seed is {}, the run's {}",
                loop_state.state.seed, self.state.seed
            ))));
        }
        if good_params.len() != self.layout.len() {
            return Err(context(Error::Other(format!(
                "the checkpoint holds {} parameter values, the model {}",
                good_params.len(),
                self.layout.len()
            ))));
        }
        self.optimizer
            .load_state(own_optimizer.unwrap_or(&optimizer))
            .map_err(context)?;
        let follower = self.ctx.strategy.rank().0 != 0;
        load_callback_states(self.ctx.callbacks, &loop_state.callbacks, follower).map_err(context)?;
        self.good = GoodState {
            params: good_params,
            optimizer: good_optimizer.filter(|_| self.keep_optimizer),
        };
        self.state = loop_state.state;
        self.elapsed_before = loop_state.elapsed_s;
        self.losses = loop_state.losses;
        self.evals = loop_state.evals;
        self.resumed = true;
        Ok(())
    }

    /// The run at this step boundary, as data.
    fn snapshot(&self) -> TrainSnapshot {
        let callbacks = self
            .ctx
            .callbacks
            .iter()
            .map(|c| CallbackState {
                name: c.name().to_string(),
                state: c.state(),
            })
            .filter(|c| !c.state.is_null())
            .collect();
        TrainSnapshot {
            loop_state: LoopSnapshot {
                state: self.state.clone(),
                elapsed_s: self.elapsed_s(),
                losses: self.losses.clone(),
                evals: self.evals.clone(),
                callbacks,
            },
            optimizer: self.optimizer.state(),
            good_params: self.good.params.clone(),
            good_optimizer: self.good.optimizer.clone(),
            processes: Vec::new(),
        }
    }

    /// After an attempted step whose flow goes on: a checkpoint when one is
    /// due, and when the process was asked to stop, a checkpoint and the end.
    fn checkpoint(&mut self, step_taken: bool) -> Result<()> {
        let step = self.state.step;
        let Some(cp) = self.ctx.checkpoints.as_deref() else {
            return Ok(());
        };
        let interrupted = cp.interrupted();
        if interrupted.is_none() && !(step_taken && step < self.total && cp.due(step)) {
            return Ok(());
        }
        let (rank, world) = self.ctx.strategy.rank();
        let per_process = world > 1 && self.ctx.strategy.per_process_state();
        if per_process && interrupted.is_some() {
            // The other processes did not see the signal at this step: they
            // cannot hand over their state.
            return Err(Error::Other(format!(
                "stopped after step {step}: `{}` keeps state on every process, which a checkpoint on a signal cannot gather; `--resume` continues from the last periodic checkpoint ([train] checkpoint-every-steps)",
                self.ctx.strategy.name()
            )));
        }
        let mut snapshot = None;
        if per_process {
            // Every process hands its own state to rank 0, which writes the folder.
            let mine = crate::checkpoint::encode_process(&crate::checkpoint::ProcessState {
                rank,
                world,
                params: self.params.clone(),
                optimizer: self.optimizer.state(),
                strategy: self.ctx.strategy.state(),
            })?;
            let processes = self.ctx.strategy.gather_bytes(&mine)?;
            if rank == 0 {
                let mut s = self.snapshot();
                s.processes = processes;
                snapshot = Some(s);
            }
        } else if rank == 0 {
            snapshot = Some(self.snapshot());
        }
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        let cp = self.ctx.checkpoints.as_deref_mut().expect("checked above");
        let path = cp.save(&*self.ctx.model, &snapshot)?;
        match interrupted {
            Some(signal) => Err(Error::Interrupted {
                signal,
                step,
                checkpoint: path,
            }),
            None => Ok(()),
        }
    }

    fn num_classes(&self) -> usize {
        self.task.num_classes().unwrap_or(0)
    }

    fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.start.elapsed().as_secs_f64()
    }

    fn announce(&mut self, step: usize, source: &str, action: &str, message: &str) -> Result<()> {
        let event = TrainEvent::Intervention {
            step,
            source: source.to_string(),
            action: action.to_string(),
            message: message.to_string(),
            elapsed_s: self.elapsed_s(),
        };
        emit(self.ctx.callbacks, &event)
    }

    /// Puts the last good parameters (and, when kept, the optimizer state) back, in the model too.
    fn restore(&mut self) -> Result<()> {
        self.params.clone_from(&self.good.params);
        if let Some(state) = &self.good.optimizer {
            self.optimizer.load_state(state)?;
        }
        self.ctx.model.write_params(&self.layout.split(&self.params))
    }

    /// Acts on a callback's answer.
    fn act(&mut self, step: usize, (control, source): (Control, String)) -> Result<Flow> {
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
                if self.good.optimizer.is_none() {
                    return Err(Error::Other(format!(
                        "callback `{source}` answered a rollback but does not declare that it can roll back (Callback::can_roll_back)"
                    )));
                }
                self.restore()?;
                self.state.lr_scale *= lr_factor;
                let message = format!("{reason} (learning-rate scale now {:.3e})", self.state.lr_scale);
                self.announce(step, &source, "rollback", &message)?;
                Ok(Flow::Go)
            }
            Control::Fail { reason } => {
                self.announce(step, &source, "fail", &reason)?;
                Err(Error::Other(reason))
            }
        }
    }

    /// Early checks, part one: the training split as a whole.
    fn check_split(&mut self) -> Result<()> {
        if self.cfg.check_batches == 0 || self.task.num_classes().is_none() {
            return Ok(());
        }
        let data = self.ctx.data;
        for f in checks::check_split(&data.train.labels(), self.num_classes(), data.train.truncated()) {
            self.announce(0, "input-checks", "warn", &f.message)?;
        }
        Ok(())
    }

    /// Early checks, part two: the first micro-batches themselves.
    fn check_batch(&mut self, batch: &Batch) -> Result<()> {
        let index = self.state.micro_step as usize;
        if index >= self.cfg.check_batches || self.task.num_classes().is_none() {
            return Ok(());
        }
        for f in checks::check_batch(batch, index, self.num_classes()) {
            match f.severity {
                Severity::Warning => self.announce(self.state.step + 1, "input-checks", "warn", &f.message)?,
                Severity::Error => {
                    self.announce(self.state.step + 1, "input-checks", "fail", &f.message)?;
                    return Err(Error::Data(f.message));
                }
            }
        }
        Ok(())
    }

    /// Whether the current epoch's micro-batches are all consumed.
    fn epoch_exhausted(&self) -> bool {
        self.batches_done || self.state.batch_in_epoch >= self.micro_per_epoch
    }

    /// Runs up to `gradient-accumulation-steps` micro-batches of the epoch and,
    /// when every loss and gradient was finite, reduces, clips and applies the update.
    fn attempt_step(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Batch>>,
        times: &mut StepTimes,
    ) -> Result<Attempt> {
        let mut sums = StepSums::new(self.layout.len());
        let mut drawn = 0;
        for _ in 0..self.cfg.gradient_accumulation_steps {
            if self.epoch_exhausted() {
                break;
            }
            let t = Instant::now();
            let Some(batch) = batches.next() else {
                self.batches_done = true;
                break;
            };
            let batch = batch?;
            times.data_s += t.elapsed().as_secs_f64();
            drawn += 1;
            if batch.is_empty() {
                // This process's part of a short last batch: nothing to
                // compute, but it still takes part in the step's collectives.
                self.state.micro();
                self.ctx.strategy.after_micro_batch(&mut sums)?;
                continue;
            }
            self.check_batch(&batch)?;
            let t = Instant::now();
            let seed = self.ctx.strategy.dropout_seed(self.state.dropout_seed());
            let out = self.ctx.model.train_step(&batch, seed)?;
            times.forward_backward_s += t.elapsed().as_secs_f64();
            self.state.micro();
            let bad = if !out.loss.is_finite() {
                Some(NonFiniteKind::Loss)
            } else if !all_finite(&out.grads) {
                Some(NonFiniteKind::Gradients)
            } else {
                None
            };
            if let Some(what) = bad {
                if self.world > 1 {
                    // The other processes wait in this step's collectives: a
                    // rollback cannot be agreed on, so the run fails (and MPI aborts).
                    return Err(Error::Other(format!(
                        "{} became NaN or infinite at step {} on process {} of {}",
                        if what == NonFiniteKind::Loss {
                            "the loss"
                        } else {
                            "a gradient"
                        },
                        self.state.step + 1,
                        self.ctx.strategy.rank().0,
                        self.world
                    )));
                }
                return Ok(Attempt::NonFinite(what));
            }
            sums.add(&out.grads, out.loss, out.weight, batch.len(), batch.work_units());
            self.ctx.strategy.after_micro_batch(&mut sums)?;
        }
        if drawn == 0 {
            return Ok(Attempt::NoData);
        }
        self.ctx.strategy.reduce(&mut sums)?;
        if sums.examples == 0 {
            return Ok(Attempt::NoData);
        }
        let loss = sums.normalise();
        let grad_norm = self.ctx.strategy.global_norm(&sums.grads)?;
        clip_to(&mut sums.grads, grad_norm, self.cfg.max_grad_norm);
        // These parameters just gave a finite loss: the state to return to.
        self.good.params.clone_from(&self.params);
        if self.keep_optimizer {
            self.good.optimizer = Some(self.optimizer.state());
        }
        let lr = self.optimizer.base_lr() * self.scheduler.factor(self.state.step, self.total) * self.state.lr_scale;
        self.ctx
            .strategy
            .apply(self.optimizer, &mut self.params, &sums.grads, &self.layout, lr)?;
        if !all_finite(&self.params) {
            return Ok(Attempt::NonFinite(NonFiniteKind::Parameters));
        }
        Ok(Attempt::Taken(Taken {
            grads: sums.grads,
            loss,
            examples: sums.examples,
            work: sums.work,
            grad_norm,
            lr,
        }))
    }

    /// A step whose loss, gradients or parameters were not finite: the update
    /// is undone, and the callbacks decide whether the run rolls back, stops or fails.
    fn non_finite(&mut self, what: NonFiniteKind) -> Result<Flow> {
        let step = self.state.step + 1;
        let event = TrainEvent::NonFinite {
            step,
            epoch: self.state.epoch,
            what,
            elapsed_s: self.elapsed_s(),
        };
        let answer = dispatch(self.ctx.callbacks, &event)?;
        if answer.0.severity() < (Control::Stop { reason: String::new() }).severity() {
            self.restore()?;
            return Err(Error::Other(format!(
                "{} became NaN or infinite at step {step}; add [callbacks.nan-rollback] to roll back and go on",
                match what {
                    NonFiniteKind::Loss => "the loss",
                    NonFiniteKind::Gradients => "a gradient",
                    NonFiniteKind::Parameters => "a parameter",
                },
            )));
        }
        let flow = self.act(step, answer)?;
        if flow == Flow::Stop {
            // Never finish on a broken state.
            self.restore()?;
        }
        Ok(flow)
    }

    /// A step that was taken: written to the model, counted, announced.
    fn taken(&mut self, taken: Taken, step_start: Instant, times: StepTimes, optimizer_start: Instant) -> Result<Flow> {
        self.ctx.model.write_params(&self.layout.split(&self.params))?;
        if self.ctx.strategy.after_step(&self.state, &mut self.params)? {
            self.ctx.model.write_params(&self.layout.split(&self.params))?;
        }
        let optimizer_s = optimizer_start.elapsed().as_secs_f64();
        self.state.step();
        let step = self.state.step;
        self.losses.push(taken.loss);
        let update_ratio = stats::global_update_ratio(&self.good.params, &self.params);
        let modules = if self.cfg.module_stats_every > 0 && step.is_multiple_of(self.cfg.module_stats_every) {
            self.modules
                .stats(&self.layout, &self.good.params, &self.params, &taken.grads)
        } else {
            Vec::new()
        };
        let dt = step_start.elapsed().as_secs_f64().max(1e-9);
        let ranks = self.ctx.strategy.rank_figures(dt)?;
        let event = TrainEvent::Step(StepMetrics {
            step,
            total_steps: self.total,
            epoch: self.state.epoch,
            loss: taken.loss,
            lr: taken.lr,
            grad_norm: taken.grad_norm,
            samples: taken.examples,
            tokens: taken.work,
            elapsed_s: self.elapsed_s(),
            samples_per_s: taken.examples as f64 / dt,
            tokens_per_s: taken.work as f64 / dt,
            data_s: times.data_s,
            forward_backward_s: times.forward_backward_s,
            optimizer_s,
            update_ratio,
            modules,
            ranks,
        });
        let answer = dispatch(self.ctx.callbacks, &event)?;
        if self.act(step, answer)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        let interval = self.ctx.eval.interval();
        if interval > 0 && step.is_multiple_of(interval) && step < self.total {
            return self.evaluate();
        }
        Ok(Flow::Go)
    }

    /// One pass of the evaluator over the validation split, announced to the callbacks.
    fn evaluate(&mut self) -> Result<Flow> {
        let (step, epoch) = (self.state.step, self.state.last_step_epoch);
        let data = self.ctx.data;
        let (rank, world) = self.ctx.strategy.rank();
        let report = if world > 1 {
            let shard = Shard::new(data.validation.as_ref(), rank, world);
            let strategy = &mut *self.ctx.strategy;
            self.ctx
                .eval
                .evaluate_reduced(
                    &*self.ctx.model,
                    data.validation.as_ref(),
                    &shard,
                    &self.task,
                    &mut |v| strategy.all_reduce_f64(v),
                )
                .map_err(|e| e.at(|| format!("the evaluation after step {step}")))?
        } else {
            self.ctx
                .eval
                .evaluate(&*self.ctx.model, data.validation.as_ref(), &self.task)?
        };
        let event = TrainEvent::Eval {
            step,
            epoch,
            report: report.clone(),
        };
        self.evals.push((step, report));
        let answer = dispatch(self.ctx.callbacks, &event)?;
        self.act(step, answer)
    }

    /// The current epoch is complete: announced, and the next one begins.
    fn end_epoch(&mut self) -> Result<Flow> {
        let event = TrainEvent::EpochEnd {
            epoch: self.state.epoch,
            step: self.state.step,
        };
        self.state.end_epoch();
        let answer = dispatch(self.ctx.callbacks, &event)?;
        self.act(self.state.step, answer)
    }

    /// One epoch from its first micro-batch; returns `Stop` when a callback or
    /// the step budget ends the run.
    /// The epoch continues from its position (`batch_in_epoch`): 0 in a fresh
    /// epoch, anywhere in a resumed one. The budget is checked at the top of
    /// each pass, so that a run resumed at any step boundary, even the last,
    /// takes the same path as the uninterrupted one.
    fn run_epoch(&mut self) -> Result<Flow> {
        let data = self.ctx.data;
        let (rank, world) = self.ctx.strategy.rank();
        let shard = Shard::new(data.train.as_ref(), rank, world);
        let train: &dyn Dataset = if world > 1 { &shard } else { data.train.as_ref() };
        let mut batches = train.batches_from(
            self.cfg.micro_batch(),
            Some(self.state.order_seed()),
            self.state.batch_in_epoch,
        );
        self.batches_done = false;
        loop {
            if self.state.step >= self.total {
                // An epoch that ends with the budget is still announced.
                if self.epoch_exhausted() {
                    self.end_epoch()?;
                }
                return Ok(Flow::Stop);
            }
            if self.epoch_exhausted() {
                break;
            }
            let step_start = Instant::now();
            let mut times = StepTimes::default();
            // A collective that times out says in which step.
            let step = self.state.step + 1;
            let at = || format!("step {step}");
            let attempt = self.attempt_step(&mut batches, &mut times).map_err(|e| e.at(at))?;
            let optimizer_start = Instant::now();
            let (flow, taken) = match attempt {
                Attempt::Taken(taken) => (
                    self.taken(taken, step_start, times, optimizer_start)
                        .map_err(|e| e.at(at))?,
                    true,
                ),
                Attempt::NonFinite(what) => (self.non_finite(what)?, false),
                Attempt::NoData => break,
            };
            if flow == Flow::Stop {
                return Ok(Flow::Stop);
            }
            self.checkpoint(taken)?;
        }
        self.end_epoch()
    }

    fn run(mut self) -> Result<TrainSummary> {
        let n = self.ctx.data.train.len();
        let start = TrainEvent::Start {
            total_steps: self.total,
            epochs: self.epochs,
            train_samples: n,
            trainable_parameters: self.layout.len(),
        };
        if !self.resumed {
            // A resumed run's start and early checks are already in its log.
            emit(self.ctx.callbacks, &start)?;
        }
        self.start = Instant::now();
        if !self.resumed {
            self.check_split()?;
        }
        while self.run_epoch()? != Flow::Stop {}
        if self
            .ctx
            .strategy
            .finish(&mut self.params)
            .map_err(|e| e.at(|| "the end of the run".into()))?
        {
            self.ctx.model.write_params(&self.layout.split(&self.params))?;
        }
        // An evaluation answered by a stop is the final one: it is not run twice.
        if self.evals.last().map(|(s, _)| *s) != Some(self.state.step) {
            self.evaluate()?;
        }
        let elapsed_s = self.elapsed_s();
        let end = TrainEvent::End {
            step: self.state.step,
            epoch: self.state.last_step_epoch,
            elapsed_s,
        };
        emit(self.ctx.callbacks, &end)?;
        Ok(TrainSummary {
            steps: self.state.step,
            epochs_completed: self.state.epochs_completed,
            losses: self.losses,
            elapsed_s,
            evals: self.evals,
        })
    }
}

impl TrainStage for SupervisedTrainer {
    fn resolved(&self) -> serde_json::Value {
        let mut v = crate::with_type("supervised", &self.cfg);
        v["optimizer"] = self.optimizer.resolved();
        v["scheduler"] = self.scheduler.resolved();
        v
    }

    fn train(&mut self, ctx: TrainContext<'_>) -> Result<TrainSummary> {
        if self.cfg.batch_size == BatchSize::Auto {
            return Err(Error::Other(
                "batch-size = \"auto\" was not resolved to a micro-batch before training".into(),
            ));
        }
        Run::new(self, ctx)?.run()
    }

    fn gradient_checkpointing(&self) -> bool {
        self.cfg.gradient_checkpointing
    }

    fn batch(&self) -> Option<(usize, usize)> {
        match self.cfg.batch_size {
            BatchSize::Fixed(n) => Some((n, self.cfg.gradient_accumulation_steps)),
            BatchSize::Auto => None,
        }
    }

    fn auto_batch(&self) -> Option<AutoBatch> {
        (self.cfg.batch_size == BatchSize::Auto).then(|| AutoBatch {
            effective: self.cfg.effective_batch_size.unwrap_or(DEFAULT_EFFECTIVE_BATCH),
            budget: self.cfg.memory_budget.as_ref().map_or_else(Budget::default, |b| b.0),
            throughput: self.cfg.auto_batch == AutoMode::Throughput,
        })
    }

    fn set_batch(&mut self, micro: usize, accumulation: usize) -> Result<()> {
        if micro == 0 || accumulation == 0 {
            return Err(Error::Other(format!("a micro-batch of {micro} x {accumulation} steps")));
        }
        self.cfg.batch_size = BatchSize::Fixed(micro);
        self.cfg.gradient_accumulation_steps = accumulation;
        Ok(())
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
        let checks: [(&str, usize); 3] = [
            ("batch-size", cfg.micro_batch()),
            ("gradient-accumulation-steps", cfg.gradient_accumulation_steps),
            ("effective-batch-size", cfg.effective_batch_size.unwrap_or(1)),
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
        // The planner chooses the accumulation that keeps the effective batch.
        let auto = cfg.batch_size == BatchSize::Auto;
        let auto_keys = [
            ("effective-batch-size", cfg.effective_batch_size.is_some()),
            ("memory-budget", cfg.memory_budget.is_some()),
            ("auto-batch", cfg.auto_batch != AutoMode::Memory),
        ];
        for (key, set) in auto_keys {
            if set && !auto {
                diags.push(
                    Diagnostic::error(
                        "train::auto-batch-key",
                        format!("{key} applies to batch-size = \"auto\" only"),
                    )
                    .at(c.value_location(key))
                    .help("set batch-size = \"auto\", or remove the key"),
                );
            }
        }
        if auto && cfg.gradient_accumulation_steps != 1 {
            diags.push(
                Diagnostic::error(
                    "train::auto-batch-key",
                    "with batch-size = \"auto\" the planner sets gradient-accumulation-steps to keep effective-batch-size",
                )
                .at(c.value_location("gradient-accumulation-steps"))
                .help("remove gradient-accumulation-steps and set effective-batch-size"),
            );
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
    use std::sync::{Arc, Mutex};

    use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput};
    use lora_core::stage::{Dataset, EvalStage, InputEncoder, PreparedData};
    use lora_core::{HostTensor, TextBatch};

    use super::*;
    use crate::eval::{ClassificationEval, ClassificationEvalConfig};
    use crate::optim::{Sgd, SgdConfig};
    use crate::schedule::{Shape, WarmupSchedule};
    use crate::strategy::SingleProcess;

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![3.0, 0.0, 4.0];
        let norm = clip_global_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[2] - 0.8).abs() < 1e-5);
        let mut small = vec![0.3, 0.4];
        clip_global_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }

    #[test]
    fn accumulation_weights_micro_batches_by_size() {
        // Mean gradients 1.0 over 3 samples and 4.0 over 1 sample: 7 / 4 overall.
        let mut acc = StepSums::new(1);
        acc.add(&[1.0], 2.0, 3.0, 3, 0);
        acc.add(&[4.0], 6.0, 1.0, 1, 0);
        let loss = acc.normalise();
        assert_eq!(acc.examples, 4);
        assert!((acc.grads[0] - 1.75).abs() < 1e-6);
        assert!((loss - 3.0).abs() < 1e-9);
    }

    /// A real (tiny) classifier: one logit per class, shared by every example;
    /// cross-entropy loss with its exact gradient `softmax - onehot`.
    struct Prior {
        info: Vec<ParamInfo>,
        logits: Vec<f32>,
    }

    impl Prior {
        fn new(classes: usize) -> Self {
            Self {
                info: vec![ParamInfo::new("base_model.model.classifier.bias", vec![classes], false)],
                logits: vec![0.0; classes],
            }
        }
    }

    impl AdapterModel for Prior {
        fn backend(&self) -> &'static str {
            "host"
        }
        fn summary(&self) -> ModelSummary {
            ModelSummary {
                architecture: "prior".into(),
                total_parameters: self.logits.len(),
                trainable_parameters: self.logits.len(),
                num_labels: self.logits.len(),
                hidden_size: 0,
                max_positions: 0,
            }
        }
        fn peft_info(&self) -> PeftInfo {
            PeftInfo {
                task_type: "SEQ_CLS",
                target_modules: serde_json::json!([]),
                modules_to_save: vec!["classifier".into()],
            }
        }
        fn params(&self) -> &[ParamInfo] {
            &self.info
        }
        fn read_params(&self) -> Result<Vec<Vec<f32>>> {
            Ok(vec![self.logits.clone()])
        }
        fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
            self.logits.clone_from(&values[0]);
            Ok(())
        }
        fn train_step(&mut self, batch: &Batch, _dropout_seed: u64) -> Result<StepOutput> {
            let max = self.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = self.logits.iter().map(|l| (l - max).exp()).collect();
            let total: f32 = exp.iter().sum();
            let p: Vec<f32> = exp.iter().map(|e| e / total).collect();
            let labels = batch.labels();
            let mut grads = vec![0.0; p.len()];
            let mut loss = 0.0;
            for &y in labels {
                loss -= p[y as usize].ln();
                for (c, g) in grads.iter_mut().enumerate() {
                    *g += p[c] - if c == y as usize { 1.0 } else { 0.0 };
                }
            }
            let n = labels.len() as f32;
            grads.iter_mut().for_each(|g| *g /= n);
            Ok(StepOutput {
                loss: loss / n,
                weight: n as f64,
                grads,
            })
        }
        fn predict(&self, batch: &Batch) -> Result<HostTensor> {
            let data = (0..batch.len()).flat_map(|_| self.logits.clone()).collect();
            Ok(HostTensor::new(vec![batch.len(), self.logits.len()], data))
        }
        fn merge(&mut self) -> Result<()> {
            Ok(())
        }
        fn unmerge(&mut self) -> Result<()> {
            Ok(())
        }
    }

    struct Labels(Vec<u32>);

    impl Dataset for Labels {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn labels(&self) -> Vec<u32> {
            self.0.clone()
        }
        fn batches(
            &self,
            batch_size: usize,
            _order_seed: Option<u64>,
        ) -> Box<dyn Iterator<Item = Result<Batch>> + Send + '_> {
            Box::new(self.0.chunks(batch_size).map(|c| {
                Ok(Batch::Text(TextBatch {
                    batch_size: c.len(),
                    seq_len: 1,
                    input_ids: vec![1; c.len()],
                    attention_mask: vec![1; c.len()],
                    labels: c.to_vec(),
                }))
            }))
        }
    }

    struct NoEncoder;

    impl InputEncoder for NoEncoder {
        fn input_kind(&self) -> &'static str {
            "text"
        }
        fn encode_inputs(&self, _inputs: &[String]) -> Result<Batch> {
            Err(Error::Other("no encoder".into()))
        }
    }

    /// Records every event; answers `Stop` to the evaluation at `stop_at_eval`.
    struct Recorder {
        events: Arc<Mutex<Vec<TrainEvent>>>,
        stop_at_eval: Option<usize>,
    }

    impl Callback for Recorder {
        fn on_event(&mut self, event: &TrainEvent) -> Result<()> {
            self.events.lock().unwrap().push(event.clone());
            Ok(())
        }
        fn control(&mut self, event: &TrainEvent) -> Result<Control> {
            self.on_event(event)?;
            match event {
                TrainEvent::Eval { step, .. } if Some(*step) == self.stop_at_eval => Ok(Control::Stop {
                    reason: "enough".into(),
                }),
                _ => Ok(Control::Continue),
            }
        }
    }

    /// Trains the prior on 10 examples (labels 0, 1, 1, 1, ...) and returns the summary and events.
    fn train(
        cfg: SupervisedConfig,
        every_steps: usize,
        stop_at_eval: Option<usize>,
    ) -> (TrainSummary, Vec<TrainEvent>) {
        let (summary, events, _) = train_on(cfg, every_steps, stop_at_eval, &mut SingleProcess);
        (summary, events)
    }

    /// [`train`] as one process of `strategy`; also returns the final logits.
    fn train_on(
        cfg: SupervisedConfig,
        every_steps: usize,
        stop_at_eval: Option<usize>,
        strategy: &mut dyn lora_core::strategy::Strategy,
    ) -> (TrainSummary, Vec<TrainEvent>, Vec<f32>) {
        let labels: Vec<u32> = (0..10).map(|i| u32::from(i % 4 != 0)).collect();
        let data = PreparedData {
            task: Task::classification(vec!["a".into(), "b".into()]),
            train: Box::new(Labels(labels.clone())),
            validation: Box::new(Labels(labels)),
            encoder: Box::new(NoEncoder),
        };
        let mut trainer = SupervisedTrainer {
            cfg,
            optimizer: Box::new(Sgd::new(SgdConfig {
                lr: 0.5,
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            })),
            scheduler: Box::new(WarmupSchedule {
                shape: Shape::Constant,
                cfg: Default::default(),
            }),
        };
        let eval = ClassificationEval {
            cfg: ClassificationEvalConfig {
                every_steps,
                batch_size: 4,
                metrics: Vec::new(),
            },
            metrics: Vec::new(),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut callbacks: Vec<Box<dyn Callback>> = vec![Box::new(Recorder {
            events: events.clone(),
            stop_at_eval,
        })];
        let mut model = Prior::new(2);
        let summary = trainer
            .train(TrainContext {
                model: &mut model,
                data: &data,
                eval: &eval as &dyn EvalStage,
                callbacks: &mut callbacks,
                strategy,
                seed: 7,
                checkpoints: None,
                resume: None,
            })
            .unwrap();
        let events = events.lock().unwrap().clone();
        (summary, events, model.logits)
    }

    /// Three processes (threads) with batches of 4 out of 10 examples: the
    /// last batch of each epoch has 2 rows, so the third rank trains nothing
    /// in it and still joins the step. Losses, evaluations and parameters are
    /// the one-process run's, and every rank sees the same events.
    #[test]
    fn three_ranks_of_ddp_run_the_one_process_loop() {
        use lora_strategy::ddp::Ddp;
        use lora_strategy::{Comm as _, ThreadComm};
        let (want, want_events, want_logits) = train_on(config(Some(3), None, 2), 2, None, &mut SingleProcess);
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadComm::group(3)
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        assert!(c.size() == 3);
                        let mut ddp = Ddp::new(Box::new(c), true);
                        train_on(config(Some(3), None, 2), 2, None, &mut ddp)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let evals = |events: &[TrainEvent]| -> Vec<(usize, usize, f64)> {
            events
                .iter()
                .filter_map(|e| match e {
                    TrainEvent::Eval { step, report, .. } => Some((*step, report.samples, report.loss)),
                    _ => None,
                })
                .collect()
        };
        for (summary, events, logits) in &got {
            assert_eq!(summary.steps, want.steps);
            for (a, b) in summary.losses.iter().zip(&want.losses) {
                assert!((a - b).abs() < 1e-6, "{:?} vs {:?}", summary.losses, want.losses);
            }
            for (a, b) in logits.iter().zip(&want_logits) {
                assert!((a - b).abs() < 1e-6, "{logits:?} vs {want_logits:?}");
            }
            let (e, w) = (evals(events), evals(&want_events));
            assert_eq!(e.len(), w.len());
            for (a, b) in e.iter().zip(&w) {
                // Every rank reports the whole validation split, summed over the ranks.
                assert_eq!((a.0, a.1), (b.0, 10));
                assert!((a.2 - b.2).abs() < 1e-6);
            }
            let ranks = events.iter().find_map(|e| match e {
                TrainEvent::Step(m) => Some(m.ranks.len()),
                _ => None,
            });
            assert_eq!(ranks, Some(3));
        }
    }

    fn config(epochs: Option<usize>, max_steps: Option<usize>, accumulation: usize) -> SupervisedConfig {
        SupervisedConfig {
            epochs,
            max_steps,
            batch_size: BatchSize::Fixed(4),
            gradient_accumulation_steps: accumulation,
            effective_batch_size: None,
            memory_budget: None,
            auto_batch: AutoMode::Memory,
            max_grad_norm: 0.0,
            module_stats_every: 0,
            check_batches: 0,
            gradient_checkpointing: false,
        }
    }

    fn epoch_ends(events: &[TrainEvent]) -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::EpochEnd { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_epochs_only_run_announces_its_last_epoch() {
        // 10 examples in micro-batches of 4: 3 per epoch, so 3 steps (2 with accumulation 2).
        for (accumulation, steps) in [(1, 6), (2, 4)] {
            let (summary, events) = train(config(Some(2), None, accumulation), 0, None);
            assert_eq!(summary.steps, steps);
            assert_eq!(summary.epochs_completed, 2, "accumulation {accumulation}");
            assert_eq!(epoch_ends(&events), [0, 1], "accumulation {accumulation}");
        }
        // A budget that ends mid-epoch completes no epoch there.
        let (summary, events) = train(config(None, Some(4), 1), 0, None);
        assert_eq!((summary.steps, summary.epochs_completed), (4, 1));
        assert_eq!(epoch_ends(&events), [0]);
    }

    #[test]
    fn a_stop_answered_to_an_evaluation_is_not_followed_by_another() {
        let (summary, events) = train(config(Some(3), None, 1), 2, Some(4));
        let evals: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Eval { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(evals, [2, 4]);
        assert_eq!(summary.steps, 4);
        assert_eq!(summary.evals.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 4]);
        assert!(matches!(events.last(), Some(TrainEvent::End { step: 4, epoch: 1, .. })));
    }

    /// Keeps every checkpoint in memory: the snapshot and the model's parameters.
    struct Memory {
        every: usize,
        saved: Vec<(TrainSnapshot, Vec<Vec<f32>>)>,
        /// Answer that the process was asked to stop.
        stop: bool,
    }

    impl lora_core::checkpoint::Checkpoints for Memory {
        fn due(&self, step: usize) -> bool {
            step.is_multiple_of(self.every)
        }
        fn interrupted(&self) -> Option<String> {
            self.stop.then(|| "SIGTEST".to_string())
        }
        fn save(&mut self, model: &dyn AdapterModel, snapshot: &TrainSnapshot) -> Result<std::path::PathBuf> {
            self.saved.push((snapshot.clone(), model.read_params()?));
            Ok(std::path::PathBuf::from(format!("memory/{}", self.saved.len())))
        }
    }

    /// Trains the prior with momentum (so the optimizer state matters), from a
    /// checkpoint when given; returns the summary, the final logits and the checkpoints.
    fn train_resumable(
        cfg: SupervisedConfig,
        memory: &mut Memory,
        resume: Option<(TrainSnapshot, Vec<Vec<f32>>)>,
    ) -> Result<(TrainSummary, Vec<f32>)> {
        let labels: Vec<u32> = (0..10).map(|i| u32::from(i % 3 != 0)).collect();
        let data = PreparedData {
            task: Task::classification(vec!["a".into(), "b".into()]),
            train: Box::new(Labels(labels.clone())),
            validation: Box::new(Labels(labels)),
            encoder: Box::new(NoEncoder),
        };
        let mut trainer = SupervisedTrainer {
            cfg,
            optimizer: Box::new(Sgd::new(SgdConfig {
                lr: 0.3,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            })),
            scheduler: Box::new(WarmupSchedule {
                shape: Shape::Linear,
                cfg: Default::default(),
            }),
        };
        let eval = ClassificationEval {
            cfg: ClassificationEvalConfig {
                every_steps: 3,
                batch_size: 4,
                metrics: Vec::new(),
            },
            metrics: Vec::new(),
        };
        let mut callbacks: Vec<Box<dyn Callback>> = Vec::new();
        let mut model = Prior::new(2);
        let summary = trainer.train(TrainContext {
            model: &mut model,
            data: &data,
            eval: &eval as &dyn EvalStage,
            callbacks: &mut callbacks,
            strategy: &mut SingleProcess,
            seed: 7,
            checkpoints: Some(memory),
            resume: resume.map(|(snapshot, params)| ResumeFrom {
                snapshot,
                params,
                path: "memory".into(),
            }),
        })?;
        Ok((summary, model.logits))
    }

    #[test]
    fn a_run_resumed_from_any_checkpoint_ends_exactly_like_the_whole_run() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // 10 examples in micro-batches of 4, two per step: 2 steps an epoch, 5 epochs.
        let cfg = || config(Some(5), None, 2);
        let mut whole = Memory {
            every: 1,
            saved: Vec::new(),
            stop: false,
        };
        let (summary, logits) = train_resumable(cfg(), &mut whole, None).unwrap();
        assert_eq!(summary.steps, 10);
        // Every step but the last is checkpointed.
        assert_eq!(whole.saved.len(), 9);
        for (snapshot, params) in whole.saved.clone() {
            let step = snapshot.loop_state.state.step;
            let mut again = Memory {
                every: 1,
                saved: Vec::new(),
                stop: false,
            };
            let (s, l) = train_resumable(cfg(), &mut again, Some((snapshot, params))).unwrap();
            assert_eq!(bits(&l), bits(&logits), "resumed after step {step}");
            assert_eq!(s.losses, summary.losses, "resumed after step {step}");
            assert_eq!(s.evals, summary.evals, "resumed after step {step}");
            assert_eq!(s.epochs_completed, summary.epochs_completed);
        }
        // Without the optimizer's momentum the same resume ends elsewhere.
        let (mut snapshot, params) = whole.saved[4].clone();
        snapshot.optimizer.buffers.clear();
        let (_, l) = train_resumable(
            cfg(),
            &mut Memory {
                every: 1,
                saved: Vec::new(),
                stop: false,
            },
            Some((snapshot, params)),
        )
        .unwrap();
        assert_ne!(bits(&l), bits(&logits));
    }

    #[test]
    fn an_interrupted_run_checkpoints_the_step_it_finished_and_stops() {
        let mut memory = Memory {
            every: 100,
            saved: Vec::new(),
            stop: true,
        };
        let err = train_resumable(config(Some(5), None, 1), &mut memory, None).unwrap_err();
        let Error::Interrupted {
            signal,
            step,
            checkpoint,
        } = err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (signal.as_str(), step, checkpoint.to_str()),
            ("SIGTEST", 1, Some("memory/1"))
        );
        assert_eq!(memory.saved.len(), 1);
        assert_eq!(memory.saved[0].0.loop_state.state.step, 1);
    }

    #[test]
    fn the_prior_learns_the_label_frequencies() {
        // 7 of the 10 labels are 1: the trained prior must favour class 1.
        let (summary, events) = train(config(Some(20), None, 1), 0, None);
        let Some(TrainEvent::Eval { report, .. }) = events.iter().rev().find(|e| matches!(e, TrainEvent::Eval { .. }))
        else {
            panic!("no evaluation");
        };
        assert_eq!(summary.steps, 60);
        // Accuracy of always predicting 1; loss near the entropy of (0.3, 0.7).
        assert!((report.loss - 0.6109).abs() < 0.01, "{}", report.loss);
    }
}
