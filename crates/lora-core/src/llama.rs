//! The Llama decoder as a backend-independent specification: its
//! configuration read from a GGUF header, the modules LoRA may target (by
//! name, `all-linear`, regular expressions, PEFT's `layers_to_transform`), the
//! checks against the header, and PEFT's naming for `LlamaForCausalLM`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapter::PeftInfo;
use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::gguf::{Header, Value};
use crate::{Error, LoraSpec, Result};

/// The architectures read (`general.architecture`).
pub const ARCHITECTURES: [&str; 1] = ["llama"];

/// The dimensions of a Llama decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// The output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Reads the configuration from a GGUF header, checking the architecture,
    /// the dimensions against the tensor table, and every tensor's type and extent.
    pub fn from_header(h: &Header) -> Result<Self> {
        let path = h.path.display();
        let arch = h.architecture().unwrap_or("(none)");
        if !ARCHITECTURES.contains(&arch) {
            return Err(Error::Data(format!(
                "{path}: architecture `{arch}` is not supported; supported: {}",
                ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            h.get(&key(k))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Data(format!("{path}: metadata `{}` is missing or not an integer", key(k))))
        };
        let float = |k: &str, default: f64| h.get(&key(k)).and_then(Value::as_f64).unwrap_or(default);
        let embd = h
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Data(format!("{path}: no tensor `token_embd.weight`")))?;
        let vocab_size = match h.get(&key("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => embd.shape().first().copied().unwrap_or(0),
        };
        let cfg = Self {
            hidden_size: int("embedding_length")?,
            num_layers: int("block_count")?,
            num_heads: int("attention.head_count")?,
            num_kv_heads: h
                .get(&key("attention.head_count_kv"))
                .and_then(Value::as_u64)
                .map_or(int("attention.head_count")?, |v| v as usize),
            intermediate_size: int("feed_forward_length")?,
            vocab_size,
            context_length: int("context_length")?,
            rope_theta: float("rope.freq_base", 10_000.0),
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            tied_embeddings: h.tensor("output.weight").is_none(),
        };
        h.check_tensors()?;
        cfg.check(h)?;
        Ok(cfg)
    }

    /// The metadata against itself and against the tensor table.
    fn check(&self, h: &Header) -> Result<()> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_heads)
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            // Checked first: the tensors' shapes below divide by the head count.
            return Err(Error::Data(format!(
                "{}: hidden size {} with {} heads and {} key/value heads is not a Llama attention (heads must divide the hidden size, key/value heads the heads, and the head size be even)",
                h.path.display(),
                self.hidden_size,
                self.num_heads,
                self.num_kv_heads
            )));
        }
        let d = self.hidden_size;
        let mut problems = Vec::new();
        let mut check = |name: &str, shape: &[usize]| match h.tensor(name) {
            None => problems.push(format!("no tensor `{name}`")),
            Some(t) if t.shape() != shape => problems.push(format!(
                "tensor `{name}` has shape {:?}; the metadata implies {shape:?}",
                t.shape()
            )),
            Some(_) => {}
        };
        check("token_embd.weight", &[self.vocab_size, d]);
        if !self.tied_embeddings {
            check("output.weight", &[self.vocab_size, d]);
        }
        check("output_norm.weight", &[d]);
        // Layer by layer, stopping at the ninth problem: the layer count comes from
        // the file, and a huge one must not build a huge list of expected names.
        let mut seen = 0;
        for i in 0..self.num_layers {
            for (module, _, _) in TARGETS {
                let (out, inp) = self.linear_dims(module);
                check(&gguf_name(i, module), &[out, inp]);
            }
            check(&format!("blk.{i}.attn_norm.weight"), &[d]);
            check(&format!("blk.{i}.ffn_norm.weight"), &[d]);
            seen += TARGETS.len() + 2;
            // Each layer's missing tensors are problems: past the tensor table's length,
            // there are more than enough (the count comes from the file and may be huge).
            if seen > h.tensors.len() + TARGETS.len() + 2 {
                break;
            }
        }
        problems.truncate(9);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Data(format!("{}: {}", h.path.display(), problems.join("; "))))
        }
    }

    /// `[out, in]` of a target module.
    pub fn linear_dims(&self, module: &str) -> (usize, usize) {
        let (d, kv, ff) = (
            self.hidden_size,
            self.num_kv_heads * self.head_dim(),
            self.intermediate_size,
        );
        match module {
            "k_proj" | "v_proj" => (kv, d),
            "gate_proj" | "up_proj" => (ff, d),
            "down_proj" => (d, ff),
            _ => (d, d),
        }
    }
}

