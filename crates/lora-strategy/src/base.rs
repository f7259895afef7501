//! What every strategy shares: the metered communicator, the step's scalars,
//! the dropout streams and the per-rank figures.

use lora_core::events::RankFigures;
use lora_core::strategy::StepSums;

use crate::Result;
use crate::comm::Meter;

pub struct Base {
    pub meter: Meter,
}

impl Base {
    pub fn new(meter: Meter) -> Self {
        Self { meter }
    }

    pub fn rank(&self) -> (usize, usize) {
        (self.meter.rank(), self.meter.size())
    }

    /// Sums the step's weight, loss, examples and work over the ranks, so that
    /// every rank reports (and its callbacks decide on) the global step.
    pub fn reduce_scalars(&mut self, sums: &mut StepSums) -> Result<()> {
        let mut s = [sums.weight, sums.loss_sum, sums.examples as f64, sums.work as f64];
        self.meter.all_reduce_f64(&mut s)?;
        sums.weight = s[0];
        sums.loss_sum = s[1];
        sums.examples = s[2].round() as usize;
        sums.work = s[3].round() as usize;
        Ok(())
    }

    /// Ranks train different rows: each draws its own dropout masks (rank 0
    /// keeps the one-process stream).
    pub fn dropout_seed(&self, seed: u64) -> u64 {
        match self.meter.rank() {
            0 => seed,
            r => lora_core::init::derive_seed(seed, "rank", r as u64),
        }
    }

    /// Every rank's step time, bytes and communication seconds since the last call.
    pub fn rank_figures(&mut self, step_s: f64) -> Result<Vec<RankFigures>> {
        let (bytes, comm_s) = self.meter.take();
        let size = self.meter.size();
        if size == 1 {
            return Ok(vec![RankFigures {
                rank: 0,
                step_s,
                bytes_sent: bytes,
                comm_s,
            }]);
        }
        let mine: Vec<u8> = [step_s, bytes, comm_s].iter().flat_map(|v| v.to_le_bytes()).collect();
        // Gathering the figures is bookkeeping, not the step's traffic: not metered.
        let all = self.meter.all_gather_u8(&mine)?;
        self.meter.take();
        Ok(all
            .chunks_exact(24)
            .enumerate()
            .map(|(rank, c)| {
                let f = |i: usize| f64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                RankFigures {
                    rank,
                    step_s: f(0),
                    bytes_sent: f(1),
                    comm_s: f(2),
                }
            })
            .collect())
    }

    /// Global L2 norm of gradients of which each rank holds a part.
    pub fn sharded_norm(&mut self, part: &[f32]) -> Result<f64> {
        let mut sq = [part.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>()];
        self.meter.all_reduce_f64(&mut sq)?;
        Ok(sq[0].sqrt())
    }
}

/// The [`Strategy`](lora_core::strategy::Strategy) methods a strategy answers
/// from its `base: Base` field as they are: its rank, the scalars' all-reduce,
/// the dropout seed, the checkpoints' gather and, unless it writes its own (`except rank_figures`: a
/// strategy with more communicators than the base's), its traffic figures.
macro_rules! from_base {
    () => {
        $crate::base::from_base!(except rank_figures);
        fn rank_figures(&mut self, step_s: f64) -> lora_core::Result<Vec<lora_core::events::RankFigures>> {
            Ok(self.base.rank_figures(step_s)?)
        }
    };
    (except rank_figures) => {
        fn rank(&self) -> (usize, usize) {
            self.base.rank()
        }
        fn all_reduce_f64(&mut self, values: &mut [f64]) -> lora_core::Result<()> {
            Ok(self.base.meter.all_reduce_f64(values)?)
        }
        fn dropout_seed(&self, seed: u64) -> u64 {
            self.base.dropout_seed(seed)
        }
        fn gather_bytes(&mut self, mine: &[u8]) -> lora_core::Result<Vec<Vec<u8>>> {
            Ok(self.base.meter.gather_bytes(mine)?)
        }
    };
}
pub(crate) use from_base;
