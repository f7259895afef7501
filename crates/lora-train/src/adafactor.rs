//! `[train.optimizer] type = "adafactor"`: Adafactor (Shazeer and Stern 2018)
//! with the update rule of Hugging Face's `transformers.optimization.Adafactor`.
//!
//! A parameter whose compute shape has two or more dimensions keeps its second
//! moment factored: one running mean per row and one per column of its last
//! two dimensions (the leading ones are a batch), so a `[r, in]` LoRA matrix
//! costs `r + in` numbers of state instead of `r * in`. Vectors keep the full
//! second moment. The first moment is kept only when `beta1` is set.
//!
//! With `relative-step` (the default) the step size is Adafactor's own,
//! `min(1e-2, 1/sqrt(step))` (`min(1e-6 * step, 1/sqrt(step))` with
//! `warmup-init`), times the parameter's RMS with `scale-parameter`; the loop's
//! learning rate then only multiplies it (its base is 1, so the constant
//! schedule gives Hugging Face's numbers and a rollback's reduction still acts).

use std::collections::BTreeMap;

use lora_core::ParamLayout;
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::optim::{Optimizer, OptimizerState};
use lora_core::registry::OptimizerEntry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdafactorConfig {
    /// The external learning rate; only without `relative-step`.
    pub lr: Option<f64>,
    /// Added to the squared gradient, and the floor of the parameter scale.
    #[serde(default = "default_eps")]
    pub eps: [f64; 2],
    /// Updates whose RMS exceeds this are scaled down to it.
    #[serde(default = "one")]
    pub clip_threshold: f64,
    /// The second moment's decay is `1 - step^decay_rate`.
    #[serde(default = "default_decay_rate")]
    pub decay_rate: f64,
    /// The first moment's decay; none keeps no first moment.
    pub beta1: Option<f64>,
    #[serde(default)]
    pub weight_decay: f64,
    /// Scale the step size by the parameter's RMS.
    #[serde(default = "yes")]
    pub scale_parameter: bool,
    /// Adafactor's own time-dependent step size instead of `lr`.
    #[serde(default = "yes")]
    pub relative_step: bool,
    /// Grow the relative step linearly from 1e-6 (needs `relative-step`).
    #[serde(default)]
    pub warmup_init: bool,
}

fn default_eps() -> [f64; 2] {
    [1e-30, 1e-3]
}
fn one() -> f64 {
    1.0
}
fn default_decay_rate() -> f64 {
    -0.8
}
fn yes() -> bool {
    true
}

/// The state's buffer names, Hugging Face's.
const BUFFERS: [&str; 4] = ["exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"];

pub struct Adafactor {
    cfg: AdafactorConfig,
    step: u64,
    /// First moment, flat in the layout (only with `beta1`).
    exp_avg: Vec<f32>,
    /// Row and column means of the factored parameters, one after the other.
    row: Vec<f32>,
    col: Vec<f32>,
    /// The full second moment of the unfactored parameters, one after the other.
    full: Vec<f32>,
}

/// How one parameter's second moment is kept.
enum Factoring {
    /// `batch` matrices of `rows x cols`.
    Factored {
        batch: usize,
        rows: usize,
        cols: usize,
    },
    Full,
}

fn factoring(compute_shape: &[usize]) -> Factoring {
    match compute_shape {
        [lead @ .., rows, cols] => Factoring::Factored {
            batch: lead.iter().product(),
            rows: *rows,
            cols: *cols,
        },
        _ => Factoring::Full,
    }
}

/// Sizes of the row, column and full buffers for a layout.
fn state_sizes(layout: &ParamLayout) -> (usize, usize, usize) {
    layout
        .params()
        .iter()
        .fold((0, 0, 0), |(r, c, f), p| match factoring(&p.compute_shape) {
            Factoring::Factored { batch, rows, cols } => (r + batch * rows, c + batch * cols, f),
            Factoring::Full => (r, c, f + p.numel()),
        })
}

/// Root mean square, accumulated in f64.
fn rms(xs: &[f32]) -> f64 {
    (xs.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / xs.len().max(1) as f64).sqrt()
}

fn mean(xs: impl Iterator<Item = f32>, n: usize) -> f32 {
    (xs.map(f64::from).sum::<f64>() / n.max(1) as f64) as f32
}

impl Adafactor {
    pub fn new(cfg: AdafactorConfig) -> Self {
        Self {
            cfg,
            step: 0,
            exp_avg: Vec::new(),
            row: Vec::new(),
            col: Vec::new(),
            full: Vec::new(),
        }
    }

    /// The step size of one parameter: Hugging Face's `_get_lr`, times `lr`
    /// when the step is relative (`lr` is then a multiplier, 1 by default).
    fn step_size(&self, param_rms: f64, lr: f64) -> f64 {
        let base = if self.cfg.relative_step {
            let step = self.step as f64;
            let min_step = if self.cfg.warmup_init { 1e-6 * step } else { 1e-2 };
            lr * min_step.min(1.0 / step.sqrt())
        } else {
            lr
        };
        let scale = if self.cfg.scale_parameter {
            self.cfg.eps[1].max(param_rms)
        } else {
            1.0
        };
        scale * base
    }

