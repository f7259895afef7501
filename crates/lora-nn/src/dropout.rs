//! Dropout as a multiplication by a mask drawn on the host from the core's
//! counter-based streams, in a fixed order: every backend draws the same numbers.

use lora_core::Result;
use lora_core::init::{SeededRng, dropout_mask};

use crate::ops::TensorOps;

/// Cloned at each checkpoint, so that a recomputed segment draws its masks again.
#[derive(Clone)]
pub struct MaskSource {
    rng: SeededRng,
}

impl MaskSource {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: lora_core::init::rng(seed),
        }
    }

    /// `x * mask` with an inverted-dropout mask of `x`'s shape; `x` itself when `p` is 0.
    pub fn apply<O: TensorOps>(&mut self, ops: &O, x: &O::T, p: f32) -> Result<O::T> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let dims = ops.dims(x);
        let mask = dropout_mask(p, dims.iter().product(), &mut self.rng);
        ops.mul(x, &ops.tensor(mask, &dims)?)
    }
}
