//! The training loop's position, as plain data: where in which epoch, how many
//! micro-batches and optimizer steps, the learning-rate scale left by
//! rollbacks, and the counters of the random streams. Everything the loop
//! needs to continue from a given point is here or in the optimizer's and the
//! callbacks' own serializable state.

use serde::{Deserialize, Serialize};

use crate::init::derive_seed;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// The run seed: every stream below is derived from it and a counter.
    pub seed: u64,
    /// The current epoch, 0-based: the counter of the epoch-order stream.
    pub epoch: usize,
    /// Micro-batches of the current epoch consumed so far (the position in its order).
    pub batch_in_epoch: usize,
    /// Micro-batches consumed in the whole run: the counter of the dropout streams.
    pub micro_step: u64,
    /// Optimizer steps taken (a step whose update was refused does not count).
    pub step: usize,
    /// Product of the learning-rate factors of every rollback so far.
    pub lr_scale: f64,
    /// Epochs whose every micro-batch was consumed.
    pub epochs_completed: usize,
    /// The epoch of the last optimizer step (0 before the first).
    pub last_step_epoch: usize,
}

impl LoopState {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            epoch: 0,
            batch_in_epoch: 0,
            micro_step: 0,
            step: 0,
            lr_scale: 1.0,
            epochs_completed: 0,
            last_step_epoch: 0,
        }
    }

    /// The seed of the current epoch's shuffled order.
    pub fn order_seed(&self) -> u64 {
        derive_seed(self.seed, "epoch-order", self.epoch as u64)
    }

    /// The seed of the next micro-batch's dropout masks.
    pub fn dropout_seed(&self) -> u64 {
        derive_seed(self.seed, "dropout", self.micro_step)
    }

    /// One micro-batch consumed.
    pub fn micro(&mut self) {
        self.micro_step += 1;
        self.batch_in_epoch += 1;
    }

    /// One optimizer step taken.
    pub fn step(&mut self) {
        self.step += 1;
        self.last_step_epoch = self.epoch;
    }

    /// The current epoch's last micro-batch was consumed: the next epoch starts.
    pub fn end_epoch(&mut self) {
        self.epochs_completed += 1;
        self.epoch += 1;
        self.batch_in_epoch = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_and_round_trip_through_json() {
        let mut s = LoopState::new(42);
        let first = s.dropout_seed();
        s.micro();
        s.micro();
        s.step();
        assert_ne!(first, s.dropout_seed());
        assert_eq!((s.micro_step, s.batch_in_epoch, s.step), (2, 2, 1));
        let order = s.order_seed();
        s.end_epoch();
        assert_eq!((s.epoch, s.epochs_completed, s.batch_in_epoch), (1, 1, 0));
        assert_ne!(order, s.order_seed());
        let back: LoopState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
