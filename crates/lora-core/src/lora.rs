//! The LoRA specification shared by every backend, with PEFT's semantics.
//!
//! `y = W x + scale * B A dropout(x)` where `scale = alpha / r`, or
//! `alpha / sqrt(r)` with rsLoRA; `A` starts Kaiming-uniform, `B` at zero.

use std::collections::BTreeMap;

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
    /// PEFT's `rank_pattern`: the rank of some modules, named by the end of their
    /// full name (`"patch_embeddings.projection" = 16`, `"layer.0.attention.attention.query" = 8`);
    /// every other target takes `r`.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// PEFT's `alpha_pattern`: the same for `alpha`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// PEFT's `layers_to_transform`: only these layers get adapters (models with numbered layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Where `target-modules` was written, for diagnostics.
    #[serde(skip)]
    pub target_modules_location: Option<Location>,
    /// Where `rank-pattern` (or else `alpha-pattern`) was written, for diagnostics.
    #[serde(skip)]
    pub patterns_location: Option<Location>,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The spec of the module whose full name is `path`, with `r` and `alpha`
    /// from the patterns that name it (see [`pattern_key`]).
    pub fn for_module(&self, path: &str) -> LoraSpec {
        let mut spec = self.clone();
        if let Some(key) = pattern_key(self.rank_pattern.keys(), path) {
            spec.r = self.rank_pattern[key];
        }
        if let Some(key) = pattern_key(self.alpha_pattern.keys(), path) {
            spec.alpha = self.alpha_pattern[key];
        }
        spec
    }

    /// No LoRA layer at all: only the task head trains (a baseline).
    pub fn is_head_only(&self) -> bool {
        self.target_modules.is_empty()
    }
}

/// Whether a pattern key names the module at `path`: PEFT's `(.*\.)?KEY$` with
/// the key taken literally, i.e. the whole name or its end after a dot.
pub fn pattern_matches(key: &str, path: &str) -> bool {
    path == key || (path.ends_with(key) && path[..path.len() - key.len()].ends_with('.'))
}

/// The key among `keys` that names the module at `path`: the longest, so that a
/// more specific key (`layer.0.attention.attention.query`) overrides a general
/// one (`query`). Two keys of one length cannot both match: they would be equal.
pub fn pattern_key<'a>(keys: impl Iterator<Item = &'a String>, path: &str) -> Option<&'a String> {
    keys.filter(|k| pattern_matches(k, path)).max_by_key(|k| k.len())
}

/// Checks that every pattern key names a module LoRA was inserted in; a key
/// that names nothing is almost always a typo that would silently keep `r`.
/// `lora_params` are the adapter's parameter names (PEFT keys).
pub fn check_patterns<'a>(lora: &LoraSpec, lora_params: impl Iterator<Item = &'a str>) -> Result<()> {
    let modules: Vec<&str> = lora_params
        .filter_map(|n| n.strip_suffix(".lora_A.weight"))
        .map(|n| n.strip_prefix("base_model.model.").unwrap_or(n))
        .collect();
    let mut diags = Diagnostics::default();
    for (table, keys) in [
        ("rank-pattern", &lora.rank_pattern.keys().collect::<Vec<_>>()),
        ("alpha-pattern", &lora.alpha_pattern.keys().collect()),
    ] {
        for key in keys.iter().filter(|k| !modules.iter().any(|m| pattern_matches(k, m))) {
            let shown: Vec<&str> = modules.iter().take(4).copied().collect();
            diags.push(
                Diagnostic::error(
                    "lora::pattern-unmatched",
                    format!("{table} key `{key}` names no module LoRA is inserted in"),
                )
                .at(lora.patterns_location.clone())
                .help(format!(
                    "a key is the end of a module's full name, after a dot; LoRA modules here: {}{}",
                    shown.join(", "),
                    if modules.len() > shown.len() { ", ..." } else { "" }
                )),
            );
        }
    }
    if diags.has_errors() {
        return Err(Error::Invalid(diags));
    }
    Ok(())
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
    for (key, r) in &lora.rank_pattern {
        if *r == 0 {
            diags.push(
                Diagnostic::error(
                    "lora::pattern-rank-zero",
                    format!("rank-pattern gives `{key}` rank 0. Valid range: 1 <= rank"),
                )
                .at(lora.patterns_location.clone()),
            );
        }
    }
    check_dropout(lora, &mut diags);
    if diags.has_errors() {
        return Err(Error::Invalid(diags));
    }
    out.sort_by_key(|n| valid.iter().position(|v| v == n));
    Ok(out)
}

/// `lora.dropout` in `[0, 1)`, checked when a model resolves its targets.
pub(crate) fn check_dropout(lora: &LoraSpec, diags: &mut Diagnostics) {
    if !(0.0..1.0).contains(&lora.dropout) {
        diags.push(Diagnostic::error(
            "lora::invalid-dropout",
            format!(
                "dropout ({}) is out of range. Valid range: 0 <= dropout < 1",
                lora.dropout
            ),
        ));
    }
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
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
            target_modules_location: None,
            patterns_location: None,
        }
    }

    #[test]
    fn patterns_name_modules_by_the_end_of_their_path_and_the_longest_key_wins() {
        assert!(pattern_matches("query", "encoder.layer.0.attention.self.query"));
        assert!(pattern_matches("query", "query"));
        assert!(!pattern_matches("query", "encoder.layer.0.attention.self.xquery"));
        assert!(!pattern_matches(
            "output.dense",
            "encoder.layer.0.attention.output.densex"
        ));
        assert!(pattern_matches(
            "output.dense",
            "encoder.layer.0.attention.output.dense"
        ));
        let mut s = spec(4, 16.0, false);
        s.rank_pattern = BTreeMap::from([("query".into(), 8), ("layer.1.attention.self.query".into(), 2)]);
        s.alpha_pattern = BTreeMap::from([("projection".into(), 64.0)]);
        let q0 = s.for_module("encoder.layer.0.attention.self.query");
        assert_eq!((q0.r, q0.alpha, q0.scale()), (8, 16.0, 2.0));
        let q1 = s.for_module("encoder.layer.1.attention.self.query");
        assert_eq!((q1.r, q1.scale()), (2, 8.0));
        let v = s.for_module("encoder.layer.1.attention.self.value");
        assert_eq!((v.r, v.scale()), (4, 4.0));
        let p = s.for_module("vit.embeddings.patch_embeddings.projection");
        assert_eq!((p.r, p.alpha, p.scale()), (4, 64.0, 16.0));
    }

    #[test]
    fn a_pattern_key_that_names_no_lora_module_is_an_error() {
        let mut s = spec(4, 16.0, false);
        let params = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"];
        s.rank_pattern = BTreeMap::from([("query".into(), 8)]);
        assert!(check_patterns(&s, params.into_iter()).is_ok());
        s.alpha_pattern = BTreeMap::from([("querry".into(), 8.0)]);
        let err = check_patterns(&s, params.into_iter()).unwrap_err().to_string();
        assert!(err.contains("alpha-pattern key `querry`"), "{err}");
        assert!(err.contains("bert.encoder.layer.0.attention.self.query"), "{err}");
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r() {
        assert_eq!(spec(8, 16.0, false).scale(), 2.0);
        assert_eq!(spec(16, 16.0, true).scale(), 4.0);
        assert_eq!(spec(4, 8.0, true).scale(), 4.0);
    }
}
