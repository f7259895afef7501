//! The BERT family as a backend-independent specification: the fields of a
//! Hugging Face `config.json`, the modules LoRA may target, the checks on a
//! LoRA spec against them, and PEFT's naming. Both backends build the same
//! model from this, so that they accept and reject the same configurations.

use std::path::Path;

use crate::adapter::PeftInfo;
use crate::diag::{Diagnostic, Diagnostics};
use crate::{Error, LoraSpec, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read model config", path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not a BERT config: {e}", path.display())))?;
        if cfg.hidden_act != "gelu" {
            return Err(Error::Data(format!(
                "{}: hidden_act `{}` is not supported (only `gelu`, the exact erf form)",
                path.display(),
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Data(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                cfg.hidden_size,
                cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The modules of a layer that LoRA may target, in the order masks and parameters follow.
pub const TARGETS: [(&str, &str, &str); 6] = [
    ("query", "attention.self.query", "attention query projection"),
    ("key", "attention.self.key", "attention key projection"),
    ("value", "attention.self.value", "attention value projection"),
    (
        "attention.output.dense",
        "attention.output.dense",
        "attention output projection",
    ),
    ("intermediate.dense", "intermediate.dense", "feed-forward up projection"),
    ("output.dense", "output.dense", "feed-forward down projection"),
];

/// The targeted module names, checked, in the model's module order.
pub fn resolve_targets(lora: &LoraSpec) -> Result<Vec<&'static str>> {
    let valid: Vec<&'static str> = TARGETS.iter().map(|t| t.0).collect();
    crate::lora::resolve_named_targets(lora, &valid, "a BERT encoder")
}

/// The rank must not exceed the smaller side of a targeted layer.
pub fn check_rank(lora: &LoraSpec, module: &str, in_dim: usize, out_dim: usize) -> Result<()> {
    let limit = in_dim.min(out_dim);
    if lora.r > limit {
        return Err(Error::Invalid(
            Diagnostic::error(
                "lora::rank-exceeds-layer",
                format!(
                    "Rank value ({}) exceeds min(in, out) = {limit} of `{module}` ({in_dim} -> {out_dim}). Valid range: 1 <= rank <= {limit}",
                    lora.r
                ),
            )
            .into(),
        ));
    }
    Ok(())
}

/// PEFT's `adapter_config.json` facts for a sequence classifier with these targets.
///
/// PEFT matches list entries as module-name suffixes: `output.dense` alone would
/// also catch `attention.output.dense`, so that case is written as a regex.
pub fn peft_info(targets: &[&str]) -> PeftInfo {
    let ambiguous = targets.contains(&"output.dense") && !targets.contains(&"attention.output.dense");
    let target_modules = if ambiguous {
        let alts: Vec<String> = TARGETS
            .iter()
            .filter(|t| targets.contains(&t.0))
            .map(|t| t.1.replace('.', r"\."))
            .collect();
        serde_json::Value::String(format!(r".*\.layer\.\d+\.({})", alts.join("|")))
    } else {
        serde_json::json!(targets)
    };
    PeftInfo {
        task_type: "SEQ_CLS",
        target_modules,
        modules_to_save: vec!["classifier".into(), "score".into()],
    }
}

/// `[model] type = "bert-classifier"`: the schema both backends share.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassifierSpec {
    /// Folder with `config.json`, `model.safetensors` and `tokenizer.json` (or `asset:NAME`).
    pub path: String,
    /// Dropout before the classifier during training (Hugging Face's default is 0.1).
    #[serde(default = "default_head_dropout", serialize_with = "crate::config::f32_as_written")]
    pub classifier_dropout: f32,
    /// `base_model_name_or_path` written into `adapter_config.json`; defaults to the resolved path.
    pub base_model_name: Option<String>,
}

fn default_head_dropout() -> f32 {
    0.1
}

impl ClassifierSpec {
    /// Deserializes and range-checks the `[model]` table.
    pub fn from_component(c: &crate::config::Component) -> Result<Self, Diagnostics> {
        let spec: Self = c.deserialize()?;
        if !(0.0..1.0).contains(&spec.classifier_dropout) {
            return Err(Diagnostic::error(
                "model::invalid-dropout",
                format!(
                    "classifier-dropout ({}) is out of range. Valid range: 0 <= classifier-dropout < 1",
                    spec.classifier_dropout
                ),
            )
            .at(c.value_location("classifier-dropout"))
            .into());
        }
        Ok(spec)
    }

    /// The model folder and its parsed `config.json`.
    pub fn files(&self, ctx: &crate::stage::StageContext) -> Result<(std::path::PathBuf, BertConfig)> {
        let dir = ctx.assets.resolve(&self.path)?;
        let cfg = BertConfig::from_file(&dir.join("config.json"))?;
        Ok((dir, cfg))
    }

    pub fn tokenizer(&self, ctx: &crate::stage::StageContext) -> Result<Option<std::path::PathBuf>> {
        let path = ctx.assets.resolve(&self.path)?.join("tokenizer.json");
        Ok(path.exists().then_some(path))
    }

    pub fn base_model_name(&self, ctx: &crate::stage::StageContext) -> Result<String> {
        match &self.base_model_name {
            Some(n) => Ok(n.clone()),
            None => Ok(ctx.assets.resolve(&self.path)?.display().to_string()),
        }
    }

    /// The table with every default filled in, `type` first.
    pub fn resolved(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "type": "bert-classifier" });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v
    }
}
