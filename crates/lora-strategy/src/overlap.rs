//! `ddp-overlap`: each micro-batch's gradients are all-reduced on a
//! background thread while the next micro-batch computes; the step waits for
//! the last one. The sums are those of `ddp`, so the update is exact.
//!
//! The communicator moves to the thread and back with each all-reduce, so
//! that one thread at a time calls MPI (`MPI_THREAD_SERIALIZED`).

use std::thread::JoinHandle;

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::strategy::{StepSums, Strategy};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::Base;
use crate::comm::{Comm, Meter};

type InFlight = JoinHandle<(Meter, crate::Result<Vec<f32>>)>;

pub struct Overlap {
    /// `None` while the communicator is with an all-reduce in flight.
    base: Option<Base>,
    in_flight: Option<InFlight>,
    /// Sum of the all-reduced micro-batches of this step.
    reduced: Vec<f32>,
    rank: (usize, usize),
}

impl Overlap {
    pub fn new(comm: Box<dyn Comm>) -> Self {
        let meter = Meter::new(comm);
        let rank = (meter.rank(), meter.size());
        Self {
            base: Some(Base::new(meter)),
            in_flight: None,
            reduced: Vec::new(),
            rank,
        }
    }

    /// Waits for the all-reduce in flight, adds its sum, takes the communicator back.
    fn wait(&mut self) -> lora_core::Result<()> {
        if let Some(h) = self.in_flight.take() {
            let (meter, sum) = h
                .join()
                .map_err(|_| lora_core::Error::Other("the all-reduce thread panicked".into()))?;
            self.base = Some(Base::new(meter));
            let sum = sum?;
            if self.reduced.len() != sum.len() {
                self.reduced = vec![0.0; sum.len()];
            }
            self.reduced.iter_mut().zip(sum).for_each(|(r, s)| *r += s);
        }
        Ok(())
    }

    fn base(&mut self) -> lora_core::Result<&mut Base> {
        self.wait()?;
        Ok(self.base.as_mut().expect("the communicator is back after wait"))
    }
}

impl Strategy for Overlap {
    fn name(&self) -> &str {
        "ddp-overlap"
    }
    fn rank(&self) -> (usize, usize) {
        self.rank
    }
    fn all_reduce_f64(&mut self, values: &mut [f64]) -> lora_core::Result<()> {
        Ok(self.base()?.meter.all_reduce_f64(values)?)
    }
    fn dropout_seed(&self, seed: u64) -> u64 {
        match self.rank.0 {
            0 => seed,
            r => lora_core::init::derive_seed(seed, "rank", r as u64),
        }
    }
    fn rank_figures(&mut self, step_s: f64) -> lora_core::Result<Vec<lora_core::events::RankFigures>> {
        Ok(self.base()?.rank_figures(step_s)?)
    }

    fn after_micro_batch(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        self.wait()?;
        let len = sums.grads.len();
        let mut grads = std::mem::replace(&mut sums.grads, vec![0.0; len]);
        let mut meter = self.base.take().expect("the communicator is back after wait").meter;
        self.in_flight = Some(std::thread::spawn(move || {
            let r = meter.all_reduce_f32(&mut grads).map(|()| grads);
            (meter, r)
        }));
        Ok(())
    }

    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        self.wait()?;
        if self.reduced.len() == sums.grads.len() {
            sums.grads.iter_mut().zip(&self.reduced).for_each(|(g, r)| *g += r);
            self.reduced.fill(0.0);
        }
        Ok(self.base()?.reduce_scalars(sums)?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Overlap::new(comm)))
}

inventory::submit! {
    StrategyEntry { name: "ddp-overlap", exact: true, summary: "exact: each micro-batch's all-reduce runs on a thread while the next micro-batch computes", build }
}
