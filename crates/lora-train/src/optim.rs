//! Optimizers with PyTorch's update rules, on host vectors.

use std::collections::BTreeMap;

use lora_core::ParamLayout;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::optim::{Optimizer, OptimizerState};
use lora_core::registry::OptimizerEntry;
use serde::{Deserialize, Serialize};

/// `[train.optimizer] type = "adamw"`: Adam with decoupled weight decay (`torch.optim.AdamW`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdamWConfig {
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

pub struct AdamW {
    cfg: AdamWConfig,
    step: u64,
    /// First and second moments, flat in the parameter layout; empty before the first step.
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
}

/// Named buffers of a state, leaving out those not created yet.
pub(crate) fn buffers<const N: usize>(named: [(&str, &Vec<f32>); N]) -> BTreeMap<String, Vec<f32>> {
    named
        .into_iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(n, b)| (n.to_string(), b.clone()))
        .collect()
}

impl Optimizer for AdamW {
    fn base_lr(&self) -> f64 {
        self.cfg.lr
    }

    fn resolved(&self) -> serde_json::Value {
        crate::with_type("adamw", &self.cfg)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            optimizer: "adamw".into(),
            step: self.step,
            buffers: buffers([("exp_avg", &self.m), ("exp_avg_sq", &self.v)]),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> lora_core::Result<()> {
        let len = state.buffers.values().next().map_or(0, Vec::len);
        state.check("adamw", len)?;
        let get = |name: &str| state.buffers.get(name).cloned().unwrap_or_default();
        (self.step, self.m, self.v) = (state.step, get("exp_avg"), get("exp_avg_sq"));
        Ok(())
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], layout: &ParamLayout, lr: f64) {
        if self.m.len() != params.len() {
            self.m = vec![0.0; params.len()];
            self.v = vec![0.0; params.len()];
        }
        self.step += 1;
        let [b1, b2] = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps) = (b1 as f32, b2 as f32, self.cfg.eps as f32);
        for (info, range) in layout.segments() {
            let decay = if info.weight_decay {
                (lr * self.cfg.weight_decay) as f32
            } else {
                0.0
            };
            for j in range {
                let (p, g) = (&mut params[j], grads[j]);
                let (m, v) = (&mut self.m[j], &mut self.v[j]);
                *p -= decay * *p;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        }
    }
}

/// `[train.optimizer] type = "sgd"`: SGD with momentum, dampening and Nesterov (`torch.optim.SGD`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SgdConfig {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub dampening: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// L2 penalty added to the gradient, as PyTorch's SGD does.
    #[serde(default)]
    pub weight_decay: f64,
}

pub struct Sgd {
    cfg: SgdConfig,
    /// The momentum buffer, flat; empty before the first step (PyTorch sets it to the first update).
    buf: Vec<f32>,
}

impl Sgd {
    pub fn new(cfg: SgdConfig) -> Self {
        Self { cfg, buf: Vec::new() }
    }
}

impl Optimizer for Sgd {
    fn base_lr(&self) -> f64 {
        self.cfg.lr
    }

    fn resolved(&self) -> serde_json::Value {
        crate::with_type("sgd", &self.cfg)
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            optimizer: "sgd".into(),
            step: 0,
            buffers: buffers([("momentum_buffer", &self.buf)]),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> lora_core::Result<()> {
        let len = state.buffers.values().next().map_or(0, Vec::len);
        state.check("sgd", len)?;
        self.buf = state.buffers.get("momentum_buffer").cloned().unwrap_or_default();
        Ok(())
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], layout: &ParamLayout, lr: f64) {
        let (mu, damp, lr) = (self.cfg.momentum as f32, self.cfg.dampening as f32, lr as f32);
        let first = self.buf.len() != params.len();
        if mu != 0.0 && first {
            self.buf = vec![0.0; params.len()];
        }
        for (info, range) in layout.segments() {
            let wd = if info.weight_decay {
                self.cfg.weight_decay as f32
            } else {
                0.0
            };
            for j in range {
                let mut d = grads[j] + wd * params[j];
                if mu != 0.0 {
                    let b = &mut self.buf[j];
                    *b = if first { d } else { mu * *b + (1.0 - damp) * d };
                    if self.cfg.nesterov {
                        d += mu * *b;
                    } else {
                        d = *b;
                    }
                }
                params[j] -= lr * d;
            }
        }
    }
}

pub(crate) fn check_lr(c: &Component, lr: f64) -> Result<(), Diagnostics> {
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(Diagnostic::error(
            "train::invalid-lr",
            format!("learning rate ({lr}) must be positive and finite. Valid range: 0 < lr"),
        )
        .at(c.value_location("lr"))
        .into());
    }
    Ok(())
}

fn build_adamw(c: &Component) -> Result<Box<dyn Optimizer>, Diagnostics> {
    let cfg: AdamWConfig = c.deserialize()?;
    check_lr(c, cfg.lr)?;
    if cfg.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
        return Err(Diagnostic::error(
            "train::invalid-betas",
            format!("betas ({:?}) must each lie in 0 <= beta < 1", cfg.betas),
        )
        .at(c.value_location("betas"))
        .into());
    }
    Ok(Box::new(AdamW::new(cfg)))
}