/// The linear modules of a layer: the PEFT name, the path under the layer, and the GGUF tensor.
pub const TARGETS: [(&str, &str, &str); 7] = [
    ("q_proj", "self_attn.q_proj", "attn_q"),
    ("k_proj", "self_attn.k_proj", "attn_k"),
    ("v_proj", "self_attn.v_proj", "attn_v"),
    ("o_proj", "self_attn.o_proj", "attn_output"),
    ("gate_proj", "mlp.gate_proj", "ffn_gate"),
    ("up_proj", "mlp.up_proj", "ffn_up"),
    ("down_proj", "mlp.down_proj", "ffn_down"),
];

/// The GGUF tensor of a module of layer `i`.
pub fn gguf_name(layer: usize, module: &str) -> String {
    let t = TARGETS.iter().find(|t| t.0 == module).map_or(module, |t| t.2);
    format!("blk.{layer}.{t}.weight")
}

/// The module's full name in Hugging Face's `LlamaForCausalLM` (under `model.`).
pub fn hf_name(layer: usize, module: &str) -> String {
    let p = TARGETS.iter().find(|t| t.0 == module).map_or(module, |t| t.1);
    format!("model.layers.{layer}.{p}")
}

/// Whether a target entry is a regular expression rather than a module name.
fn is_regex(entry: &str) -> bool {
    entry.chars().any(|c| "\\^$*+?()[]{}|".contains(c))
}

