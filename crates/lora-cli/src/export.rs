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
use lora_export::calibrated::Method;
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
    /// Activation-aware rounding of the Q4_0 and Q5_0 matrices: this many of
    /// the run's training conversations are run through the merged model.
    pub calibrate: Option<usize>,
    /// How the calibration statistics are used.
    pub calibration: Method,
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
            let plan = quant.unwrap_or(GgmlType::F16.into());
            let stats = match req.calibrate {
                Some(n) => {
                    check_calibration(req, &base, plan)?;
                    Some(calibrate(&config, &req.run_dir, n, assets)?)
                }
                None => None,
            };
            let calibration = stats.as_ref().map(|stats| llama::Calibration {
                stats,
                method: req.calibration,
            });
            let (meta, tensors) = if req.merge {
                llama::merged_gguf(&base, &adapter, plan, req.rounding, calibration)?
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
            no_calibration(req)?;
            let base = GgufFile::open(path)?;
            let mut files = llama::merged_safetensors(&base, &adapter)?;
            files.extend(llama_tokenizer(path)?);
            lora_export::write::folder(&req.output, &files)?;
            Ok((req.output.clone(), size(&req.output.join("model.safetensors"))))
        }
        (Family::Bert(dir) | Family::Vit(dir), _) => {
            refuse_existing(&req.output)?;
            no_calibration(req)?;
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

fn no_calibration(req: &Request) -> Result<()> {
    match req.calibrate {
        Some(_) => Err(invalid(
            "export::calibrate-unsupported",
            "--calibrate applies to a merged Llama GGUF with Q4_0 or Q5_0 matrices (--merge --quant q4_0, q5_0, q4_k, q4_k_m)"
                .into(),
        )),
        None => Ok(()),
    }
}

/// `--calibrate N` needs a merge, at least one conversation, and a type with
/// Q4_0 or Q5_0 matrices (the ones it rounds).
fn check_calibration(req: &Request, base: &GgufFile, plan: llama::TypePlan) -> Result<()> {
    if !req.merge {
        return no_calibration(req);
    }
    if req.calibrate == Some(0) {
        return Err(invalid(
            "export::calibrate-invalid",
            "--calibrate needs at least one conversation".into(),
        ));
    }
    if llama::calibrated_tensors(base, plan)? == 0 {
        return Err(invalid(
            "export::calibrate-unsupported",
            format!(
                "--calibrate rounds Q4_0 and Q5_0 matrices; --quant {} has none on this model (use q4_0, q5_0, q4_k or q4_k_m)",
                req.quant.as_deref().unwrap_or("f16")
            ),
        ));
    }
    Ok(())
}

/// Runs the first `n` training conversations of the run's own pipeline
/// (storage order, each alone) through the model with its adapter, and
/// returns the Gram matrices of the inputs of its matrices.
fn calibrate(
    config: &PipelineConfig,
    run_dir: &Path,
    n: usize,
    assets: &dyn AssetResolver,
) -> Result<lora_core::calibration::InputStatistics> {
    let pipeline = crate::pipeline::Pipeline::build(config.clone())?;
    let ctx = pipeline.context(assets)?;
    let (data, mut model) = pipeline.prepare(&ctx)?;
    if data.train.len() < n {
        return Err(invalid(
            "export::calibrate-invalid",
            format!(
                "--calibrate {n}: the run's training split has {} conversations",
                data.train.len()
            ),
        ));
    }
    lora_train::load_adapter(run_dir, model.as_mut())?;
    model.merge()?;
    let decoder = model
        .decoder()
        .ok_or_else(|| Error::Other("this model does not decode".into()))?;
    let mut stats = lora_core::calibration::InputStatistics::default();
    for batch in data.train.batches(1, None).take(n) {
        let lora_core::Batch::Tokens(b) = batch? else {
            return Err(Error::Other("calibration takes token batches".into()));
        };
        let ids: Vec<u32> = b
            .input_ids
            .iter()
            .zip(&b.attention_mask)
            .filter(|(_, m)| **m != 0)
            .map(|(i, _)| *i)
            .collect();
        decoder.input_statistics(&ids, &mut stats)?;
    }
    Ok(stats)
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
