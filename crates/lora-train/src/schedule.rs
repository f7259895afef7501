//! Learning-rate schedules with linear warmup, with the semantics of
//! Hugging Face's `get_*_schedule_with_warmup` (the factor for optimizer step
//! `s`, 0-based, so that runs are comparable with `transformers`).

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::inventory;
use lora_core::optim::Scheduler;
use lora_core::registry::SchedulerEntry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WarmupConfig {
    /// Warmup length in optimizer steps.
    pub warmup_steps: Option<usize>,
    /// Warmup length as a share of the run (0 <= ratio < 1).
    pub warmup_ratio: Option<f64>,
    /// Cosine only: the floor, as a share of the base learning rate.
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl WarmupConfig {
    fn warmup(&self, total: usize) -> usize {
        match (self.warmup_steps, self.warmup_ratio) {
            (Some(s), _) => s,
            (None, Some(r)) => (r * total as f64).ceil() as usize,
            (None, None) => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Constant,
    Linear,
    Cosine,
}

pub struct WarmupSchedule {
    pub shape: Shape,
    pub cfg: WarmupConfig,
}

impl Scheduler for WarmupSchedule {
    fn resolved(&self) -> serde_json::Value {
        let name = match self.shape {
            Shape::Constant => "constant",
            Shape::Linear => "linear",
            Shape::Cosine => "cosine",
        };
        crate::with_type(name, &self.cfg)
    }

    fn factor(&self, step: usize, total: usize) -> f64 {
        let warmup = self.cfg.warmup(total);
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self.shape {
            Shape::Constant => 1.0,
            Shape::Linear => (1.0 - progress).max(0.0),
            Shape::Cosine => {
                let floor = self.cfg.min_lr_ratio;
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

fn build(c: &Component, shape: Shape) -> Result<Box<dyn Scheduler>, Diagnostics> {
    let cfg: WarmupConfig = c.deserialize()?;
    let mut diags = Diagnostics::default();
    if cfg.warmup_steps.is_some() && cfg.warmup_ratio.is_some() {
        diags.push(
            Diagnostic::error("train::warmup-twice", "set warmup-steps or warmup-ratio, not both")
                .at(c.value_location("warmup-ratio")),
        );
    }
    if let Some(r) = cfg.warmup_ratio
        && !(0.0..1.0).contains(&r)
    {
        diags.push(
            Diagnostic::error(
                "train::invalid-warmup-ratio",
                format!("warmup-ratio ({r}) is out of range. Valid range: 0 <= warmup-ratio < 1"),
            )
            .at(c.value_location("warmup-ratio")),
        );
    }
    if !(0.0..=1.0).contains(&cfg.min_lr_ratio) {
        diags.push(
            Diagnostic::error(
                "train::invalid-min-lr-ratio",
                format!(
                    "min-lr-ratio ({}) is out of range. Valid range: 0 <= min-lr-ratio <= 1",
                    cfg.min_lr_ratio
                ),
            )
            .at(c.value_location("min-lr-ratio")),
        );
    }
    if shape != Shape::Cosine && cfg.min_lr_ratio != 0.0 {
        diags.push(
            Diagnostic::error(
                "train::min-lr-ratio-needs-cosine",
                "min-lr-ratio applies to the cosine schedule only",
            )
            .at(c.value_location("min-lr-ratio")),
        );
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Box::new(WarmupSchedule { shape, cfg }))
}

/// Warmup length in steps, for cross-field checks by the trainer.
pub fn warmup_steps(c: &Component, total: usize) -> Option<usize> {
    c.deserialize::<WarmupConfig>().ok().map(|w| w.warmup(total))
}

inventory::submit! {
    SchedulerEntry { name: "constant", summary: "constant learning rate after linear warmup", build: |c| build(c, Shape::Constant) }
}
inventory::submit! {
    SchedulerEntry { name: "linear", summary: "linear warmup, then linear decay to zero", build: |c| build(c, Shape::Linear) }
}
inventory::submit! {
    SchedulerEntry { name: "cosine", summary: "linear warmup, then half-cosine decay to min-lr-ratio", build: |c| build(c, Shape::Cosine) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(shape: Shape, warmup: usize) -> WarmupSchedule {
        WarmupSchedule {
            shape,
            cfg: WarmupConfig {
                warmup_steps: Some(warmup),
                ..Default::default()
            },
        }
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        let s = sched(Shape::Constant, 4);
        let f: Vec<f64> = (0..6).map(|i| s.factor(i, 10)).collect();
        assert_eq!(f, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    }

    #[test]
    fn linear_decays_to_zero_at_the_end() {
        let s = sched(Shape::Linear, 2);
        assert_eq!(s.factor(2, 10), 1.0);
        assert_eq!(s.factor(6, 10), 0.5);
        assert_eq!(s.factor(10, 10), 0.0);
    }

    #[test]
    fn cosine_passes_through_half_at_mid_run() {
        let s = sched(Shape::Cosine, 0);
        assert!((s.factor(0, 100) - 1.0).abs() < 1e-12);
        assert!((s.factor(50, 100) - 0.5).abs() < 1e-12);
        assert!(s.factor(100, 100).abs() < 1e-12);
        let floor = WarmupSchedule {
            shape: Shape::Cosine,
            cfg: WarmupConfig {
                min_lr_ratio: 0.1,
                ..Default::default()
            },
        };
        assert!((floor.factor(100, 100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        let s = WarmupSchedule {
            shape: Shape::Linear,
            cfg: WarmupConfig {
                warmup_ratio: Some(0.05),
                ..Default::default()
            },
        };
        assert_eq!(s.cfg.warmup(30), 2);
        assert_eq!(s.factor(1, 30), 0.5);
    }
}
