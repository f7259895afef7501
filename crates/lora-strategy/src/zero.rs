//! `zero1` and `zero2`: the optimizer state is sharded by parameter tensor.
//!
//! Each tensor belongs to one rank (tensors dealt greedily to the rank with
//! the fewest values, in layout order, the same on every rank). A rank keeps
//! the optimizer state of its tensors only: the summed gradients are
//! reduce-scattered (each rank receives the sum of its tensors), it updates
//! them with its optimizer, and the updated tensors are all-gathered. The
//! buffers are laid out rank by rank, each block padded to the largest, so
//! that one reduce-scatter and one all-gather move them.
//!
//! `zero1` accumulates the whole gradient locally and reduce-scatters at the
//! step; `zero2` reduce-scatters after every micro-batch and keeps only its
//! part of the accumulated gradient (ZeRO stage 2's gradient partitioning).
//! Tensors are never split, so every optimizer (Adafactor's factored moments
//! too) sees whole tensors, and the update is the one-process update.

use lora_core::ParamLayout;
use lora_core::config::Component;
use lora_core::optim::Optimizer;
use lora_core::strategy::{StepSums, Strategy};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::{Base, from_base};
use crate::comm::{Comm, Meter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

/// Which rank owns which tensor, and where each value goes in the padded blocks.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Owner of each tensor.
    pub owner: Vec<usize>,
    /// Values per rank's block (the largest rank's count).
    pub block: usize,
    /// For each rank, the flat ranges (in the layout) of its tensors, in order.
    pub ranges: Vec<Vec<std::ops::Range<usize>>>,
}

impl Partition {
    pub fn new(layout: &ParamLayout, world: usize) -> Self {
        let mut load = vec![0usize; world];
        let mut owner = Vec::new();
        let mut ranges = vec![Vec::new(); world];
        for (i, _) in layout.params().iter().enumerate() {
            let r = layout.range(i);
            let rank = (0..world).min_by_key(|&k| (load[k], k)).expect("world >= 1");
            load[rank] += r.len();
            owner.push(rank);
            ranges[rank].push(r);
        }
        Self {
            owner,
            block: load.into_iter().max().unwrap_or(0),
            ranges,
        }
    }

    /// The flat buffer as `world` padded blocks.
    fn pack(&self, flat: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.block * self.ranges.len()];
        for (rank, rs) in self.ranges.iter().enumerate() {
            let mut at = rank * self.block;
            for r in rs {
                out[at..at + r.len()].copy_from_slice(&flat[r.clone()]);
                at += r.len();
            }
        }
        out
    }

    /// Padded blocks back into the flat buffer.
    fn unpack(&self, packed: &[f32], flat: &mut [f32]) {
        for rank in 0..self.ranges.len() {
            self.unpack_block(rank, &packed[rank * self.block..(rank + 1) * self.block], flat);
        }
    }

    /// One rank's block into its places of the flat buffer.
    fn unpack_block(&self, rank: usize, block: &[f32], flat: &mut [f32]) {
        let mut at = 0;
        for r in &self.ranges[rank] {
            flat[r.clone()].copy_from_slice(&block[at..at + r.len()]);
            at += r.len();
        }
    }

    /// The layout of one rank's tensors, contiguous.
    fn sub_layout(&self, layout: &ParamLayout, rank: usize) -> ParamLayout {
        let infos: Vec<_> = layout
            .params()
            .iter()
            .zip(&self.owner)
            .filter(|(_, o)| **o == rank)
            .map(|(p, _)| p.clone())
            .collect();
        ParamLayout::new(&infos)
    }
}

pub struct Zero {
    base: Base,
    stage2: bool,
    partition: Option<Partition>,
    /// This rank's block of the summed gradients (`zero2` accumulates into it).
    mine: Vec<f32>,
}

impl Zero {
    pub fn new(comm: Box<dyn Comm>, stage2: bool) -> Self {
        Self {
            base: Base::new(Meter::new(comm)),
            stage2,
            partition: None,
            mine: Vec::new(),
        }
    }

    fn scatter(&mut self, grads: &[f32]) -> lora_core::Result<()> {
        let p = self.partition.as_ref().expect("partition made in start");
        let packed = p.pack(grads);
        let mut block = vec![0.0; p.block];
        self.base.meter.reduce_scatter_f32(&packed, &mut block)?;
        if self.mine.len() != block.len() {
            self.mine = vec![0.0; block.len()];
        }
        for (m, b) in self.mine.iter_mut().zip(block) {
            *m += b;
        }
        Ok(())
    }
}

impl Strategy for Zero {
    fn name(&self) -> &str {
        if self.stage2 { "zero2" } else { "zero1" }
    }
    from_base!();

    fn start(&mut self, layout: &ParamLayout, _params: &[f32]) -> lora_core::Result<()> {
        let p = Partition::new(layout, self.base.meter.size());
        self.mine = vec![0.0; p.block];
        self.partition = Some(p);
        Ok(())
    }

    fn after_micro_batch(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        if !self.stage2 {
            return Ok(());
        }
        self.scatter(&sums.grads)?;
        sums.grads.fill(0.0);
        Ok(())
    }

    /// Leaves this rank's tensors' summed gradients in `sums.grads` (zeros elsewhere).
    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        if !self.stage2 {
            self.scatter(&sums.grads)?;
        }
        let p = self.partition.as_ref().expect("partition made in start");
        sums.grads.fill(0.0);
        p.unpack_block(self.base.meter.rank(), &self.mine, &mut sums.grads);
        self.mine.fill(0.0);
        Ok(self.base.reduce_scalars(sums)?)
    }

    fn global_norm(&mut self, grads: &[f32]) -> lora_core::Result<f64> {
        // Each rank holds its tensors' gradients, zeros elsewhere.
        Ok(self.base.sharded_norm(grads)?)
    }

    fn apply(
        &mut self,
        optimizer: &mut dyn Optimizer,
        params: &mut [f32],
        grads: &[f32],
        layout: &ParamLayout,
        lr: f64,
    ) -> lora_core::Result<()> {
        let rank = self.base.meter.rank();
        let p = self.partition.as_ref().expect("partition made in start");
        let sub = p.sub_layout(layout, rank);
        let gather =
            |flat: &[f32]| -> Vec<f32> { p.ranges[rank].iter().flat_map(|r| flat[r.clone()].to_vec()).collect() };
        let (mut own, own_grads) = (gather(params), gather(grads));
        optimizer.step(&mut own, &own_grads, &sub, lr);
        let mut block = own;
        block.resize(p.block, 0.0);
        let mut all = vec![0.0; p.block * self.base.meter.size()];
        self.base.meter.all_gather_f32(&block, &mut all)?;
        p.unpack(&all, params);
        Ok(())
    }

    /// Each process's optimizer holds its tensors' state only; between steps
    /// the strategy itself holds nothing (its gradient block is empty).
    fn per_process_state(&self) -> bool {
        true
    }
}

fn build1(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, lora_core::diag::Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Zero::new(comm, false)))
}

fn build2(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, lora_core::diag::Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Zero::new(comm, true)))
}

inventory::submit! {
    StrategyEntry { name: "zero1", exact: true, summary: "exact: optimizer state sharded by tensor; reduce-scatter, local update, all-gather", build: build1 }
}
inventory::submit! {
    StrategyEntry { name: "zero2", exact: true, summary: "exact: zero1 with the gradients sharded too (reduce-scatter after every micro-batch)", build: build2 }
}
