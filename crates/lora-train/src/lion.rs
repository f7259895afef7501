//! `[train.optimizer] type = "lion"`: Lion (Chen et al. 2023, "Symbolic
//! Discovery of Optimization Algorithms"), with lion-pytorch's update rule.
//!
//! One moment per weight (half of AdamW's state); every update has the same
//! size `lr` per weight, its direction the sign of an interpolation between
//! the moment and the gradient.

use lora_core::ParamLayout;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::optim::{Optimizer, OptimizerState};
use lora_core::registry::OptimizerEntry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LionConfig {
    pub lr: f64,
    /// `beta1` interpolates the update's direction, `beta2` the moment.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Decoupled: each weight shrinks by `lr * weight_decay` before the update.
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.99]
}

pub struct Lion {
    cfg: LionConfig,
    step: u64,
    /// The moment, flat in the parameter layout; empty before the first step.
    exp_avg: Vec<f32>,
}

impl Lion {
    pub fn new(cfg: LionConfig) -> Self {
        Self {
            cfg,
            step: 0,
            exp_avg: Vec::new(),
        }
    }
}

/// PyTorch's `sign`: zero stays zero (`f32::signum` would give 1).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl Optimizer for Lion {
    fn base_lr(&self) -> f64 {
        self.cfg.lr
    }

    fn resolved(&self) -> serde_json::Value {
        crate::with_type("lion", &self.cfg)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            optimizer: "lion".into(),
            step: self.step,
            buffers: crate::optim::buffers([("exp_avg", &self.exp_avg)]),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> lora_core::Result<()> {
        let len = state.buffers.values().next().map_or(0, Vec::len);
        state.check("lion", len)?;
        self.step = state.step;
        self.exp_avg = state.buffers.get("exp_avg").cloned().unwrap_or_default();
        Ok(())
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], layout: &ParamLayout, lr: f64) {
        if self.exp_avg.len() != params.len() {
            self.exp_avg = vec![0.0; params.len()];
        }
        self.step += 1;
        let [b1, b2] = self.cfg.betas.map(|b| b as f32);
        let lr32 = lr as f32;
        for (info, range) in layout.segments() {
            let keep = if info.weight_decay {
                (1.0 - lr * self.cfg.weight_decay) as f32
            } else {
                1.0
            };
            for j in range {
                let (p, g, m) = (&mut params[j], grads[j], &mut self.exp_avg[j]);
                *p *= keep;
                *p -= lr32 * sign(*m * b1 + g * (1.0 - b1));
                *m = *m * b2 + g * (1.0 - b2);
            }
        }
    }
}

fn build(c: &Component) -> Result<Box<dyn Optimizer>, Diagnostics> {
    let cfg: LionConfig = c.deserialize()?;
    crate::optim::check_lr(c, cfg.lr)?;
    if cfg.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
        return Err(Diagnostic::error(
            "train::invalid-betas",
            format!("betas ({:?}) must each lie in 0 <= beta < 1", cfg.betas),
        )
        .at(c.value_location("betas"))
        .into());
    }
    Ok(Box::new(Lion::new(cfg)))
}

inventory::submit! {
    OptimizerEntry { name: "lion", summary: "Lion: sign of interpolated momentum, decoupled weight decay (lion-pytorch semantics)", build }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_moves_by_lr_and_zero_gradients_do_not_move() {
        let layout = ParamLayout::new(&[lora_core::ParamInfo::new("p", vec![3], false)]);
        let mut opt = Lion::new(LionConfig {
            lr: 0.1,
            betas: [0.9, 0.99],
            weight_decay: 0.0,
        });
        let mut p = vec![1.0, 1.0, 1.0];
        opt.step(&mut p, &[1e-9, -5.0, 0.0], &layout, 0.1);
        assert_eq!(p, vec![0.9, 1.1, 1.0]);
        // The moment now remembers the gradients: a zero gradient keeps their direction.
        opt.step(&mut p, &[0.0, 0.0, 0.0], &layout, 0.1);
        assert!((p[0] - 0.8).abs() < 1e-6 && (p[1] - 1.2).abs() < 1e-6 && p[2] == 1.0);
        assert!((opt.state().buffers["exp_avg"][1] + 5.0 * 0.01 * 0.99).abs() < 1e-7);
    }
}
