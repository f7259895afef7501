//! Adapter files in PEFT's layout, so that `PeftModel.from_pretrained` loads them unchanged.
//!
//! `adapter_model.safetensors` holds the trainable parameters under their PEFT
//! keys (`...lora_A.weight` is `[r, in]`, `...lora_B.weight` is `[out, r]`,
//! modules to save under their plain names); `adapter_config.json` holds
//! PEFT's `LoraConfig` fields. Both are written atomically.

use std::collections::HashMap;
use std::path::Path;

use lora_core::adapter::{AdapterModel, ParamInfo};
use lora_core::fsutil::write_atomic;
use lora_core::{Error, LoraSpec, Result};
use safetensors::tensor::{Dtype, TensorView};

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// PEFT's `adapter_config.json` for this model and LoRA spec.
pub fn adapter_config(model: &dyn AdapterModel, lora: &LoraSpec, base_model: &str) -> serde_json::Value {
    let info = model.peft_info();
    serde_json::json!({
        "alpha_pattern": lora.alpha_pattern,
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": lora.layers_to_transform,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout.to_string().parse::<f64>().unwrap_or(f64::from(lora.dropout)),
        "modules_to_save": info.modules_to_save,
        "peft_type": "LORA",
        "r": lora.r,
        "rank_pattern": lora.rank_pattern,
        "revision": null,
        "target_modules": info.target_modules,
        // PEFT has no task type for some models (image classification): null there.
        "task_type": (!info.task_type.is_empty()).then_some(info.task_type),
        "use_dora": false,
        "use_rslora": lora.use_rslora,
    })
}

pub fn save_adapter(dir: &Path, model: &dyn AdapterModel, lora: &LoraSpec, base_model: &str) -> Result<()> {
    let values = model.read_params()?;
    let bytes: Vec<Vec<u8>> = values
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(values.len());
    for (info, data) in model.params().iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, info.shape.clone(), data)
            .map_err(|e| Error::Other(format!("cannot serialise {}: {e}", info.name)))?;
        views.push((info.name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Other(format!("cannot serialise the adapter: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &file)?;
    let config = serde_json::to_vec_pretty(&adapter_config(model, lora, base_model)).expect("JSON values serialise");
    write_atomic(&dir.join(CONFIG_FILE), &config)
}

/// The fields of `adapter_config.json` that shape the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub task_type: String,
}

pub fn read_adapter_config(dir: &Path) -> Result<SavedLoraConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read adapter config", &path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: not JSON: {e}", path.display())))?;
    let field = |k: &str| {
        v.get(k)
            .ok_or_else(|| Error::Data(format!("{}: missing `{k}`", path.display())))
    };
    if field("peft_type")?.as_str() != Some("LORA") {
        return Err(Error::Data(format!("{}: peft_type is not LORA", path.display())));
    }
    Ok(SavedLoraConfig {
        r: field("r")?
            .as_u64()
            .ok_or_else(|| Error::Data("`r` is not an integer".into()))? as usize,
        alpha: field("lora_alpha")?
            .as_f64()
            .ok_or_else(|| Error::Data("`lora_alpha` is not a number".into()))?,
        use_rslora: v.get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
        task_type: v.get("task_type").and_then(|x| x.as_str()).unwrap_or("").to_string(),
    })
}

/// Loads adapter tensors into a model built with the same LoRA targets. Every
/// trainable parameter must be present with its shape; extra keys are errors.
pub fn load_adapter(dir: &Path, model: &mut dyn AdapterModel) -> Result<()> {
    let values = read_adapter_values(dir, model.params())?;
    model.write_params(&values)
}

/// The values of an adapter file, one vector per entry of `params` (names and
/// file shapes checked; a key that `params` does not have is an error).
pub fn read_adapter_values(dir: &Path, params: &[ParamInfo]) -> Result<Vec<Vec<f32>>> {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read adapter", &path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{}: not a safetensors file: {e}", path.display())))?;
    let mut values = Vec::with_capacity(params.len());
    for info in params {
        let t = st.tensor(&info.name).map_err(|_| {
            Error::Data(format!(
                "{}: missing tensor `{}` (was the adapter trained with other target modules?)",
                path.display(),
                info.name
            ))
        })?;
        if t.shape() != info.shape.as_slice() || t.dtype() != Dtype::F32 {
            return Err(Error::Data(format!(
                "{}: tensor `{}` is {:?} {:?}, the model expects F32 {:?}",
                path.display(),
                info.name,
                t.dtype(),
                t.shape(),
                info.shape
            )));
        }
        values.push(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    let known: std::collections::HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    if let Some(extra) = st.names().into_iter().find(|n| !known.contains(&n[..])) {
        return Err(Error::Data(format!(
            "{}: tensor `{extra}` has no place in this model (other target modules or another architecture?)",
            path.display()
        )));
    }
    Ok(values)
}