    /// The unscaled update `grad / sqrt(v)` of one parameter into `update`,
    /// after folding `grad^2 + eps` into its second moment.
    fn precondition(
        &mut self,
        grad: &[f32],
        shape: &[usize],
        (beta2t, keep): (f32, f32),
        (row_at, col_at, full_at): (&mut usize, &mut usize, &mut usize),
        update: &mut [f32],
    ) {
        let eps1 = self.cfg.eps[0] as f32;
        match factoring(shape) {
            Factoring::Factored { batch, rows, cols } => {
                let row = &mut self.row[*row_at..*row_at + batch * rows];
                let col = &mut self.col[*col_at..*col_at + batch * cols];
                for b in 0..batch {
                    let g = &grad[b * rows * cols..(b + 1) * rows * cols];
                    let sq = |i: usize, j: usize| g[i * cols + j] * g[i * cols + j] + eps1;
                    for i in 0..rows {
                        let m = mean((0..cols).map(|j| sq(i, j)), cols);
                        let r = &mut row[b * rows + i];
                        *r = *r * beta2t + m * keep;
                    }
                    for j in 0..cols {
                        let m = mean((0..rows).map(|i| sq(i, j)), rows);
                        let c = &mut col[b * cols + j];
                        *c = *c * beta2t + m * keep;
                    }
                    let rows_b = &row[b * rows..(b + 1) * rows];
                    let row_mean = mean(rows_b.iter().copied(), rows);
                    let out = &mut update[b * rows * cols..(b + 1) * rows * cols];
                    for i in 0..rows {
                        let r = (rows_b[i] / row_mean).sqrt().recip();
                        for j in 0..cols {
                            let c = col[b * cols + j].sqrt().recip();
                            out[i * cols + j] = r * c * g[i * cols + j];
                        }
                    }
                }
                *row_at += batch * rows;
                *col_at += batch * cols;
            }
            Factoring::Full => {
                let v = &mut self.full[*full_at..*full_at + grad.len()];
                for ((v, &g), u) in v.iter_mut().zip(grad).zip(update.iter_mut()) {
                    *v = *v * beta2t + (g * g + eps1) * keep;
                    *u = v.sqrt().recip() * g;
                }
                *full_at += grad.len();
            }
        }
    }
}

impl Optimizer for Adafactor {
    fn base_lr(&self) -> f64 {
        self.cfg.lr.filter(|_| !self.cfg.relative_step).unwrap_or(1.0)
    }

    fn resolved(&self) -> serde_json::Value {
        crate::with_type("adafactor", &self.cfg)
    }

