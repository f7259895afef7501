//! Lossy gradient exchange: `fp16-compress`, `bf16-compress` and `topk`.
//!
//! The 16-bit strategies send each rank's gradient sum, divided by the world
//! size first (as PyTorch's compression hooks do, to stay in fp16's range),
//! in 16 bits; the ranks' parts are summed in f32. `topk` sends the k
//! largest entries (in magnitude) of the gradient plus the error it has not
//! sent yet (error feedback, Stich et al. 2018): what is left out is carried
//! to the next step, so that over the steps everything is sent. With
//! `warmup-steps` W, the ratio starts dense and decays exponentially to
//! `ratio` over the first W steps (deep gradient compression's sparsity
//! warm-up, Lin et al. 2018): the early, large and fast-changing gradients
//! are not held back in the residual.

use half::{bf16, f16};
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::strategy::{StepSums, Strategy, StrategyState};
use serde::Deserialize;

use crate::StrategyEntry;
use crate::base::{Base, from_base};
use crate::comm::{Comm, Meter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    fn encode(self, v: f32) -> u16 {
        match self {
            Half::F16 => f16::from_f32(v).to_bits(),
            Half::Bf16 => bf16::from_f32(v).to_bits(),
        }
    }
    fn decode(self, b: u16) -> f32 {
        match self {
            Half::F16 => f16::from_bits(b).to_f32(),
            Half::Bf16 => bf16::from_bits(b).to_f32(),
        }
    }
}

/// How the gradients travel.
pub enum Codec {
    Half(Half),
    TopK {
        ratio: f64,
        /// Steps over which the sent fraction decays from 1 to `ratio`.
        warmup_steps: u64,
        /// Steps exchanged so far (the warm-up's clock).
        steps: u64,
        /// What was not sent yet, per value.
        residual: Vec<f32>,
    },
}

impl Codec {
    /// `topk` sending `ratio` of the values, dense at first and decaying to
    /// `ratio` over `warmup_steps` steps (none at 0).
    pub fn top_k(ratio: f64, warmup_steps: u64) -> Self {
        Codec::TopK {
            ratio,
            warmup_steps,
            steps: 0,
            residual: Vec::new(),
        }
    }
}

pub struct Compressed {
    base: Base,
    codec: Codec,
}

impl Compressed {
    pub fn new(comm: Box<dyn Comm>, codec: Codec) -> Self {
        Self {
            base: Base::new(Meter::new(comm)),
            codec,
        }
    }

    /// The values `topk` will send of `grads` (after the residual is added): k indices.
    pub fn k(ratio: f64, n: usize) -> usize {
        ((ratio * n as f64).ceil() as usize).clamp(1, n.max(1))
    }

    /// The fraction `topk` sends at step `step` (0-based): `ratio^(step / warmup)`
    /// during the warm-up (1 at step 0), `ratio` after it.
    pub fn warmup_ratio(ratio: f64, warmup_steps: u64, step: u64) -> f64 {
        if step >= warmup_steps {
            ratio
        } else {
            ratio.powf(step as f64 / warmup_steps as f64)
        }
    }

    /// The residual that `topk` carries (empty for the 16-bit codecs).
    pub fn residual(&self) -> &[f32] {
        match &self.codec {
            Codec::TopK { residual, .. } => residual,
            Codec::Half(_) => &[],
        }
    }

