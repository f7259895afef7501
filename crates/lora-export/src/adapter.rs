//! A run's adapter as PEFT wrote it: `adapter_config.json` (rank, alpha,
//! rsLoRA, patterns) and `adapter_model.safetensors` (`lora_A` `[r, in]`,
//! `lora_B` `[out, r]`, modules to save under their plain names).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_core::{Error, LoraSpec, Result};
use safetensors::tensor::Dtype;

use crate::invalid;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// A tensor of the adapter file, as f32.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The adapter of one run.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    /// `r`, `alpha`, rsLoRA and the patterns, as PEFT's config gives them.
    pub lora: LoraSpec,
    pub task_type: String,
    pub tensors: BTreeMap<String, HostTensor>,
}

/// One module's update `scale * B A`, `[out, in]` row-major.
#[derive(Debug, Clone)]
pub struct Delta {
    pub out: usize,
    pub inp: usize,
    pub values: Vec<f32>,
}

impl Adapter {
    /// Reads the adapter in `dir`; a folder without one is an input error (exit 2).
    pub fn read(dir: &Path) -> Result<Self> {
        let (cfg_path, weights) = (dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE));
        if !cfg_path.is_file() || !weights.is_file() {
            return Err(invalid(
                "export::adapter-missing",
                format!(
                    "{}: no adapter here ({CONFIG_FILE} and {WEIGHTS_FILE} are both needed; is this a run's output folder?)",
                    dir.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("cannot read", &cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            invalid(
                "export::adapter-invalid",
                format!("{}: not JSON: {e}", cfg_path.display()),
            )
        })?;
        let bad = |what: &str| invalid("export::adapter-invalid", format!("{}: {what}", cfg_path.display()));
        if v.get("peft_type").and_then(|x| x.as_str()) != Some("LORA") {
            return Err(bad("peft_type is not LORA"));
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("`r` is missing"))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("`lora_alpha` is missing"))?;
        let map = |k: &str| v.get(k).and_then(|x| x.as_object()).cloned().unwrap_or_default();
        let lora = LoraSpec {
            r,
            alpha,
            dropout: 0.0,
            target_modules: Vec::new(),
            use_rslora: v.get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
            rank_pattern: map("rank_pattern")
                .into_iter()
                .filter_map(|(k, x)| Some((k, x.as_u64()? as usize)))
                .collect(),
            alpha_pattern: map("alpha_pattern")
                .into_iter()
                .filter_map(|(k, x)| Some((k, x.as_f64()?)))
                .collect(),
            layers_to_transform: None,
            target_modules_location: None,
            patterns_location: None,
        };
        let bytes = std::fs::read(&weights).map_err(|e| Error::io("cannot read", &weights, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| invalid("export::adapter-invalid", format!("{}: {e}", weights.display())))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in st.tensors() {
            if t.dtype() != Dtype::F32 {
                return Err(invalid(
                    "export::adapter-invalid",
                    format!("{}: `{name}` is {:?}, F32 expected", weights.display(), t.dtype()),
                ));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(
                name,
                HostTensor {
                    shape: t.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            lora,
            task_type: v.get("task_type").and_then(|x| x.as_str()).unwrap_or("").to_string(),
            tensors,
        })
    }

    /// The modules (PEFT paths under `base_model.model.`) that carry `lora_A`/`lora_B`.
    pub fn modules(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .map(|k| k.strip_prefix("base_model.model.").unwrap_or(k).to_string())
            .collect()
    }

    /// `A` and `B` of the module at `path` (`model.layers.0.self_attn.q_proj`).
    pub fn pair(&self, path: &str) -> Option<(&HostTensor, &HostTensor)> {
        let key = |ab: &str| format!("base_model.model.{path}.lora_{ab}.weight");
        Some((self.tensors.get(&key("A"))?, self.tensors.get(&key("B"))?))
    }

    /// The module's scale: `alpha / r` (or `/ sqrt(r)`), with its patterns and its file rank.
    pub fn scale(&self, path: &str, rank: usize) -> f64 {
        let mut spec = self.lora.for_module(path);
        spec.r = rank;
        spec.scale()
    }

    /// `scale * B A` of the module at `path`, checked against the base's `[out, in]`.
    pub fn delta(&self, path: &str, out: usize, inp: usize) -> Result<Option<Delta>> {
        let Some((a, b)) = self.pair(path) else {
            return Ok(None);
        };
        let r = a.shape.first().copied().unwrap_or(0);
        // A convolution's pair (the ViT's patch embedding): lora_A `[r, c, kh, kw]`
        // and lora_B `[out, r, 1, 1]` are the matrices `[r, c kh kw]` and `[out, r]`
        // (PEFT's conv2d delta is their product, reshaped).
        let a_inp: usize = a.shape.iter().skip(1).product();
        let b_ok = b.shape == [out, r] || b.shape == [out, r, 1, 1];
        if a.shape.len() < 2 || a_inp != inp || !b_ok {
            return Err(invalid(
                "export::base-mismatch",
                format!(
                    "{}: `{path}` has lora_A {:?} and lora_B {:?}, but the base's matrix is [{out}, {inp}] \
                     (was the adapter trained on another base model?)",
                    self.dir.display(),
                    a.shape,
                    b.shape
                ),
            ));
        }
        let scale = self.scale(path, r) as f32;
        let mut values = vec![0f32; out * inp];
        for (o, row) in values.chunks_exact_mut(inp).enumerate() {
            for k in 0..r {
                let s = scale * b.data[o * r + k];
                if s != 0.0 {
                    for (y, &x) in row.iter_mut().zip(&a.data[k * inp..(k + 1) * inp]) {
                        *y += s * x;
                    }
                }
            }
        }
        Ok(Some(Delta { out, inp, values }))
    }
}