    fn state(&self) -> OptimizerState {
        let named = BUFFERS
            .into_iter()
            .zip([&self.exp_avg, &self.row, &self.col, &self.full]);
        OptimizerState {
            optimizer: "adafactor".into(),
            step: self.step,
            buffers: named
                .into_iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(n, b)| (n.to_string(), b.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> lora_core::Result<()> {
        // The buffers have different lengths (factored moments are row and
        // column means); their sizes are checked against the layout at the next step.
        state.check_kind("adafactor")?;
        if let Some(name) = state.buffers.keys().find(|n| !BUFFERS.contains(&n.as_str())) {
            return Err(lora_core::Error::Other(format!(
                "adafactor has no state buffer `{name}`"
            )));
        }
        let get = |name: &str| state.buffers.get(name).cloned().unwrap_or_default();
        self.step = state.step;
        (self.exp_avg, self.row, self.col, self.full) = (
            get("exp_avg"),
            get("exp_avg_sq_row"),
            get("exp_avg_sq_col"),
            get("exp_avg_sq"),
        );
        Ok(())
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], layout: &ParamLayout, lr: f64) {
        let (rows, cols, full) = state_sizes(layout);
        if self.row.len() != rows || self.col.len() != cols || self.full.len() != full {
            (self.row, self.col, self.full) = (vec![0.0; rows], vec![0.0; cols], vec![0.0; full]);
        }
        if self.cfg.beta1.is_some() && self.exp_avg.len() != params.len() {
            self.exp_avg = vec![0.0; params.len()];
        }
        self.step += 1;
        // Computed in f64 as Python does, then used in f32 as PyTorch's kernels do.
        let beta2t = 1.0 - (self.step as f64).powf(self.cfg.decay_rate);
        let decays = (beta2t as f32, (1.0 - beta2t) as f32);
        let mut at = (0, 0, 0);
        let mut update = Vec::new();
        for (info, range) in layout.segments() {
            let p = &mut params[range.clone()];
            let step_size = self.step_size(rms(p), lr);
            update.clear();
            update.resize(range.len(), 0.0);
            self.precondition(
                &grads[range.clone()],
                &info.compute_shape,
                decays,
                (&mut at.0, &mut at.1, &mut at.2),
                &mut update,
            );
            let clip = (rms(&update) / self.cfg.clip_threshold).max(1.0) as f32;
            let step_size = step_size as f32;
            for u in update.iter_mut() {
                *u = *u / clip * step_size;
            }
            if let Some(beta1) = self.cfg.beta1 {
                let b1 = beta1 as f32;
                for (m, u) in self.exp_avg[range.clone()].iter_mut().zip(update.iter_mut()) {
                    *m = *m * b1 + *u * (1.0 - b1);
                    *u = *m;
                }
            }
            let decay = if info.weight_decay {
                (-self.cfg.weight_decay * step_size as f64) as f32
            } else {
                0.0
            };
            for (p, u) in p.iter_mut().zip(&update) {
                *p += *p * decay;
                *p -= u;
            }
        }
    }
}

/// Hugging Face's refusals, with this tool's ids.
fn build(c: &Component) -> Result<Box<dyn Optimizer>, Diagnostics> {
    let cfg: AdafactorConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    match (cfg.lr, cfg.relative_step) {
        (Some(_), true) => diags.push(
            Diagnostic::error(
                "optim::adafactor-lr-with-relative-step",
                "adafactor with relative-step = true computes its own step size; lr would be ignored",
            )
            .at(c.value_location("lr"))
            .help("remove lr, or set relative-step = false"),
        ),
        (None, false) => diags.push(
            Diagnostic::error(
                "optim::adafactor-needs-lr",
                "adafactor with relative-step = false needs an lr",
            )
            .at(c.value_location("relative-step")),
        ),
        (Some(lr), false) => {
            if let Err(d) = crate::optim::check_lr(c, lr) {
                diags.0.extend(d.0);
            }
        }
        (None, true) => {}
    }
    if cfg.warmup_init && !cfg.relative_step {
        diags.push(
            Diagnostic::error(
                "optim::adafactor-warmup-init-without-relative-step",
                "warmup-init grows the relative step size; it needs relative-step = true",
            )
            .at(c.value_location("warmup-init")),
        );
    }
    if cfg.beta1.is_some_and(|b| !(0.0..1.0).contains(&b)) {
        diags.push(
            Diagnostic::error("train::invalid-betas", "beta1 must lie in 0 <= beta1 < 1").at(c.value_location("beta1")),
        );
    }
    if cfg.decay_rate.is_nan() || cfg.decay_rate >= 0.0 {
        diags.push(
            Diagnostic::error(
                "optim::adafactor-decay-rate",
                format!(
                    "decay-rate ({}) must be negative: the second moment's decay is 1 - step^decay-rate",
                    cfg.decay_rate
                ),
            )
            .at(c.value_location("decay-rate")),
        );
    }
    if cfg.clip_threshold.is_nan() || cfg.clip_threshold <= 0.0 || cfg.eps.iter().any(|e| e.is_nan() || *e <= 0.0) {
        diags.push(
            Diagnostic::error(
                "optim::adafactor-nonpositive",
                "clip-threshold and both eps must be positive",
            )
            .at(c.value_location(if cfg.clip_threshold > 0.0 {
                "eps"
            } else {
                "clip-threshold"
            })),
        );
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Box::new(Adafactor::new(cfg)))
}

inventory::submit! {
    OptimizerEntry { name: "adafactor", summary: "Adafactor: factored second moments, relative step, update clipping (Hugging Face semantics)", build }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdafactorConfig {
        AdafactorConfig {
            lr: None,
            eps: default_eps(),
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: false,
            relative_step: true,
            warmup_init: false,
        }
    }

    #[test]
    fn first_step_of_a_vector_is_clipped_to_the_relative_step() {
        // Step 1: beta2t = 0, so v = g^2 + eps and the update is sign(g) with RMS 1,
        // unclipped; the step size is min(1e-2, 1) = 1e-2.
        let layout = ParamLayout::new(&[lora_core::ParamInfo::new("b", vec![2], false)]);
        let mut opt = Adafactor::new(cfg());
        let mut p = vec![0.5, 0.5];
        opt.step(&mut p, &[3.0, -0.25], &layout, 1.0);
        assert!((p[0] - 0.49).abs() < 1e-7 && (p[1] - 0.51).abs() < 1e-7, "{p:?}");
    }

    #[test]
    fn a_matrix_keeps_row_and_column_state_only() {
        let layout = ParamLayout::new(&[
            lora_core::ParamInfo::new("a", vec![2, 3, 2, 2], true).with_compute_shape(vec![2, 12]),
            lora_core::ParamInfo::new("b", vec![5], false),
        ]);
        let mut opt = Adafactor::new(cfg());
        let mut p = vec![0.1; 29];
        opt.step(&mut p, &[0.2; 29], &layout, 1.0);
        let s = opt.state();
        let lens: Vec<(&str, usize)> = s.buffers.iter().map(|(n, b)| (n.as_str(), b.len())).collect();
        assert_eq!(lens, [("exp_avg_sq", 5), ("exp_avg_sq_col", 12), ("exp_avg_sq_row", 2)]);
        let mut other = Adafactor::new(cfg());
        other.load_state(&s).unwrap();
        let (mut q, g) = (p.clone(), vec![-0.3; 29]);
        opt.step(&mut p, &g, &layout, 1.0);
        other.step(&mut q, &g, &layout, 1.0);
        assert_eq!(p, q);
    }
}
