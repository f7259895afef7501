//! How one optimizer step's gradients are combined and its update applied.
//!
//! The loop accumulates a weighted gradient sum over its micro-batches, hands
//! it to the strategy to combine with other workers' (nothing to do in one
//! process), normalises it, clips it, and asks the strategy to apply the
//! update. Distributed strategies (data-parallel all-reduce, sharded
//! optimizer state, local SGD) implement the same three calls.

use std::collections::BTreeMap;

use crate::adapter::ParamLayout;
use crate::error::Result;
use crate::loop_state::LoopState;
use crate::optim::Optimizer;

/// One optimizer step's accumulated sums, before normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSums {
    /// `sum_i weight_i * grad_i` over the micro-batches, flat in the [`ParamLayout`].
    pub grads: Vec<f32>,
    /// `sum_i weight_i`: examples or target tokens.
    pub weight: f64,
    /// `sum_i weight_i * loss_i`.
    pub loss_sum: f64,
    /// Examples in the step.
    pub examples: usize,
    /// Units of work for throughput figures (real tokens, images).
    pub work: usize,
}

impl StepSums {
    pub fn new(len: usize) -> Self {
        Self {
            grads: vec![0.0; len],
            weight: 0.0,
            loss_sum: 0.0,
            examples: 0,
            work: 0,
        }
    }

    /// Adds one micro-batch's mean gradients, weighted by its weight, so that k
    /// micro-batches give the gradient of one batch of all their targets.
    pub fn add(&mut self, grads: &[f32], loss: f32, weight: f64, examples: usize, work: usize) {
        let w = weight as f32;
        for (a, g) in self.grads.iter_mut().zip(grads) {
            *a += w * g;
        }
        self.loss_sum += loss as f64 * weight;
        self.weight += weight;
        self.examples += examples;
        self.work += work;
    }

    /// The mean gradients (in place) and the mean loss.
    pub fn normalise(&mut self) -> f64 {
        if self.weight <= 0.0 {
            return 0.0;
        }
        let inv = 1.0 / self.weight as f32;
        for g in self.grads.iter_mut() {
            *g *= inv;
        }
        self.loss_sum / self.weight
    }
}

/// What a strategy keeps on one process between steps (error-feedback
/// residuals, factors, an outer optimizer's state, counters), for a
/// checkpoint on several processes: named flat buffers and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StrategyState {
    pub buffers: BTreeMap<String, Vec<f32>>,
    pub counters: BTreeMap<String, u64>,
}

impl StrategyState {
    /// The buffer `name`, or an error naming what is missing or of another length.
    pub fn buffer(&self, name: &str, len: usize) -> Result<&[f32]> {
        match self.buffers.get(name) {
            Some(b) if b.len() == len => Ok(b),
            Some(b) => Err(crate::Error::Other(format!(
                "the strategy state's `{name}` holds {} values, this run needs {len}",
                b.len()
            ))),
            None => Err(crate::Error::Other(format!("the strategy state has no `{name}`"))),
        }
    }

    /// The counter `name`, or an error naming it.
    pub fn counter(&self, name: &str) -> Result<u64> {
        self.counters
            .get(name)
            .copied()
            .ok_or_else(|| crate::Error::Other(format!("the strategy state has no counter `{name}`")))
    }
}

pub trait Strategy: Send {
    /// The name in `[strategy] type`, logs and events.
    fn name(&self) -> &str;

    /// This process's index and the number of processes.
    fn rank(&self) -> (usize, usize) {
        (0, 1)
    }

    /// Before the first step, with the layout of the flat buffers: a strategy
    /// that shards or compresses by tensor prepares here. `params` are the
    /// starting values (the same on every process).
    fn start(&mut self, _layout: &ParamLayout, _params: &[f32]) -> Result<()> {
        Ok(())
    }

    /// After each micro-batch's gradients were added to `sums`: a strategy
    /// that communicates per micro-batch (plain DDP, ZeRO-2, overlap) starts
    /// here. It may move what it took out of `sums.grads` and give it back in
    /// [`Self::reduce`]; the scalars stay.
    fn after_micro_batch(&mut self, _sums: &mut StepSums) -> Result<()> {
        Ok(())
    }

    /// Combines this process's sums with the other workers' (in place).
    /// Every process calls it at every optimizer step, with or without examples.
    fn reduce(&mut self, sums: &mut StepSums) -> Result<()>;

    /// The global L2 norm of the (reduced) gradients, for clipping: a strategy
    /// whose processes hold parts of the gradient sums the parts' squares.
    fn global_norm(&mut self, grads: &[f32]) -> Result<f64> {
        Ok(grads.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt())
    }

    /// Sums `values` over the processes (in place): evaluation sums.
    fn all_reduce_f64(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    /// The dropout seed of a micro-batch on this process: processes that
    /// train different rows draw different masks.
    fn dropout_seed(&self, seed: u64) -> u64 {
        seed
    }

    /// Whether each process holds state of its own between steps (its
    /// parameters, its optimizer state or [`Self::state`] differ from rank
    /// 0's): a checkpoint on several processes then takes every process's
    /// state ([`Self::gather_bytes`]), and a resume gives each its own.
    fn per_process_state(&self) -> bool {
        false
    }

    /// This process's own state at a step boundary (empty for a strategy without one).
    fn state(&self) -> StrategyState {
        StrategyState::default()
    }

    /// Restores [`Self::state`], after [`Self::start`]; the next step continues exactly.
    fn load_state(&mut self, _state: &StrategyState) -> Result<()> {
        Ok(())
    }

    /// Every process's `mine`, in rank order, on every process (a collective:
    /// all processes call it together). One process: its own.
    fn gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }

    /// Each process's step time, bytes sent and seconds communicating in the
    /// step just taken (`step_s` is this process's), gathered on every
    /// process; empty in a single process.
    fn rank_figures(&mut self, _step_s: f64) -> Result<Vec<crate::events::RankFigures>> {
        Ok(Vec::new())
    }

    /// Applies the update of the (normalised, clipped) gradients at learning rate `lr`:
    /// by default the optimizer's own step on every parameter; a strategy that shards
    /// the optimizer's state (ZeRO) overrides it.
    fn apply(
        &mut self,
        optimizer: &mut dyn Optimizer,
        params: &mut [f32],
        grads: &[f32],
        layout: &ParamLayout,
        lr: f64,
    ) -> Result<()> {
        optimizer.step(params, grads, layout, lr);
        Ok(())
    }

    /// After a step was taken: a strategy that averages parameters now and
    /// then changes `params` here and returns true.
    fn after_step(&mut self, _state: &LoopState, _params: &mut [f32]) -> Result<bool> {
        Ok(false)
    }

    /// Before the final evaluation: a strategy whose processes hold different
    /// parameters makes them one (and returns true); the run's adapter is that.
    fn finish(&mut self, _params: &mut [f32]) -> Result<bool> {
        Ok(false)
    }
}