fn build_sgd(c: &Component) -> Result<Box<dyn Optimizer>, Diagnostics> {
    let cfg: SgdConfig = c.deserialize()?;
    check_lr(c, cfg.lr)?;
    if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
        return Err(Diagnostic::error(
            "train::invalid-nesterov",
            "nesterov needs momentum > 0 and dampening = 0".to_string(),
        )
        .at(c.value_location("nesterov"))
        .into());
    }
    Ok(Box::new(Sgd::new(cfg)))
}

inventory::submit! {
    OptimizerEntry { name: "adamw", summary: "Adam with decoupled weight decay (PyTorch AdamW semantics)", build: build_adamw }
}
inventory::submit! {
    OptimizerEntry { name: "sgd", summary: "SGD with momentum, dampening and Nesterov (PyTorch semantics)", build: build_sgd }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(decay: bool) -> ParamLayout {
        ParamLayout::new(&[lora_core::ParamInfo::new("p", vec![2], decay)])
    }

    /// One step on per-parameter values, through the flat buffers.
    trait StepNested {
        fn step_nested(&mut self, p: &mut [Vec<f32>], g: &[Vec<f32>], layout: &ParamLayout, lr: f64);
    }

    impl<O: Optimizer> StepNested for O {
        fn step_nested(&mut self, p: &mut [Vec<f32>], g: &[Vec<f32>], layout: &ParamLayout, lr: f64) {
            let mut flat = layout.flatten(p).unwrap();
            self.step(&mut flat, &layout.flatten(g).unwrap(), layout, lr);
            p.clone_from_slice(&layout.split(&flat));
        }
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
        let mut opt = AdamW::new(AdamWConfig {
            lr: 0.1,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let mut p = vec![vec![1.0, -2.0]];
        opt.step_nested(&mut p, &[vec![0.5, -3.0]], &info(true), 0.1);
        assert!((p[0][0] - 0.9).abs() < 1e-6);
        assert!((p[0][1] - (-1.9)).abs() < 1e-6);
    }

    #[test]
    fn adamw_decay_is_decoupled_and_skips_excluded_params() {
        let cfg = AdamWConfig {
            lr: 0.1,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut p = vec![vec![2.0, 2.0]];
        AdamW::new(cfg.clone()).step_nested(&mut p, &[vec![0.0, 0.0]], &info(true), 0.1);
        assert!((p[0][0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
        let mut q = vec![vec![2.0, 2.0]];
        AdamW::new(cfg).step_nested(&mut q, &[vec![0.0, 0.0]], &info(false), 0.1);
        assert_eq!(q[0], vec![2.0, 2.0]);
    }

    #[test]
    fn adamw_second_step_matches_hand_computation() {
        let mut opt = AdamW::new(AdamWConfig {
            lr: 0.01,
            betas: [0.9, 0.99],
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let mut p = vec![vec![0.0, 0.0]];
        opt.step_nested(&mut p, &[vec![1.0, 1.0]], &info(false), 0.01);
        opt.step_nested(&mut p, &[vec![3.0, 3.0]], &info(false), 0.01);
        let m: f64 = 0.9 * 0.1 + 0.1 * 3.0; // 0.39
        let v: f64 = 0.99 * 0.01 + 0.01 * 9.0; // 0.0999
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.9801));
        let expected = -0.01 - 0.01 * mh / (vh.sqrt() + 1e-8);
        assert!((p[0][0] as f64 - expected).abs() < 1e-6, "{} vs {expected}", p[0][0]);
    }

    #[test]
    fn sgd_momentum_matches_pytorch() {
        let mut opt = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        });
        let mut p = vec![vec![1.0, 1.0]];
        opt.step_nested(&mut p, &[vec![1.0, 2.0]], &info(false), 0.1);
        assert!((p[0][0] - 0.9).abs() < 1e-6);
        opt.step_nested(&mut p, &[vec![1.0, 2.0]], &info(false), 0.1);
        // buf = 0.9 * 1 + 1 = 1.9
        assert!((p[0][0] - (0.9 - 0.19)).abs() < 1e-6);
        assert!((p[0][1] - (1.0 - 0.2 - 0.38)).abs() < 1e-6);
    }

    #[test]
    fn sgd_nesterov_and_weight_decay() {
        let mut opt = Sgd::new(SgdConfig {
            lr: 1.0,
            momentum: 0.5,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.1,
        });
        let mut p = vec![vec![1.0, 0.0]];
        opt.step_nested(&mut p, &[vec![0.0, 1.0]], &info(true), 1.0);
        // d = g + 0.1 p = [0.1, 1.0]; buf = d; nesterov: d + 0.5 buf = [0.15, 1.5]
        assert!((p[0][0] - 0.85).abs() < 1e-6);
        assert!((p[0][1] + 1.5).abs() < 1e-6);
    }

    #[test]
    fn a_loaded_state_continues_exactly() {
        let cfg = AdamWConfig {
            lr: 0.01,
            betas: [0.9, 0.99],
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let layout = info(true);
        let (mut a, mut b) = (AdamW::new(cfg.clone()), AdamW::new(cfg));
        let mut p = vec![0.5f32, -0.25];
        a.step(&mut p, &[1.0, -2.0], &layout, 0.01);
        b.load_state(&a.state()).unwrap();
        let mut q = p.clone();
        a.step(&mut p, &[0.3, 0.7], &layout, 0.01);
        b.step(&mut q, &[0.3, 0.7], &layout, 0.01);
        assert_eq!(p, q);
        assert!(
            Sgd::new(SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            })
            .load_state(&a.state())
            .is_err()
        );
    }
}