/// The (layer, module) pairs LoRA goes into: every entry of `target-modules`
/// is a module name, `all-linear`, or a regular expression matched (in full, as
/// PEFT does) against Hugging Face's full module names; `layers-to-transform`
/// keeps the listed layers only. Every problem is reported at once.
pub fn resolve_targets(lora: &LoraSpec, cfg: &LlamaConfig) -> Result<Vec<(usize, &'static str)>> {
    let mut diags = Diagnostics::default();
    let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    let mut modules = vec![false; TARGETS.len()];
    let mut regexes = Vec::new();
    for entry in &lora.target_modules {
        if entry == "all-linear" {
            modules.iter_mut().for_each(|m| *m = true);
        } else if let Some(i) = names.iter().position(|n| n == entry) {
            modules[i] = true;
        } else if is_regex(entry) {
            match regex::Regex::new(&format!("^(?:{entry})$")) {
                Ok(r) => regexes.push((entry, r)),
                Err(e) => diags.push(
                    Diagnostic::error(
                        "lora::invalid-target-regex",
                        format!("target `{entry}` is not a valid regular expression"),
                    )
                    .at(lora.target_modules_location.clone())
                    .help(e.to_string()),
                ),
            }
        } else {
            let list = format!("{}, all-linear, or a regular expression", names.join(", "));
            let d = Diagnostic::error(
                "lora::unknown-target-module",
                format!("unknown target module `{entry}` for a Llama decoder"),
            )
            .at(lora.target_modules_location.clone());
            diags.push(match did_you_mean(entry, names.iter().copied()) {
                Some(s) => d.help(format!("did you mean `{s}`? valid: {list}")),
                None => d.help(format!("valid: {list}")),
            });
        }
    }
    if let Some(layers) = &lora.layers_to_transform {
        for &l in layers.iter().filter(|&&l| l >= cfg.num_layers) {
            diags.push(Diagnostic::error(
                "lora::layer-out-of-range",
                format!(
                    "layers-to-transform names layer {l}, but the model has {} layers. Valid range: 0 <= layer <= {}",
                    cfg.num_layers,
                    cfg.num_layers.saturating_sub(1)
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for layer in 0..cfg.num_layers {
        if lora.layers_to_transform.as_ref().is_some_and(|l| !l.contains(&layer)) {
            continue;
        }
        for (i, (name, _, _)) in TARGETS.iter().enumerate() {
            let full = hf_name(layer, name);
            if modules[i] || regexes.iter().any(|(_, r)| r.is_match(&full)) {
                out.push((layer, *name));
            }
        }
    }
    for (entry, r) in &regexes {
        let any = (0..cfg.num_layers).any(|l| TARGETS.iter().any(|t| r.is_match(&hf_name(l, t.0))));
        if !any {
            diags.push(
                Diagnostic::error(
                    "lora::target-regex-unmatched",
                    format!("target `{entry}` matches no module of the model"),
                )
                .at(lora.target_modules_location.clone())
                .help(format!(
                    "it is matched in full against names like `{}`",
                    hf_name(0, "q_proj")
                )),
            );
        }
    }
    for (layer, module) in &out {
        let (o, i) = cfg.linear_dims(module);
        let r = lora.for_module(&hf_name(*layer, module)).r;
        let limit = o.min(i);
        if r == 0 || r > limit {
            diags.push(Diagnostic::error(
                "lora::rank-exceeds-layer",
                format!(
                    "Rank value ({r}) does not fit `{}` ({i} -> {o}). Valid range: 1 <= rank <= {limit}",
                    hf_name(*layer, module)
                ),
            ));
            break;
        }
    }
    crate::lora::check_dropout(lora, &mut diags);
    if diags.has_errors() {
        return Err(Error::Invalid(diags));
    }
    Ok(out)
}

/// PEFT's `adapter_config.json` facts for `LlamaForCausalLM`: the module names
/// as a list, or the configuration's regular expression when one was given.
pub fn peft_info(lora: &LoraSpec, targets: &[(usize, &str)]) -> PeftInfo {
    let target_modules = match lora.target_modules.iter().find(|e| is_regex(e)) {
        Some(r) if lora.target_modules.len() == 1 => serde_json::Value::String(r.clone()),
        _ => {
            let mut names: Vec<&str> = TARGETS
                .iter()
                .map(|t| t.0)
                .filter(|n| targets.iter().any(|(_, m)| m == n))
                .collect();
            names.dedup();
            serde_json::json!(names)
        }
    };
    PeftInfo {
        task_type: "CAUSAL_LM",
        target_modules,
        modules_to_save: Vec::new(),
    }
}

/// `[model] type = "llama-causal-lm"`: the schema both backends share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CausalLmSpec {
    /// The GGUF file (or `asset:NAME/file.gguf`).
    pub path: String,
    /// `base_model_name_or_path` written into `adapter_config.json`; defaults to the resolved path.
    pub base_model_name: Option<String>,
    /// The type of the compute (`f32`); the base stays in its stored (quantized) type.
    #[serde(default)]
    pub dtype: crate::adapter::DType,
}

impl CausalLmSpec {
    pub fn from_component(c: &crate::config::Component) -> Result<Self, Diagnostics> {
        c.deserialize()
    }

    pub fn file(&self, ctx: &crate::stage::StageContext) -> Result<PathBuf> {
        ctx.assets.resolve(&self.path)
    }

    /// The header and the configuration it describes.
    pub fn header(&self, ctx: &crate::stage::StageContext) -> Result<(Header, LlamaConfig)> {
        read_config(&self.file(ctx)?)
    }

    pub fn base_model_name(&self, ctx: &crate::stage::StageContext) -> Result<String> {
        match &self.base_model_name {
            Some(n) => Ok(n.clone()),
            None => Ok(self.file(ctx)?.display().to_string()),
        }
    }

    pub fn resolved(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "type": "llama-causal-lm" });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v
    }

    /// Header-only facts for the validation rules.
    pub fn facts(&self, ctx: &crate::stage::StageContext) -> Result<crate::rules::ModelFacts> {
        let (h, cfg) = self.header(ctx)?;
        Ok(facts(&h, &cfg))
    }
}

/// The header of a GGUF file and the Llama configuration it describes.
pub fn read_config(path: &Path) -> Result<(Header, LlamaConfig)> {
    if !path.is_file() {
        return Err(Error::Data(format!("{}: the GGUF file does not exist", path.display())));
    }
    let h = Header::read(path)?;
    let cfg = LlamaConfig::from_header(&h)?;
    Ok((h, cfg))
}

/// The validation rules' view of a Llama GGUF.
pub fn facts(h: &Header, cfg: &LlamaConfig) -> crate::rules::ModelFacts {
    let mut targets = std::collections::BTreeMap::new();
    for (name, _, _) in TARGETS {
        let (o, i) = cfg.linear_dims(name);
        let layers = (0..cfg.num_layers).map(|l| (hf_name(l, name), i, o)).collect();
        targets.insert(name.to_string(), layers);
    }
    crate::rules::ModelFacts {
        architecture: "llama".into(),
        hidden_size: cfg.hidden_size,
        num_layers: cfg.num_layers,
        num_heads: cfg.num_heads,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        max_positions: cfg.context_length,
        tensors: h
            .tensors
            .iter()
            .map(|t| (t.name.clone(), (t.type_name(), t.shape())))
            .collect(),
        weight_bytes: h.file_len,
        targets,
        inconsistencies: Vec::new(),
        activation: "silu".into(),
        base_dropout: Vec::new(),
        has_tokenizer: h.get("tokenizer.ggml.tokens").is_some(),
        parameters: h.tensors.iter().map(|t| t.numel() as usize).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn cfg() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 8,
            num_layers: 3,
            num_heads: 2,
            num_kv_heads: 1,
            intermediate_size: 12,
            vocab_size: 16,
            context_length: 32,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tied_embeddings: true,
        }
    }

    fn spec(targets: &[&str], layers: Option<Vec<usize>>) -> LoraSpec {
        LoraSpec {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: layers,
            target_modules_location: None,
            patterns_location: None,
        }
    }

    #[test]
    fn names_all_linear_regex_and_layers_select_modules() {
        let c = cfg();
        assert_eq!(
            resolve_targets(&spec(&["q_proj", "v_proj"], None), &c).unwrap().len(),
            6
        );
        assert_eq!(resolve_targets(&spec(&["all-linear"], None), &c).unwrap().len(), 21);
        let r = resolve_targets(&spec(&[r"model\.layers\.[01]\.mlp\..*"], None), &c).unwrap();
        assert_eq!(
            r,
            vec![
                (0, "gate_proj"),
                (0, "up_proj"),
                (0, "down_proj"),
                (1, "gate_proj"),
                (1, "up_proj"),
                (1, "down_proj")
            ]
        );
        let r = resolve_targets(&spec(&["o_proj"], Some(vec![2])), &c).unwrap();
        assert_eq!(r, vec![(2, "o_proj")]);
    }

    #[test]
    fn bad_targets_are_all_reported() {
        let err = resolve_targets(&spec(&["q_prj", "(", r"nothing\.here"], Some(vec![7])), &cfg())
            .unwrap_err()
            .to_string();
        for id in [
            "lora::unknown-target-module",
            "lora::invalid-target-regex",
            "lora::target-regex-unmatched",
            "lora::layer-out-of-range",
        ] {
            assert!(err.contains(id), "{id} missing in {err}");
        }
        assert!(err.contains("did you mean `q_proj`"), "{err}");
        let mut s = spec(&["k_proj"], None);
        s.r = 5; // k_proj is 4 -> 8
        let err = resolve_targets(&s, &cfg()).unwrap_err().to_string();
        assert!(err.contains("1 <= rank <= 4"), "{err}");
    }

    /// Found by `cargo xtask fuzz` (target gguf): a block count of 2^40 built a
    /// list of every expected tensor name before comparing, and ran out of memory.
    #[test]
    fn a_huge_layer_count_is_an_error_not_an_allocation() {
        use crate::gguf::{Header, Value, write};
        let f32s = |n: usize| vec![0u8; 4 * n];
        let meta = |layers: u64, heads: u32| {
            vec![
                ("general.architecture", Value::Str("llama".into())),
                ("llama.embedding_length", Value::U32(8)),
                ("llama.block_count", Value::U64(layers)),
                ("llama.attention.head_count", Value::U32(heads)),
                ("llama.feed_forward_length", Value::U32(16)),
                ("llama.context_length", Value::U32(32)),
            ]
        };
        let tensors = [
            ("token_embd.weight", vec![8, 4], 0, f32s(32)),
            ("output_norm.weight", vec![8], 0, f32s(8)),
        ];
        for (layers, heads, expect) in [
            (1u64 << 40, 2, "no tensor `blk.0.attn_q.weight`"),
            (1, 0, "not a Llama attention"),
        ] {
            let bytes = write(&meta(layers, heads), &tensors);
            let h = Header::parse(&bytes[..], bytes.len() as u64, std::path::Path::new("x.gguf")).unwrap();
            let err = LlamaConfig::from_header(&h).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert!(err.matches("no tensor").count() <= 9, "{err}");
        }
    }

    #[test]
    fn peft_names_follow_llama_for_causal_lm() {
        assert_eq!(hf_name(3, "q_proj"), "model.layers.3.self_attn.q_proj");
        assert_eq!(hf_name(0, "down_proj"), "model.layers.0.mlp.down_proj");
        assert_eq!(gguf_name(1, "o_proj"), "blk.1.attn_output.weight");
        let s = spec(&["v_proj", "q_proj"], None);
        let info = peft_info(&s, &resolve_targets(&s, &cfg()).unwrap());
        assert_eq!(info.task_type, "CAUSAL_LM");
        assert_eq!(info.target_modules, serde_json::json!(["q_proj", "v_proj"]));
    }
}
