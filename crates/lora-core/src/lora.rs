//! The LoRA specification shared by every backend, with PEFT's semantics.
//!
//! `y = W x + scale * B A dropout(x)` where `scale = alpha / r`, or
//! `alpha / sqrt(r)` with rsLoRA; `A` starts Kaiming-uniform, `B` at zero.

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics, Location, did_you_mean};
use crate::{Error, Result};

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

/// Checks `lora.target_modules` against a model family's `valid` module names
/// (and the rank and dropout ranges), reporting every problem at once. Returns
/// the targets in the model's module order, not the configuration's.
pub fn resolve_named_targets(lora: &LoraSpec, valid: &[&'static str], family: &str) -> Result<Vec<&'static str>> {
    let mut diags = Diagnostics::default();
    let mut out = Vec::new();
    for name in &lora.target_modules {
        match valid.iter().find(|v| **v == name.as_str()) {
            Some(v) if !out.contains(v) => out.push(*v),
            Some(_) => diags.push(
                Diagnostic::error(
                    "lora::duplicate-target",
                    format!("target module `{name}` is listed twice"),
                )
                .at(lora.target_modules_location.clone()),
            ),
            None => {
                let mut d = Diagnostic::error(
                    "lora::unknown-target-module",
                    format!("unknown target module `{name}` for {family}"),
                )
                .at(lora.target_modules_location.clone());
                let list = valid.join(", ");
                d = match did_you_mean(name, valid.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`? valid modules: {list}")),
                    None => d.help(format!("valid modules: {list}")),
                };
                diags.push(d);
            }
        }
    }
    if lora.r == 0 && !out.is_empty() {
        diags.push(Diagnostic::error(
            "lora::rank-zero",
            "rank r (0) must be at least 1. Valid range: 1 <= r",
        ));
    }
    if !(0.0..1.0).contains(&lora.dropout) {
        diags.push(Diagnostic::error(
            "lora::invalid-dropout",
            format!(
                "dropout ({}) is out of range. Valid range: 0 <= dropout < 1",
                lora.dropout
            ),
        ));
    }
    if diags.has_errors() {
        return Err(Error::Invalid(diags));
    }
    out.sort_by_key(|n| valid.iter().position(|v| v == n));
    Ok(out)
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
