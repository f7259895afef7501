//! `ddp` and `ddp-no-sync`: every rank holds the whole model and optimizer;
//! the gradients are summed over the ranks before the update.
//!
//! `ddp` all-reduces after every micro-batch, as PyTorch's DDP does outside
//! `no_sync()`; `ddp-no-sync` accumulates the micro-batches locally and
//! all-reduces once, at the accumulation boundary (accumulation-steps times
//! fewer bytes, the same update).

use lora_core::config::Component;
use lora_core::strategy::{StepSums, Strategy};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::{Base, from_base};
use crate::comm::{Comm, Meter};

/// Neither strategy has options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

pub struct Ddp {
    base: Base,
    /// Summed gradients of the micro-batches already reduced (`ddp` only).
    reduced: Option<Vec<f32>>,
}

impl Ddp {
    /// `per_micro_batch`: `ddp`; otherwise `ddp-no-sync`.
    pub fn new(comm: Box<dyn Comm>, per_micro_batch: bool) -> Self {
        Self {
            base: Base::new(Meter::new(comm)),
            reduced: per_micro_batch.then(Vec::new),
        }
    }
}

impl Strategy for Ddp {
    fn name(&self) -> &str {
        if self.reduced.is_some() { "ddp" } else { "ddp-no-sync" }
    }
    from_base!();

    fn after_micro_batch(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        let Some(reduced) = &mut self.reduced else {
            return Ok(());
        };
        self.base.meter.all_reduce_f32(&mut sums.grads)?;
        if reduced.len() != sums.grads.len() {
            *reduced = vec![0.0; sums.grads.len()];
        }
        for (r, g) in reduced.iter_mut().zip(sums.grads.iter_mut()) {
            *r += *g;
            *g = 0.0;
        }
        Ok(())
    }

    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        match &mut self.reduced {
            Some(reduced) if reduced.len() == sums.grads.len() => {
                std::mem::swap(&mut sums.grads, reduced);
                reduced.fill(0.0);
            }
            Some(_) => {}
            None => self.base.meter.all_reduce_f32(&mut sums.grads)?,
        }
        Ok(self.base.reduce_scalars(sums)?)
    }
}

fn build_ddp(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, lora_core::diag::Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Ddp::new(comm, true)))
}

fn build_no_sync(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, lora_core::diag::Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Ddp::new(comm, false)))
}

inventory::submit! {
    StrategyEntry { name: "ddp", exact: true, summary: "exact: all-reduce of the gradients after every micro-batch", build: build_ddp }
}
inventory::submit! {
    StrategyEntry { name: "ddp-no-sync", exact: true, summary: "exact: accumulates locally and all-reduces once per optimizer step", build: build_no_sync }
}
