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
    /// Dropout on the embeddings' output and on each sublayer's output before
    /// its residual sum, in training (Hugging Face's default is 0.1).
    #[serde(default = "default_base_dropout")]
    pub hidden_dropout_prob: f32,
    /// Dropout on the attention probabilities in training.
    #[serde(default = "default_base_dropout")]
    pub attention_probs_dropout_prob: f32,
}

fn default_base_dropout() -> f32 {
    0.1
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

    /// The first base dropout probability outside `[0, 1)`, with its field name.
    pub fn bad_dropout(&self) -> Option<(&'static str, f32)> {
        [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ]
        .into_iter()
        .find(|(_, p)| !(0.0..1.0).contains(p))
    }

    /// The same model with its own dropout off (`[model] base-dropout = false`).
    pub fn without_dropout(mut self) -> Self {
        self.hidden_dropout_prob = 0.0;
        self.attention_probs_dropout_prob = 0.0;
        self
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
    /// The base model's own hidden and attention dropout in training, with the
    /// probabilities of its `config.json` (Hugging Face applies them; `false`
    /// turns them off, as a model in evaluation mode).
    #[serde(default = "default_true")]
    pub base_dropout: bool,
    /// `base_model_name_or_path` written into `adapter_config.json`; defaults to the resolved path.
    pub base_model_name: Option<String>,
    /// The type of the frozen base weights and of the compute (`f32`; `bf16` and `f16` to come).
    #[serde(default)]
    pub dtype: crate::adapter::DType,
}

fn default_true() -> bool {
    true
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
        let path = dir.join("config.json");
        let cfg = BertConfig::from_file(&path)?;
        if !self.base_dropout {
            return Ok((dir, cfg.without_dropout()));
        }
        if let Some((name, p)) = cfg.bad_dropout() {
            return Err(Error::Data(format!(
                "{}: {name} ({p}) is out of range. Valid range: 0 <= {name} < 1 (or `base-dropout = false`)",
                path.display()
            )));
        }
        Ok((dir, cfg))
    }

    /// Header-only facts about the checkpoint, for validation.
    pub fn facts(&self, ctx: &crate::stage::StageContext) -> Result<Option<crate::rules::ModelFacts>> {
        read_facts(&ctx.assets.resolve(&self.path)?).map(Some)
    }

    pub fn tokenizer(&self, ctx: &crate::stage::StageContext) -> Result<Option<std::path::PathBuf>> {
        let path = ctx.assets.resolve(&self.path)?.join("tokenizer.json");
        Ok(path.exists().then_some(path))
    }

    /// The base's configuration and weights, for a checkpoint's base-model hash.
    pub fn base_files(&self, ctx: &crate::stage::StageContext) -> Result<Vec<std::path::PathBuf>> {
        let dir = ctx.assets.resolve(&self.path)?;
        Ok(vec![dir.join("config.json"), dir.join("model.safetensors")])
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

/// The `config.json` fields without a default in [`BertConfig`].
const REQUIRED_FIELDS: [&str; 6] = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
];

/// Facts about a BERT checkpoint folder from `config.json` and the weight file's header,
/// without reading a single weight (for the validation rules).
pub fn read_facts(dir: &Path) -> Result<crate::rules::ModelFacts> {
    use crate::rules::ModelFacts;
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "{}: the model folder does not exist",
            dir.display()
        )));
    }
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::io("cannot read model config", &config_path, e))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: not JSON: {e}", config_path.display())))?;
    if !raw.is_object() {
        return Err(Error::Data(format!(
            "{}: not a BERT config: expected a JSON object",
            config_path.display()
        )));
    }
    // The fields `BertConfig` needs (it has no default for them): a missing one is
    // named here rather than read as 0 and reported as a mismatch with the header.
    let missing: Vec<String> = REQUIRED_FIELDS
        .iter()
        .filter(|&&k| raw.get(k).is_none_or(serde_json::Value::is_null))
        .map(|k| format!("`{k}`"))
        .collect();
    let mut problems: Vec<String> = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    for k in REQUIRED_FIELDS {
        if let Some(v) = raw.get(k).filter(|v| !v.is_null() && v.as_u64().is_none()) {
            problems.push(format!("`{k}` is {v}, not a non-negative integer"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Data(format!(
            "{}: not a BERT config: {}",
            config_path.display(),
            problems.join("; ")
        )));
    }
    let field = |k: &str| raw.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
    let weights_path = dir.join("model.safetensors");
    let (tensors, weight_bytes, data_len) = read_header(&weights_path)?;
    let mut facts = ModelFacts {
        architecture: raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert")
            .to_string(),
        hidden_size: field("hidden_size"),
        num_layers: field("num_hidden_layers"),
        num_heads: field("num_attention_heads"),
        intermediate_size: field("intermediate_size"),
        vocab_size: field("vocab_size"),
        max_positions: field("max_position_embeddings"),
        activation: raw
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu")
            .to_string(),
        has_tokenizer: dir.join("tokenizer.json").is_file(),
        base_dropout: ["hidden_dropout_prob", "attention_probs_dropout_prob"]
            .into_iter()
            .filter_map(|k| {
                raw.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .map(|p| (k.to_string(), p))
            })
            .collect(),
        weight_bytes,
        ..Default::default()
    };
    if weight_bytes < data_len {
        return Err(Error::Data(format!(
            "{}: the file is truncated ({weight_bytes} bytes, the header describes {data_len})",
            weights_path.display()
        )));
    }
    let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let shape = |name: &str| tensors.get(&format!("{prefix}{name}")).map(|(_, s)| s.clone());
    // What the header says, against what config.json says.
    // A header's shapes may have any rank: index them with `get`.
    if let Some(s) = shape("embeddings.word_embeddings.weight") {
        for (field, config, header) in [
            ("vocab_size", facts.vocab_size, s.first().copied().unwrap_or(0)),
            ("hidden_size", facts.hidden_size, s.get(1).copied().unwrap_or(0)),
        ] {
            if config != header {
                facts.inconsistencies.push((field.into(), config, header));
            }
        }
    }
    if let Some(s) = shape("embeddings.position_embeddings.weight")
        && s.first() != Some(&facts.max_positions)
    {
        facts.inconsistencies.push((
            "max_position_embeddings".into(),
            facts.max_positions,
            s.first().copied().unwrap_or(0),
        ));
    }
    let layers_in_header = (0..)
        .take_while(|i| tensors.contains_key(&format!("{prefix}encoder.layer.{i}.attention.self.query.weight")))
        .count();
    if layers_in_header != facts.num_layers {
        facts
            .inconsistencies
            .push(("num_hidden_layers".into(), facts.num_layers, layers_in_header));
    }
    for (name, module, _) in TARGETS {
        let mut layers = Vec::new();
        for i in 0..layers_in_header {
            let tensor = format!("{prefix}encoder.layer.{i}.{module}.weight");
            if let Some((_, s)) = tensors.get(&tensor)
                && s.len() == 2
            {
                // A linear's weight is [out, in].
                layers.push((tensor, s[1], s[0]));
            }
        }
        facts.targets.insert(name.to_string(), layers);
    }
    facts.parameters = tensors
        .values()
        .map(|(_, s)| s.iter().fold(1usize, |n, &d| n.saturating_mul(d)))
        .fold(0usize, usize::saturating_add);
    facts.tensors = tensors;
    Ok(facts)
}

type Header = std::collections::BTreeMap<String, (String, Vec<usize>)>;

/// The tensors of a safetensors file (name -> dtype, shape), its size and the data length
/// its header describes; only the header is read.
pub fn read_header(path: &Path) -> Result<(Header, u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open weights", path, e))?;
    let size = f
        .metadata()
        .map_err(|e| Error::io("cannot stat weights", path, e))?
        .len();
    let bad = |what: String| Error::Data(format!("{}: not a safetensors file: {what}", path.display()));
    if size < 8 {
        return Err(Error::Data(format!(
            "{}: empty or truncated safetensors header ({size} bytes; the file starts with an 8-byte header length)",
            path.display()
        )));
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || n + 8 > size {
        return Err(bad(format!("header length {n} does not fit a {size}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let text = std::str::from_utf8(&header).map_err(|e| bad(e.to_string()))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, (format!("{:?}", info.dtype), info.shape.clone())))
        .collect();
    Ok((tensors, size, 8 + n + meta.data_len() as u64))
}
