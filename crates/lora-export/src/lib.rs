//! Export for deployment: a run's LoRA adapter folded into its base model and
//! written as Hugging Face safetensors or as a quantized GGUF file, or written
//! unmerged as llama.cpp's LoRA adapter GGUF.
//!
//! Every check (the adapter exists and fits the base by shapes and by the
//! base's recorded hash, the quantization suits the architecture) runs before
//! anything is written, and every file is written atomically ([`write`]).
//! Quantization is this crate's own ([`quant`]): ggml's reference quantizers,
//! so that no tensor library is needed here.

pub mod adapter;
pub mod bert;
pub mod calibrated;
pub mod llama;
pub mod quant;
pub mod record;
pub mod write;

use lora_core::Error;
use lora_core::diag::Diagnostic;
use lora_core::gguf::GgmlType;

pub use adapter::Adapter;
pub use lora_nn::gguf::GgufFile;

/// An input error of the export (exit code 2).
pub(crate) fn invalid(code: &str, message: String) -> Error {
    Error::Invalid(Diagnostic::error(code.to_string(), message).into())
}

/// The types a merged GGUF can be written in, by the names `--quant` takes.
pub const QUANT_NAMES: [(&str, GgmlType); 8] = [
    ("f32", GgmlType::F32),
    ("f16", GgmlType::F16),
    ("q8_0", GgmlType::Q8_0),
    ("q6_k", GgmlType::Q6_K),
    ("q5_0", GgmlType::Q5_0),
    ("q4_1", GgmlType::Q4_1),
    ("q4_0", GgmlType::Q4_0),
    ("q4_k", GgmlType::Q4_K),
];

/// The plan `name` names (case-insensitive; `q4_k_s` is `q4_k`, `q4_k_m` is
/// llama.cpp's mix).
pub fn parse_quant(name: &str) -> lora_core::Result<llama::TypePlan> {
    let lower = name.to_ascii_lowercase();
    if lower == "q4_k_m" {
        return Ok(llama::TypePlan::Q4_K_M);
    }
    let lower = if lower == "q4_k_s" { "q4_k".to_string() } else { lower };
    QUANT_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, t)| llama::TypePlan::from(*t))
        .ok_or_else(|| {
            invalid(
                "export::quant-unknown",
                format!(
                    "unknown quantization `{name}`; choose one of {}, q4_k_m",
                    QUANT_NAMES.map(|(n, _)| n).join(", ")
                ),
            )
        })
}

/// What an export wrote, for the summary line.
#[derive(Debug, Clone)]
pub struct Summary {
    pub path: std::path::PathBuf,
    pub bytes: u64,
    pub tensors: usize,
}
