//! The Llama decoder's exports: the merged model as GGUF (quantized) or as
//! Hugging Face safetensors, and the unmerged adapter as llama.cpp's LoRA GGUF.
//!
//! Row order: GGUF stores the rows of `q` and `k` permuted for llama.cpp's
//! interleaved RoPE; PEFT's `lora_B` rows (and Hugging Face's weights) are in
//! the unpermuted order. A GGUF export permutes the update's rows (or `lora_B`'s)
//! into GGUF's order; a safetensors export un-permutes the base.

use std::collections::BTreeSet;

use lora_core::calibration::InputStatistics;
use lora_core::gguf::{GgmlType, Value};
use lora_core::llama::{LlamaConfig, TARGETS, gguf_name, hf_name};
use lora_core::{Error, Result};
use lora_nn::gguf::GgufFile;
use rayon::prelude::*;

use crate::adapter::Adapter;
use crate::calibrated::{self, Hessian, Method};
use crate::invalid;
use crate::quant::{q4_1_on_grid, quantize, seed_of};
use crate::write::{GgufParts, OwnedTensor};

/// Stored row `2i + j` of a head is Hugging Face's row `j * half + i`.
fn permute(values: &[f32], rows: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let width = values.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (gguf, hf) = (h * hd + 2 * i + j, h * hd + j * half + i);
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst * width..(dst + 1) * width].copy_from_slice(&values[src * width..(src + 1) * width]);
            }
        }
    }
    out
}

/// Heads of a module whose rows GGUF permutes.
fn permuted_heads(cfg: &LlamaConfig, module: &str) -> Option<usize> {
    match module {
        "q_proj" => Some(cfg.num_heads),
        "k_proj" => Some(cfg.num_kv_heads),
        _ => None,
    }
}

/// The (layer, module) of a GGUF tensor name, for the targetable matrices.
fn module_of(name: &str) -> Option<(usize, &'static str)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let tensor = rest.strip_suffix(".weight")?;
    let module = TARGETS.iter().find(|t| t.2 == tensor)?.0;
    Some((layer.parse().ok()?, module))
}

/// Checks that every module of the adapter is a matrix of this base, and its task.
fn check_adapter(adapter: &Adapter, cfg: &LlamaConfig) -> Result<Vec<(usize, &'static str)>> {
    if adapter.task_type != "CAUSAL_LM" {
        return Err(invalid(
            "export::base-mismatch",
            format!(
                "{}: the adapter's task is `{}`, not CAUSAL_LM: it was not trained on a Llama decoder",
                adapter.dir.display(),
                adapter.task_type
            ),
        ));
    }
    let known: BTreeSet<String> = (0..cfg.num_layers)
        .flat_map(|l| TARGETS.iter().map(move |t| hf_name(l, t.0)))
        .collect();
    let mut found = Vec::new();
    for name in adapter.tensors.keys() {
        let path = name.strip_prefix("base_model.model.").unwrap_or(name);
        let module = path
            .strip_suffix(".lora_A.weight")
            .or_else(|| path.strip_suffix(".lora_B.weight"))
            .filter(|m| known.contains(*m));
        if module.is_none() {
            return Err(invalid(
                "export::base-mismatch",
                format!(
                    "{}: tensor `{name}` has no place in this base ({} layers): another base model?",
                    adapter.dir.display(),
                    cfg.num_layers
                ),
            ));
        }
    }
    for l in 0..cfg.num_layers {
        for (module, _, _) in TARGETS {
            if adapter.pair(&hf_name(l, module)).is_some() {
                let (out, inp) = cfg.linear_dims(module);
                // Shapes are checked here, before any writing.
                let (a, b) = adapter.pair(&hf_name(l, module)).expect("present");
                let r = a.shape.first().copied().unwrap_or(0);
                if a.shape != [r, inp] || b.shape != [out, r] {
                    return Err(invalid(
                        "export::base-mismatch",
                        format!(
                            "{}: `{}` has lora_A {:?} and lora_B {:?}; this base's matrix is [{out}, {inp}]: another base model?",
                            adapter.dir.display(),
                            hf_name(l, module),
                            a.shape,
                            b.shape
                        ),
                    ));
                }
                found.push((l, module));
            }
        }
    }
    Ok(found)
}

