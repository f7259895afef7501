//! `lora export`: a run's adapter for deployment. `--merge` folds it into the
//! base and writes Hugging Face safetensors (BERT and ViT classifiers, Llama decoder)
//! or a GGUF file quantized to `--quant` (Llama decoder); without `--merge`
//! the adapter alone becomes llama.cpp's LoRA GGUF. Every check runs before
//! anything is written (exit 2), and the output appears whole or not at all.

use std::path::{Path, PathBuf};

use lora_core::config::PipelineConfig;
use lora_core::diag::Diagnostic;
use lora_core::gguf::GgmlType;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{Error, Result};
use lora_export::{Adapter, GgufFile, llama, record};

/// What to write.
#[derive(Debug, Clone)]
pub struct Request {
    /// The run's output folder: pipeline.toml, the adapter, base-model.json.
    pub run_dir: PathBuf,
    pub merge: bool,
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The merged GGUF's type (default f16).
    pub quant: Option<String>,
    /// Another copy of the base (default: the run's `[model] path`).
    pub base: Option<String>,
    /// How merged values are rounded to quantized blocks.
    pub rounding: llama::Rounding,
    pub output: PathBuf,
}

fn invalid(code: &str, message: String) -> Error {
    Error::Invalid(Diagnostic::error(code.to_string(), message).into())
}

/// The model family of the run, from its `[model] type`.
enum Family {
    Llama(PathBuf),
    Bert(PathBuf),
    Vit(PathBuf),
}

fn family(req: &Request, config: &PipelineConfig, assets: &dyn AssetResolver) -> Result<Family> {
    let ctx = StageContext {
        seed: config.run.seed,
        assets,
        tokenizer: None,
    };
    let base = |path: &str| -> Result<PathBuf> {
        let p = ctx.assets.resolve(req.base.as_deref().unwrap_or(path))?;
        if p.exists() {
            Ok(p)
        } else {
            Err(invalid(
                "export::base-missing",
                format!("{}: the base model does not exist", p.display()),
            ))
        }
    };
    match config.model.type_name.as_str() {
        "llama-causal-lm" => {
            let spec = lora_core::llama::CausalLmSpec::from_component(&config.model)?;
            Ok(Family::Llama(base(&spec.path)?))
        }
        "bert-classifier" => {
            let spec = lora_core::bert::ClassifierSpec::from_component(&config.model)?;
            Ok(Family::Bert(base(&spec.path)?))
        }
        "vit-classifier" => {
            let spec = lora_core::vit::VitClassifierSpec::from_component(&config.model)?;
            let path = spec.path.ok_or_else(|| {
                invalid(
                    "export::architecture-unsupported",
                    "this ViT run trained a new model (no `path`): there is no adapter to merge".into(),
                )
            })?;
            Ok(Family::Vit(base(&path)?))
        }
        other => Err(invalid(
            "export::architecture-unsupported",
            format!(
                "`lora export` writes llama-causal-lm, bert-classifier and vit-classifier runs; this run's model is `{other}`"
            ),
        )),
    }
}