    fn exchange(&mut self, grads: &mut [f32]) -> lora_core::Result<()> {
        let world = self.base.meter.size();
        match &mut self.codec {
            Codec::Half(h) => {
                let h = *h;
                let inv = 1.0 / world as f32;
                let mine: Vec<u8> = grads.iter().flat_map(|&g| h.encode(g * inv).to_le_bytes()).collect();
                let all = self.base.meter.all_gather_u8(&mine)?;
                grads.fill(0.0);
                for part in all.chunks_exact(mine.len().max(1)) {
                    for (g, b) in grads.iter_mut().zip(part.chunks_exact(2)) {
                        *g += h.decode(u16::from_le_bytes([b[0], b[1]])) * world as f32;
                    }
                }
            }
            Codec::TopK {
                ratio,
                warmup_steps,
                steps,
                residual,
            } => {
                if residual.len() != grads.len() {
                    *residual = vec![0.0; grads.len()];
                }
                for (r, g) in residual.iter_mut().zip(grads.iter()) {
                    *r += g;
                }
                let k = Self::k(Self::warmup_ratio(*ratio, *warmup_steps, *steps), grads.len());
                *steps += 1;
                let mut order: Vec<u32> = (0..grads.len() as u32).collect();
                // Ties broken by index, so the choice does not depend on the sort.
                order.select_nth_unstable_by(k - 1, |&a, &b| {
                    residual[b as usize]
                        .abs()
                        .total_cmp(&residual[a as usize].abs())
                        .then(a.cmp(&b))
                });
                let mut mine = Vec::with_capacity(k * 8);
                for &i in &order[..k] {
                    mine.extend_from_slice(&i.to_le_bytes());
                    mine.extend_from_slice(&residual[i as usize].to_le_bytes());
                    residual[i as usize] = 0.0;
                }
                let all = self.base.meter.all_gather_u8(&mine)?;
                grads.fill(0.0);
                for pair in all.chunks_exact(8) {
                    let i = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes")) as usize;
                    grads[i] += f32::from_le_bytes(pair[4..].try_into().expect("4 bytes"));
                }
            }
        }
        Ok(())
    }
}

impl Strategy for Compressed {
    fn name(&self) -> &str {
        match self.codec {
            Codec::Half(Half::F16) => "fp16-compress",
            Codec::Half(Half::Bf16) => "bf16-compress",
            Codec::TopK { .. } => "topk",
        }
    }
    from_base!();

    fn reduce(&mut self, sums: &mut StepSums) -> lora_core::Result<()> {
        self.exchange(&mut sums.grads)?;
        Ok(self.base.reduce_scalars(sums)?)
    }

    fn per_process_state(&self) -> bool {
        matches!(self.codec, Codec::TopK { .. })
    }

    /// `topk`: the residual and the warm-up's step count.
    fn state(&self) -> StrategyState {
        let mut state = StrategyState::default();
        if let Codec::TopK { steps, residual, .. } = &self.codec {
            state.buffers.insert("residual".into(), residual.clone());
            state.counters.insert("steps".into(), *steps);
        }
        state
    }

    fn load_state(&mut self, state: &StrategyState) -> lora_core::Result<()> {
        if let Codec::TopK { steps, residual, .. } = &mut self.codec {
            // Empty until the first step sized it.
            let saved = state.buffers.get("residual").map_or(0, Vec::len);
            *residual = state.buffer("residual", saved)?.to_vec();
            *steps = state.counter("steps")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn default_ratio() -> f64 {
    0.01
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopKConfig {
    /// Fraction of the values sent per step.
    #[serde(default = "default_ratio")]
    ratio: f64,
    /// Steps over which the sent fraction decays from dense to `ratio` (0: none).
    #[serde(default, rename = "warmup-steps")]
    warmup_steps: u64,
}

fn build_f16(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Compressed::new(comm, Codec::Half(Half::F16))))
}

fn build_bf16(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let _: NoOptions = c.deserialize()?;
    Ok(Box::new(Compressed::new(comm, Codec::Half(Half::Bf16))))
}

fn build_topk(c: &Component, comm: Box<dyn Comm>) -> Result<Box<dyn Strategy>, Diagnostics> {
    let cfg: TopKConfig = c.deserialize()?;
    if !(cfg.ratio > 0.0 && cfg.ratio <= 1.0) {
        return Err(Diagnostic::error(
            "strategy::invalid-value",
            format!("ratio ({}) must be in (0, 1]. Valid range: 0 < ratio <= 1", cfg.ratio),
        )
        .at(c.value_location("ratio"))
        .into());
    }
    Ok(Box::new(Compressed::new(
        comm,
        Codec::top_k(cfg.ratio, cfg.warmup_steps),
    )))
}

inventory::submit! {
    StrategyEntry { name: "fp16-compress", exact: false, summary: "inexact: gradients sent in fp16 (divided by the world size first), summed in f32", build: build_f16 }
}
inventory::submit! {
    StrategyEntry { name: "bf16-compress", exact: false, summary: "inexact: gradients sent in bf16, summed in f32", build: build_bf16 }
}
inventory::submit! {
    StrategyEntry { name: "topk", exact: false, summary: "inexact: the largest `ratio` of the gradient values sent, the rest carried over (error feedback)", build: build_topk }
}