/// The type each tensor of a merged GGUF gets: one requested type for the
/// matrices, or llama.cpp's Q4_K_M mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypePlan {
    pub requested: GgmlType,
    /// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q4_K_M` (requested Q4_K): Q6_K for the
    /// output matrix and for `attn_v` and `ffn_down` in the layers its
    /// `use_more_bits` picks.
    pub q4_k_m: bool,
}

impl From<GgmlType> for TypePlan {
    fn from(requested: GgmlType) -> Self {
        Self {
            requested,
            q4_k_m: false,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and
/// every third layer between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer as i64 - (layers / 8) as i64) % 3 == 2
}

impl TypePlan {
    /// llama.cpp's Q4_K_M.
    pub const Q4_K_M: TypePlan = TypePlan {
        requested: GgmlType::Q4_K,
        q4_k_m: true,
    };

    /// The name `--quant` takes.
    pub fn name(&self) -> String {
        if self.q4_k_m {
            "q4_k_m".into()
        } else {
            self.requested.name().to_ascii_lowercase()
        }
    }

    /// Norms stay F32. The token embedding (the output projection too, when
    /// tied) is the most sensitive matrix: below 8 bits it is kept at Q8_0, as
    /// `llama-quantize` does for a 4-bit file whose rows do not fit Q6_K (and
    /// Q4_K_M makes it Q6_K where they fit). A matrix whose rows are not
    /// whole super-blocks falls back as `llama-quantize` does: Q4_K to Q5_0,
    /// Q6_K to Q8_0. `layers` is the model's layer count; `tied`, whether the
    /// token embedding is also the output projection (no `output.weight`).
    pub fn type_of(&self, name: &str, dims: &[u64], layers: usize, tied: bool) -> GgmlType {
        if dims.len() < 2 {
            return GgmlType::F32;
        }
        let row = dims[0] as usize;
        let bits4 = matches!(
            self.requested,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q4_K
        );
        let output = name == "output.weight" || (name == "token_embd.weight" && (tied || !self.q4_k_m));
        let more_bits = self.q4_k_m
            && module_of(name).is_some_and(|(l, m)| matches!(m, "v_proj" | "down_proj") && use_more_bits(l, layers));
        let ty = if output && bits4 {
            if self.q4_k_m { GgmlType::Q6_K } else { GgmlType::Q8_0 }
        } else if more_bits {
            GgmlType::Q6_K
        } else {
            self.requested
        };
        match ty {
            GgmlType::Q4_K if !row.is_multiple_of(256) => GgmlType::Q5_0,
            GgmlType::Q6_K if !row.is_multiple_of(256) => GgmlType::Q8_0,
            ty => ty,
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for the requested type.
    pub fn file_type(&self) -> u32 {
        match self.requested {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
            GgmlType::Q5_0 => 8,
            // LLAMA_FTYPE_MOSTLY_Q4_K_M, or _S: Q4_K matrices with fallbacks.
            GgmlType::Q4_K if self.q4_k_m => 15,
            GgmlType::Q4_K => 14,
            GgmlType::Q6_K => 18,
        }
    }
}

/// Checks that the architecture can take `ty`: every matrix a whole number of
/// blocks, and for Q4_K at least one matrix of whole super-blocks (else the
/// file would hold no Q4_K at all).
pub fn check_quant(base: &GgufFile, plan: TypePlan) -> Result<()> {
    let cfg = LlamaConfig::from_header(&base.header)?;
    let ty = plan.requested;
    let mut any = false;
    for t in base.header.tensors.iter().filter(|t| t.dims.len() >= 2) {
        let got = plan.type_of(&t.name, &t.dims, cfg.num_layers, cfg.tied_embeddings);
        if !(t.dims[0] as usize).is_multiple_of(got.block().0) {
            return Err(invalid(
                "export::quant-unsupported",
                format!(
                    "{}: `{}` has rows of {} values, not whole {} blocks of {}: this model cannot be quantized to {}",
                    base.header.path.display(),
                    t.name,
                    t.dims[0],
                    got.name(),
                    got.block().0,
                    ty.name()
                ),
            ));
        }
        any |= got == ty;
    }
    if !any {
        return Err(invalid(
            "export::quant-unsupported",
            format!(
                "{}: no matrix has rows of a multiple of {} values, so none can be {}: choose q4_0, q4_1 or q8_0",
                base.header.path.display(),
                ty.block().0,
                ty.name()
            ),
        ));
    }
    Ok(())
}

/// Checks the adapter against the base before anything is written.
pub fn check(base: &GgufFile, adapter: &Adapter) -> Result<LlamaConfig> {
    let cfg = LlamaConfig::from_header(&base.header)?;
    check_adapter(adapter, &cfg)?;
    Ok(cfg)
}

/// The metadata of the base with `general.file_type` set (tokenizer and chat template carried over).
fn merged_metadata(base: &GgufFile, file_type: u32) -> Vec<(String, Value)> {
    let mut meta: Vec<(String, Value)> = Vec::new();
    if let Some(a) = base.header.get("general.architecture") {
        meta.push(("general.architecture".into(), a.clone()));
    }
    for (k, v) in &base.header.metadata {
        if k == "general.architecture" || k == "general.file_type" || k == "general.quantization_version" {
            continue;
        }
        meta.push((k.clone(), v.clone()));
    }
    meta.push(("general.file_type".into(), Value::U32(file_type)));
    meta.push(("general.quantization_version".into(), Value::U32(2)));
    meta
}

/// The base tensor `name` as f32 (row-major `[out, in]` for a matrix), with the
/// adapter's update added in GGUF's row order when it targets the matrix.
fn merged_values(base: &GgufFile, cfg: &LlamaConfig, adapter: &Adapter, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    if dims.len() < 2 {
        return base.vector(name);
    }
    let mut w = base.matrix(name)?.to_f32();
    if let Some((layer, module)) = module_of(name) {
        let (out, inp) = (dims[1] as usize, dims[0] as usize);
        if let Some(d) = adapter.delta(&hf_name(layer, module), out, inp)? {
            let d = match permuted_heads(cfg, module) {
                Some(heads) => permute(&d.values, out, heads, true),
                None => d.values,
            };
            w.iter_mut().zip(&d).for_each(|(w, d)| *w += d);
        }
    }
    Ok(w)
}

/// How a merged tensor's values are rounded to their blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// ggml's reference quantizers everywhere (`quantize_row_*_ref`): the
    /// bytes `llama-quantize` writes without an importance matrix.
    Reference,
    /// As `Reference`, except Q4_1 of a Q4_1 base: each block keeps the base
    /// block's scale and minimum and rounds without bias
    /// ([`crate::quant::q4_1_on_grid`]), so that an update far below one
    /// step is not rounded away (a block the update moves out of the base's
    /// range falls back to the reference). (An error-minimising Q4_0 scale,
    /// llama.cpp's `make_qx_quants` with unit importance, was measured and
    /// lost: perplexity 43.34 against the reference's 42.26.)
    #[default]
    Fitted,
}

/// Statistics of the merged model's inputs, and how Q4_0 and Q5_0 matrices
/// use them (`lora export --calibrate`); other types are rounded as without.
#[derive(Clone, Copy)]
pub struct Calibration<'a> {
    pub stats: &'a InputStatistics,
    pub method: Method,
}

/// The plan's types that a calibration changes: Q4_0 and Q5_0 matrices of
/// the layers (whose inputs the decoder observes).
pub fn calibrated_tensors(base: &GgufFile, plan: TypePlan) -> Result<usize> {
    let cfg = LlamaConfig::from_header(&base.header)?;
    Ok(base
        .header
        .tensors
        .iter()
        .filter(|t| module_of(&t.name).is_some())
        .filter(|t| calibrated::levels(plan.type_of(&t.name, &t.dims, cfg.num_layers, cfg.tied_embeddings)).is_some())
        .count())
}

/// Quantizes one merged tensor (`values` in GGUF's order) to `ty`.
fn quantize_tensor(
    base: &GgufFile,
    name: &str,
    row: usize,
    values: &[f32],
    ty: GgmlType,
    rounding: Rounding,
    calibration: Option<Calibration<'_>>,
) -> Result<Vec<u8>> {
    let gram = calibration.and_then(|c| Some((c.method, c.stats.gram(name)?)));
    if let (Some(nmax), Some((method, gram))) = (calibrated::levels(ty), gram) {
        if gram.dim != row {
            return Err(Error::Other(format!(
                "{name}: calibrated on inputs of {}, its rows hold {row}",
                gram.dim
            )));
        }
        return Ok(match method {
            Method::Imatrix => {
                let importance: Vec<f32> = gram.mean_squares().iter().map(|&v| v as f32).collect();
                values
                    .par_chunks(row)
                    .flat_map_iter(|r| calibrated::weighted_row(nmax, r, &importance))
                    .collect()
            }
            Method::Gptq => {
                let h = Hessian::new(gram)?;
                values
                    .par_chunks(row)
                    .flat_map_iter(|r| calibrated::gptq_row(nmax, r, &h))
                    .collect()
            }
        });
    }
    let fitted = rounding == Rounding::Fitted;
    let grid = base
        .matrix(name)
        .ok()
        .filter(|m| fitted && ty == GgmlType::Q4_1 && m.ggml == GgmlType::Q4_1);
    Ok(match grid {
        Some(grid) => {
            let seed = seed_of(name);
            values
                .par_chunks(32)
                .zip(grid.bytes.par_chunks(20))
                .enumerate()
                .flat_map_iter(|(i, (x, g))| {
                    q4_1_on_grid(g, x, seed, 32 * i as u64).map_or_else(|| quantize(ty, x), |b| b.to_vec())
                })
                .collect()
        }
        None => values.par_chunks(row).flat_map_iter(|r| quantize(ty, r)).collect(),
    })
}

/// The merged model as one GGUF file of type `ty`.
pub fn merged_gguf(
    base: &GgufFile,
    adapter: &Adapter,
    plan: TypePlan,
    rounding: Rounding,
    calibration: Option<Calibration<'_>>,
) -> Result<GgufParts> {
    let cfg = check(base, adapter)?;
    check_quant(base, plan)?;
    let mut tensors = Vec::with_capacity(base.header.tensors.len());
    for t in &base.header.tensors {
        let values = merged_values(base, &cfg, adapter, &t.name, &t.dims)?;
        let got = plan.type_of(&t.name, &t.dims, cfg.num_layers, cfg.tied_embeddings);
        let bytes = quantize_tensor(base, &t.name, t.dims[0] as usize, &values, got, rounding, calibration)?;
        tensors.push(OwnedTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            type_id: got.into(),
            bytes,
        });
    }
    Ok((merged_metadata(base, plan.file_type()), tensors))
}

/// The adapter in llama.cpp's LoRA GGUF: `blk.N.attn_q.weight.lora_a` (`[r, in]`
/// as PEFT's `lora_A`) and `.lora_b` (`[out, r]`, rows in GGUF's order), f32.
/// llama.cpp scales each pair by `adapter.lora.alpha / r`; a module whose PEFT
/// scale differs (rsLoRA, patterns) has the ratio folded into its `lora_b`.
pub fn adapter_gguf(base: &GgufFile, adapter: &Adapter) -> Result<GgufParts> {
    let cfg = check(base, adapter)?;
    let modules = check_adapter(adapter, &cfg)?;
    if modules.is_empty() {
        return Err(invalid(
            "export::adapter-missing",
            format!(
                "{}: the adapter has no LoRA matrices (a head-only run?)",
                adapter.dir.display()
            ),
        ));
    }
    let alpha = adapter.lora.alpha as f32;
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut tensors = Vec::new();
    for (layer, module) in modules {
        let path = hf_name(layer, module);
        let (a, b) = adapter.pair(&path).expect("checked");
        let (out, inp) = cfg.linear_dims(module);
        let r = a.shape[0];
        let factor = (adapter.scale(&path, r) * r as f64 / f64::from(alpha)) as f32;
        let mut bv: Vec<f32> = b.data.iter().map(|x| x * factor).collect();
        if let Some(heads) = permuted_heads(&cfg, module) {
            bv = permute(&bv, out, heads, true);
        }
        let name = gguf_name(layer, module);
        tensors.push(OwnedTensor {
            name: format!("{name}.lora_a"),
            dims: vec![inp as u64, r as u64],
            type_id: GgmlType::F32.into(),
            bytes: f32_bytes(&a.data),
        });
        tensors.push(OwnedTensor {
            name: format!("{name}.lora_b"),
            dims: vec![r as u64, out as u64],
            type_id: GgmlType::F32.into(),
            bytes: f32_bytes(&bv),
        });
    }
    let dir_name = adapter
        .dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "adapter".into());
    let meta = vec![
        ("general.architecture".to_string(), Value::Str("llama".into())),
        ("general.type".to_string(), Value::Str("adapter".into())),
        ("general.name".to_string(), Value::Str(format!("{dir_name} LoRA"))),
        ("adapter.type".to_string(), Value::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha)),
    ];
    Ok((meta, tensors))
}

