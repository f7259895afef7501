//! `local-sgd` and `diloco`: each rank trains its own replica on its rows and
//! the replicas meet every `sync-every` optimizer steps (and at the end).
//!
//! `local-sgd` averages the parameters. `diloco` (Douillard et al., 2023)
//! treats the averaged change since the last meeting as an outer gradient
//! and takes an outer Nesterov-momentum step from the last meeting point.
//! Optimizer states stay local. Between meetings the replicas differ, so the
//! update is not the one-process update.

use lora_core::LoopState;
use lora_core::ParamLayout;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::strategy::{StepSums, Strategy, StrategyState};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::{Base, from_base};
use crate::comm::{Comm, Meter};

fn default_sync() -> usize {
    4
}
fn default_outer_lr() -> f64 {
    0.7
}
fn default_outer_momentum() -> f64 {
    0.9
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalConfig {
    /// Optimizer steps between meetings.
    #[serde(default = "default_sync")]
    pub sync_every: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DilocoConfig {
    #[serde(default = "default_sync")]
    pub sync_every: usize,
    #[serde(default = "default_outer_lr")]
    pub outer_lr: f64,
    #[serde(default = "default_outer_momentum")]
    pub outer_momentum: f64,
}

/// The outer step of DiLoCo: `anchor` and `momentum` are updated by the averaged delta.
#[derive(Debug, Clone)]
pub struct Outer {
    pub lr: f32,
    pub momentum: f32,
    pub anchor: Vec<f32>,
    pub buf: Vec<f32>,
}

impl Outer {
    /// `delta` is the mean of `anchor - params` over the ranks: Nesterov
    /// momentum as in PyTorch's SGD, `b = mu b + delta`, `anchor -= lr (delta + mu b)`.
    pub fn step(&mut self, delta: &[f32]) {
        for ((a, b), &d) in self.anchor.iter_mut().zip(self.buf.iter_mut()).zip(delta) {
            *b = self.momentum * *b + d;
            *a -= self.lr * (d + self.momentum * *b);
        }
    }
}

pub struct Local {
    base: Base,
    sync_every: usize,
    /// `Some` for DiLoCo.
    outer: Option<Outer>,
    /// Steps since the last meeting.
    since: usize,
}

impl Local {
    pub fn local_sgd(comm: Box<dyn Comm>, sync_every: usize) -> Self {
        Self {
            base: Base::new(Meter::new(comm)),
            sync_every,
            outer: None,
            since: 0,
        }
    }

    pub fn diloco(comm: Box<dyn Comm>, cfg: &DilocoConfig) -> Self {
        Self {
            outer: Some(Outer {
                lr: cfg.outer_lr as f32,
                momentum: cfg.outer_momentum as f32,
                anchor: Vec::new(),
                buf: Vec::new(),
            }),
            ..Self::local_sgd(comm, cfg.sync_every)
        }
    }

    /// The replicas meet: `params` become the average (local SGD) or the outer step's result.
    fn meet(&mut self, params: &mut [f32]) -> lora_core::Result<()> {
        self.since = 0;
        let world = self.base.meter.size() as f32;
        match &mut self.outer {
            None => {
                self.base.meter.all_reduce_f32(params)?;
                params.iter_mut().for_each(|p| *p /= world);
            }
            Some(outer) => {
                let mut delta: Vec<f32> = outer.anchor.iter().zip(params.iter()).map(|(a, p)| a - p).collect();
                self.base.meter.all_reduce_f32(&mut delta)?;
                delta.iter_mut().for_each(|d| *d /= world);
                outer.step(&delta);
                params.copy_from_slice(&outer.anchor);
            }
        }
        Ok(())
    }
}

impl Strategy for Local {
    fn name(&self) -> &str {
        if self.outer.is_some() { "diloco" } else { "local-sgd" }
    }
    from_base!();

    fn start(&mut self, _layout: &ParamLayout, params: &[f32]) -> lora_core::Result<()> {
        if let Some(outer) = &mut self.outer {
            outer.anchor = params.to_vec();
            outer.buf = vec![0.0; params.len()];
        }
        Ok(())
    }

    /// The gradients stay local: they are scaled so that the loop's division
    /// by the global weight gives this rank's mean. The loss is global.
    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        let local = sums.weight;
        self.base.reduce_scalars(sums)?;
        let scale = if local > 0.0 { (sums.weight / local) as f32 } else { 0.0 };
        sums.grads.iter_mut().for_each(|g| *g *= scale);
        Ok(())
    }

    /// Clipping sees this rank's own gradient norm.
    fn global_norm(&mut self, grads: &[f32]) -> lora_core::Result<f64> {
        Ok(grads.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt())
    }

    fn after_step(&mut self, _state: &LoopState, params: &mut [f32]) -> lora_core::Result<bool> {
        self.since += 1;
        if self.since < self.sync_every {
            return Ok(false);
        }
        self.meet(params)?;
        Ok(true)
    }

    fn finish(&mut self, params: &mut [f32]) -> lora_core::Result<bool> {
        if self.since == 0 {
            return Ok(false);
        }
        self.meet(params)?;
        Ok(true)
    }

    /// Between meetings every process has its own parameters and optimizer
    /// state (the loop's), and the steps since the meeting; DiLoCo also the
    /// outer step's anchor and momentum (the same on every process).
    fn per_process_state(&self) -> bool {
        true
    }

    fn state(&self) -> StrategyState {
        let mut state = StrategyState::default();
        state.counters.insert("since".into(), self.since as u64);
        if let Some(outer) = &self.outer {
            state.buffers.insert("anchor".into(), outer.anchor.clone());
            state.buffers.insert("momentum".into(), outer.buf.clone());
        }
        state
    }

    fn load_state(&mut self, state: &StrategyState) -> lora_core::Result<()> {
        self.since = state.counter("since")? as usize;
        if let Some(outer) = &mut self.outer {
            let n = outer.anchor.len();
            outer.anchor = state.buffer("anchor", n)?.to_vec();
            outer.buf = state.buffer("momentum", n)?.to_vec();
        }
        Ok(())
    }
}

fn positive(c: &Component, key: &str, v: usize) -> Result<(), Diagnostics> {
    if v == 0 {
        return Err(Diagnostic::error(
            "strategy::invalid-value",
            format!("{key} (0) must be at least 1. Valid range: 1 <= {key}"),
        )
        .at(c.value_location(key))
        .into());
    }
    Ok(())
}

fn build_local(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let cfg: LocalConfig = c.deserialize()?;
    positive(c, "sync-every", cfg.sync_every)?;
    Ok(Box::new(Local::local_sgd(comm, cfg.sync_every)))
}

fn build_diloco(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let cfg: DilocoConfig = c.deserialize()?;
    positive(c, "sync-every", cfg.sync_every)?;
    if !(cfg.outer_lr > 0.0 && cfg.outer_lr.is_finite()) {
        return Err(Diagnostic::error(
            "strategy::invalid-value",
            format!(
                "outer-lr ({}) must be positive. Valid range: 0 < outer-lr",
                cfg.outer_lr
            ),
        )
        .at(c.value_location("outer-lr"))
        .into());
    }
    if !(0.0..1.0).contains(&cfg.outer_momentum) {
        return Err(Diagnostic::error(
            "strategy::invalid-value",
            format!(
                "outer-momentum ({}) must be in [0, 1). Valid range: 0 <= outer-momentum < 1",
                cfg.outer_momentum
            ),
        )
        .at(c.value_location("outer-momentum"))
        .into());
    }
    Ok(Box::new(Local::diloco(comm, &cfg)))
}

inventory::submit! {
    StrategyEntry { name: "local-sgd", exact: false, summary: "inexact: local steps, parameters averaged every sync-every steps", build: build_local }
}
inventory::submit! {
    StrategyEntry { name: "diloco", exact: false, summary: "inexact: local steps, then an outer Nesterov step on the averaged change every sync-every steps", build: build_diloco }
}
