//! The classifiers merged into one Hugging Face checkpoint:
//! `BertForSequenceClassification` (the base's tensors under `bert.`) and
//! `ViTForImageClassification` (under `vit.`), each adapted linear (or the
//! ViT's patch-embedding convolution) replaced by `W + scale * B A`, the
//! trained classifier from the adapter, and a `config.json` with the labels
//! (the ViT's with its `preprocessor_config.json`). transformers loads the
//! folder as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lora_core::{Error, Result};
use safetensors::Dtype;

use crate::adapter::Adapter;
use crate::invalid;

/// Files of the base folder copied beside the merged weights (the tokenizer).
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The merged folder's files: `model.safetensors`, `config.json` and the tokenizer's.
pub fn merged_safetensors(base_dir: &Path, adapter: &Adapter, labels: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    if adapter.task_type != "SEQ_CLS" {
        return Err(invalid(
            "export::base-mismatch",
            format!(
                "{}: the adapter's task is `{}`, not SEQ_CLS: it was not trained on the BERT classifier",
                adapter.dir.display(),
                adapter.task_type
            ),
        ));
    }
    let mut files = merged_classifier(base_dir, adapter, labels, "bert", "BertForSequenceClassification")?;
    for name in TOKENIZER_FILES {
        let p = base_dir.join(name);
        if p.is_file() {
            files.push((
                name.to_string(),
                std::fs::read(&p).map_err(|e| Error::io("cannot read", &p, e))?,
            ));
        }
    }
    Ok(files)
}

/// The ViT classifier's merged folder: `model.safetensors`, `config.json`
/// and `preprocessor_config.json` (`ViTImageProcessor`: pixels scaled to
/// [0, 1] as the image datasets scale them, no normalisation, the base's
/// image size).
pub fn merged_vit_safetensors(base_dir: &Path, adapter: &Adapter, labels: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    if !adapter
        .tensors
        .keys()
        .any(|k| k.contains(".vit.") || k.starts_with("vit."))
    {
        return Err(invalid(
            "export::base-mismatch",
            format!(
                "{}: the adapter has no `vit.` module: it was not trained on the ViT classifier",
                adapter.dir.display()
            ),
        ));
    }
    let mut files = merged_classifier(base_dir, adapter, labels, "vit", "ViTForImageClassification")?;
    let config: serde_json::Value = serde_json::from_slice(&files[1].1).expect("written above");
    let size = config["image_size"].as_u64().unwrap_or(224);
    let channels = config["num_channels"].as_u64().unwrap_or(3) as usize;
    let processor = serde_json::json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": false,
        "image_mean": vec![0.0; channels],
        "image_std": vec![1.0; channels],
    });
    files.push((
        "preprocessor_config.json".to_string(),
        serde_json::to_vec_pretty(&processor).expect("JSON serialises"),
    ));
    Ok(files)
}

/// `model.safetensors` and `config.json` of a classifier whose base folder is
/// already in Hugging Face's layout, its tensors under `prefix.`.
fn merged_classifier(
    base_dir: &Path,
    adapter: &Adapter,
    labels: &[String],
    prefix: &str,
    architecture: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let weights = base_dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).map_err(|e| Error::io("cannot read", &weights, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Data(format!("{}: {e}", weights.display())))?;
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let prefixed = st.names().iter().any(|n| n.starts_with(&format!("{prefix}.")));
    // Name -> (dtype, shape, little-endian bytes); only F32 matrices are merged,
    // other tensors (`position_ids`, I64) pass through as they are.
    let mut out: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (name, t) in st.tensors() {
        let full = if prefixed {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let shape = t.shape().to_vec();
        if t.dtype() != Dtype::F32 {
            out.insert(full, (t.dtype(), shape, t.data().to_vec()));
            continue;
        }
        let mut values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // A matrix `[out, in]`, or a convolution `[out, c, kh, kw]` as `[out, c kh kw]`.
        if let (Some(module), true) = (full.strip_suffix(".weight"), shape.len() >= 2)
            && let Some(d) = adapter.delta(module, shape[0], shape[1..].iter().product())?
        {
            values.iter_mut().zip(&d.values).for_each(|(w, d)| *w += d);
            used.insert(module.to_string());
        }
        out.insert(full, (Dtype::F32, shape, f32_bytes(&values)));
    }
    for module in adapter.modules() {
        if !used.contains(&module) {
            return Err(invalid(
                "export::base-mismatch",
                format!(
                    "{}: the adapter's module `{module}` is not in {}: another base model?",
                    adapter.dir.display(),
                    weights.display()
                ),
            ));
        }
    }
    // Modules saved whole (the classifier) replace or join the base's tensors.
    for (name, t) in &adapter.tensors {
        if name.contains(".lora_A.") || name.contains(".lora_B.") {
            continue;
        }
        let plain = name.strip_prefix("base_model.model.").unwrap_or(name);
        out.insert(plain.to_string(), (Dtype::F32, t.shape.clone(), f32_bytes(&t.data)));
    }
    let head = out.get("classifier.weight").map(|(_, s, _)| s[0]).ok_or_else(|| {
        invalid(
            "export::adapter-invalid",
            format!("{}: no classifier in the adapter", adapter.dir.display()),
        )
    })?;
    if head != labels.len() {
        return Err(invalid(
            "export::adapter-invalid",
            format!(
                "{}: the classifier has {head} outputs but labels.json names {} labels",
                adapter.dir.display(),
                labels.len()
            ),
        ));
    }
    let views = out
        .iter()
        .map(|(n, (dtype, s, b))| {
            safetensors::tensor::TensorView::new(*dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Other(format!("cannot serialise {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    let cfg_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("cannot read", &cfg_path, e))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", cfg_path.display())))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::Data(format!("{}: not a JSON object", cfg_path.display())))?;
    obj.insert("architectures".into(), serde_json::json!([architecture]));
    obj.insert("num_labels".into(), serde_json::json!(labels.len()));
    obj.insert(
        "id2label".into(),
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
            .collect(),
    );
    obj.insert(
        "label2id".into(),
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), serde_json::json!(i)))
            .collect(),
    );
    obj.insert("torch_dtype".into(), serde_json::json!("float32"));
    Ok(vec![
        ("model.safetensors".to_string(), st),
        (
            "config.json".to_string(),
            serde_json::to_vec_pretty(&config).expect("JSON serialises"),
        ),
    ])
}