/// The merged model in Hugging Face's `LlamaForCausalLM` layout: f32
/// safetensors with the rows of `q` and `k` in Hugging Face's order, and its
/// `config.json`. The tokenizer is the caller's (it lives in the data crate).
pub fn merged_safetensors(base: &GgufFile, adapter: &Adapter) -> Result<Vec<(String, Vec<u8>)>> {
    let cfg = check(base, adapter)?;
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let hf_of = |name: &str| -> Option<String> {
        Some(match name {
            "token_embd.weight" => "model.embed_tokens.weight".into(),
            "output_norm.weight" => "model.norm.weight".into(),
            "output.weight" => "lm_head.weight".into(),
            _ => {
                let rest = name.strip_prefix("blk.")?;
                let (layer, tensor) = rest.split_once('.')?;
                let layer: usize = layer.parse().ok()?;
                match tensor {
                    "attn_norm.weight" => format!("model.layers.{layer}.input_layernorm.weight"),
                    "ffn_norm.weight" => format!("model.layers.{layer}.post_attention_layernorm.weight"),
                    _ => format!("{}.weight", hf_name(layer, module_of(name)?.1)),
                }
            }
        })
    };
    for t in &base.header.tensors {
        let hf = hf_of(&t.name).ok_or_else(|| {
            Error::Data(format!(
                "{}: tensor `{}` has no Hugging Face name",
                base.header.path.display(),
                t.name
            ))
        })?;
        let shape = t.shape();
        let mut values = merged_values(base, &cfg, adapter, &t.name, &t.dims)?;
        if let Some((_, module)) = module_of(&t.name)
            && let Some(heads) = permuted_heads(&cfg, module)
        {
            values = permute(&values, shape[0], heads, false);
        }
        named.push((hf, shape, values));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Other(format!("cannot serialise {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    let int = |k: &str| base.header.get(k).and_then(Value::as_u64);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim(),
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": int("tokenizer.ggml.bos_token_id"),
        "eos_token_id": int("tokenizer.ggml.eos_token_id"),
        "pad_token_id": int("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    });
    Ok(vec![
        ("model.safetensors".into(), st),
        (
            "config.json".into(),
            serde_json::to_vec_pretty(&config).expect("JSON serialises"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_then_unpermute_is_the_identity_and_matches_the_reader() {
        // Two heads of 4 rows, rows of width 3.
        let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let g = permute(&v, 8, 2, true);
        assert_eq!(permute(&g, 8, 2, false), v);
        // The reader's byte-level un-permutation agrees.
        let bytes: Vec<u8> = g.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = lora_nn::gguf::unpermute_rows(&bytes, 8, 2);
        let back: Vec<f32> = back
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
    }

    #[test]
    fn type_plan_keeps_norms_f32_and_the_embedding_at_q8_0_below_8_bits() {
        let p = TypePlan::from(GgmlType::Q4_K);
        assert_eq!(p.type_of("blk.0.attn_norm.weight", &[576], 30, true), GgmlType::F32);
        assert_eq!(p.type_of("token_embd.weight", &[576, 49152], 30, true), GgmlType::Q8_0);
        assert_eq!(
            p.type_of("blk.0.ffn_down.weight", &[1536, 576], 30, true),
            GgmlType::Q4_K
        );
        assert_eq!(p.type_of("blk.0.attn_q.weight", &[576, 576], 30, true), GgmlType::Q5_0);
        let p = TypePlan::from(GgmlType::F16);
        assert_eq!(p.type_of("token_embd.weight", &[576, 49152], 30, true), GgmlType::F16);
    }

    #[test]
    fn q4_k_m_gives_q6_k_where_llama_cpp_does() {
        // llama.cpp's use_more_bits for 32 layers: 0..4, 28..32 and 4 + 2 + 3k.
        let picked: Vec<usize> = (0..32).filter(|&l| use_more_bits(l, 32)).collect();
        assert_eq!(picked, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        let p = TypePlan::Q4_K_M;
        assert_eq!(
            p.type_of("blk.6.ffn_down.weight", &[4096, 11008], 32, false),
            GgmlType::Q6_K
        );
        assert_eq!(
            p.type_of("blk.7.ffn_down.weight", &[4096, 11008], 32, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            p.type_of("blk.0.attn_v.weight", &[4096, 1024], 32, false),
            GgmlType::Q6_K
        );
        assert_eq!(
            p.type_of("blk.5.attn_v.weight", &[4096, 1024], 32, false),
            GgmlType::Q4_K
        );
        assert_eq!(
            p.type_of("blk.0.attn_k.weight", &[4096, 1024], 32, false),
            GgmlType::Q4_K
        );
        assert_eq!(p.type_of("output.weight", &[4096, 32000], 32, false), GgmlType::Q6_K);
        assert_eq!(
            p.type_of("token_embd.weight", &[4096, 32000], 32, false),
            GgmlType::Q4_K
        );
        // SmolLM2 (hidden 576, tied embedding): rows of 576 fall back, Q6_K to Q8_0.
        assert_eq!(p.type_of("blk.0.attn_v.weight", &[576, 192], 30, true), GgmlType::Q8_0);
        assert_eq!(
            p.type_of("blk.0.ffn_down.weight", &[1536, 576], 30, true),
            GgmlType::Q6_K
        );
        assert_eq!(p.type_of("token_embd.weight", &[576, 49152], 30, true), GgmlType::Q8_0);
        assert_eq!(p.file_type(), 15);
    }

    #[test]
    fn module_names_map_both_ways() {
        assert_eq!(module_of("blk.12.attn_k.weight"), Some((12, "k_proj")));
        assert_eq!(module_of("blk.3.ffn_down.weight"), Some((3, "down_proj")));
        assert_eq!(module_of("blk.3.attn_norm.weight"), None);
        assert_eq!(module_of("token_embd.weight"), None);
    }
}
