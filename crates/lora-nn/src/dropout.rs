//! Dropout masks, drawn from the core's seeded streams so that every backend
//! draws the same numbers.
//!
//! Two kinds: the adapters' and the head's masks are drawn on the host from a
//! sequential stream in a fixed order (kept as they were, so that recorded
//! results stay); the base model's own hidden and attention dropout uses
//! counter-based masks ([`CounterMask`]), one key per application, which the
//! backends' kernels evaluate where they need them (no mask tensor at all in
//! the fused attention).

use lora_core::Result;
use lora_core::init::{CounterMask, SeededRng, derive_seed, dropout_mask};

use crate::ops::TensorOps;

/// Cloned at each checkpoint, so that a recomputed segment draws its masks again.
#[derive(Clone)]
pub struct MaskSource {
    rng: SeededRng,
    seed: u64,
    /// Counter-based masks handed out so far: the next one's index.
    counters: u64,
}

impl MaskSource {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: lora_core::init::rng(seed),
            seed,
            counters: 0,
        }
    }

    /// `x * mask` with an inverted-dropout mask of `x`'s shape; `x` itself when `p` is 0.
    pub fn apply<O: TensorOps>(&mut self, ops: &O, x: &O::T, p: f32) -> Result<O::T> {
        let dims = ops.dims(x);
        match self.values(dims.iter().product(), p) {
            Some(mask) => ops.mul(x, &ops.tensor(mask, &dims)?),
            None => Ok(x.clone()),
        }
    }

    /// The mask [`Self::apply`] would multiply `len` values by (the same draw);
    /// `None` (and nothing drawn) when `p` is 0.
    pub fn values(&mut self, len: usize, p: f32) -> Option<Vec<f32>> {
        (p > 0.0).then(|| dropout_mask(p, len, &mut self.rng))
    }

    /// The next counter-based mask of probability `p`; `None` (and nothing
    /// drawn) when `p` is 0. Its stream is apart from [`Self::apply`]'s, so
    /// turning the base's dropout on or off leaves the adapters' masks alone.
    pub fn counter(&mut self, p: f32) -> Option<CounterMask> {
        let mask = CounterMask::new(derive_seed(self.seed, "base-dropout", self.counters), p)?;
        self.counters += 1;
        Some(mask)
    }

    /// Base-model dropout of `x`: `x` itself when `p` is 0.
    pub fn base<O: TensorOps>(&mut self, ops: &O, x: &O::T, p: f32) -> Result<O::T> {
        match self.counter(p) {
            Some(mask) => ops.dropout(x, mask),
            None => Ok(x.clone()),
        }
    }
}