/// Checks everything, then writes; returns the path written and its size.
pub fn export(req: &Request, assets: &dyn AssetResolver) -> Result<(PathBuf, u64)> {
    let adapter = Adapter::read(&req.run_dir)?;
    let pipeline_path = req.run_dir.join("pipeline.toml");
    let text = std::fs::read_to_string(&pipeline_path).map_err(|_| {
        invalid(
            "export::adapter-missing",
            format!("{}: the run's pipeline is missing", pipeline_path.display()),
        )
    })?;
    let config = PipelineConfig::parse(&pipeline_path, text)?;
    let format = req.format.to_ascii_lowercase();
    if format != "gguf" && format != "safetensors" {
        return Err(invalid(
            "export::format-unknown",
            format!("unknown format `{}`; choose gguf or safetensors", req.format),
        ));
    }
    let quant = req.quant.as_deref().map(lora_export::parse_quant).transpose()?;
    let family = family(req, &config, assets)?;
    let files = match &family {
        Family::Llama(p) => vec![p.clone()],
        Family::Bert(d) | Family::Vit(d) => vec![d.join("config.json"), d.join("model.safetensors")],
    };
    if !record::check(&req.run_dir, &files)? {
        eprintln!(
            "warning: {} has no {}: the base is checked by shapes only",
            req.run_dir.display(),
            record::RECORD_FILE
        );
    }
    if format == "safetensors" && quant.is_some_and(|q| q.requested != GgmlType::F32) {
        return Err(invalid(
            "export::quant-unsupported",
            "safetensors exports are f32; --quant applies to GGUF".into(),
        ));
    }
    if !req.merge && format == "safetensors" {
        return Err(invalid(
            "export::format-unknown",
            format!(
                "the unmerged adapter is already PEFT safetensors ({}); use --merge, or --format gguf for llama.cpp",
                req.run_dir.join(lora_export::adapter::WEIGHTS_FILE).display()
            ),
        ));
    }
    match (&family, format.as_str()) {
        (Family::Bert(_) | Family::Vit(_), "gguf") => Err(invalid(
            "export::quant-unsupported",
            "the BERT and ViT classifiers cannot be written as GGUF (llama.cpp runs them as no classifier); use --format safetensors"
                .into(),
        )),
        (Family::Llama(path), "gguf") => {
            let base = GgufFile::open(path)?;
            let (meta, tensors) = if req.merge {
                llama::merged_gguf(&base, &adapter, quant.unwrap_or(GgmlType::F16.into()), req.rounding)?
            } else {
                if quant.is_some() {
                    return Err(invalid(
                        "export::quant-unsupported",
                        "the adapter GGUF is f32; --quant applies with --merge".into(),
                    ));
                }
                llama::adapter_gguf(&base, &adapter)?
            };
            lora_export::write::gguf(&req.output, &meta, &tensors)?;
            Ok((req.output.clone(), size(&req.output)))
        }
        (Family::Llama(path), _) => {
            refuse_existing(&req.output)?;
            let base = GgufFile::open(path)?;
            let mut files = llama::merged_safetensors(&base, &adapter)?;
            files.extend(llama_tokenizer(path)?);
            lora_export::write::folder(&req.output, &files)?;
            Ok((req.output.clone(), size(&req.output.join("model.safetensors"))))
        }
        (Family::Bert(dir) | Family::Vit(dir), _) => {
            refuse_existing(&req.output)?;
            let labels_path = req.run_dir.join("labels.json");
            let labels: Vec<String> = std::fs::read_to_string(&labels_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| {
                    invalid(
                        "export::adapter-missing",
                        format!("{}: the run's label names are missing", labels_path.display()),
                    )
                })?;
            let files = match family {
                Family::Vit(_) => lora_export::bert::merged_vit_safetensors(dir, &adapter, &labels)?,
                _ => lora_export::bert::merged_safetensors(dir, &adapter, &labels)?,
            };
            lora_export::write::folder(&req.output, &files)?;
            Ok((req.output.clone(), size(&req.output.join("model.safetensors"))))
        }
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(invalid(
            "export::output-exists",
            format!(
                "{}: already exists; a merged model is written into a new folder",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// `tokenizer.json` and `tokenizer_config.json` (with the chat template) rebuilt from the GGUF header.
fn llama_tokenizer(gguf: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let header = lora_core::gguf::Header::read(gguf)?;
    let tok = lora_data::chat_template::ChatTokenizer::from_header(&header)?;
    let json = tok
        .tokenizer
        .to_string(true)
        .map_err(|e| Error::Other(format!("cannot serialise the tokenizer: {e}")))?;
    let template = header
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.tokenizer.id_to_token(tok.pad_id),
        "unk_token": tok.tokenizer.id_to_token(0),
        "add_bos_token": false,
        "chat_template": template,
        "model_max_length": header.get("llama.context_length").and_then(|v| v.as_u64()),
    });
    Ok(vec![
        ("tokenizer.json".into(), json.into_bytes()),
        (
            "tokenizer_config.json".into(),
            serde_json::to_vec_pretty(&config).expect("JSON serialises"),
        ),
    ])
}
