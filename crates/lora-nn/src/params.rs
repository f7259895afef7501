//! The ordered store of trainable parameters, named with their PEFT keys: one
//! bookkeeping for every model and backend. Layers hold clones of the leaf
//! handles; the store reads, writes and collects gradients in its order.

use lora_core::Result;
use lora_core::adapter::{ParamInfo, check_param_values};

use crate::ops::TensorOps;

pub struct ParamStore<O: TensorOps> {
    infos: Vec<ParamInfo>,
    leaves: Vec<O::Leaf>,
}

impl<O: TensorOps> Default for ParamStore<O> {
    fn default() -> Self {
        Self {
            infos: Vec::new(),
            leaves: Vec::new(),
        }
    }
}

impl<O: TensorOps> ParamStore<O> {
    /// Registers a parameter computed with `compute_shape` and saved with `info.shape`.
    pub fn add(&mut self, ops: &O, info: ParamInfo, values: Vec<f32>) -> Result<O::Leaf> {
        let leaf = ops.leaf(values, &info.compute_shape)?;
        self.infos.push(info);
        self.leaves.push(leaf.clone());
        Ok(leaf)
    }

    pub fn infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    pub fn leaves(&self) -> &[O::Leaf] {
        &self.leaves
    }

    /// Values in trainable numbers.
    pub fn numel(&self) -> usize {
        self.infos.iter().map(ParamInfo::numel).sum()
    }

    pub fn read(&self, ops: &O) -> Result<Vec<Vec<f32>>> {
        self.leaves.iter().map(|l| ops.leaf_to_host(l)).collect()
    }

    /// Checks every value first, so that a bad call changes nothing.
    pub fn write(&self, ops: &O, values: &[Vec<f32>]) -> Result<()> {
        check_param_values(&self.infos, values)?;
        for (leaf, v) in self.leaves.iter().zip(values) {
            ops.set_leaf(leaf, v)?;
        }
        Ok(())
    }

    /// The gradients as one flat buffer in store order; zeros for a parameter that took no part.
    pub fn grads(&self, ops: &O, grads: &O::Grads) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.numel());
        for (leaf, info) in self.leaves.iter().zip(&self.infos) {
            match ops.grad(grads, leaf)? {
                Some(g) => out.extend(g),
                None => out.resize(out.len() + info.numel(), 0.0),
            }
        }
        Ok(out)
    }
}
