//! The LoRA specification shared by every backend, with PEFT's semantics.
//!
//! `y = W x + scale * B A dropout(x)` where `scale = alpha / r`, or
//! `alpha / sqrt(r)` with rsLoRA; `A` starts Kaiming-uniform, `B` at zero.

use serde::{Deserialize, Serialize};

use crate::diag::Location;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoraSpec {
    /// Rank of the update.
    pub r: usize,
    /// Scaling numerator.
    pub alpha: f64,
    /// Dropout on the adapter's input (training only).
    #[serde(default, serialize_with = "crate::config::f32_as_written")]
    pub dropout: f32,
    /// Module names inside each layer; the model lists the valid ones.
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Where `target-modules` was written, for diagnostics.
    #[serde(skip)]
    pub target_modules_location: Option<Location>,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// No LoRA layer at all: only the task head trains (a baseline).
    pub fn is_head_only(&self) -> bool {
        self.target_modules.is_empty()
    }
}

/// A module that LoRA may target, as a model describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetModule {
    /// The name written in `target-modules`.
    pub name: &'static str,
    /// What it is, for error messages and `lora models`.
    pub summary: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(r: usize, alpha: f64, rs: bool) -> LoraSpec {
        LoraSpec {
            r,
            alpha,
            dropout: 0.0,
            target_modules: vec!["query".into()],
            use_rslora: rs,
            target_modules_location: None,
        }
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r() {
        assert_eq!(spec(8, 16.0, false).scale(), 2.0);
        assert_eq!(spec(16, 16.0, true).scale(), 4.0);
        assert_eq!(spec(4, 8.0, true).scale(), 4.0);
    }
}
