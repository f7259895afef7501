//! Checks of a `llama-causal-lm` model against its GGUF header (read once by
//! the model stage's facts; no weight is read): the file is whole, its
//! architecture and quantization types are ones the decoder reads.

use lora_core::rules::Edit::{Base, Set};
use lora_core::rules::{Finding, RuleContext};

use super::one;

fn llama(ctx: &RuleContext) -> bool {
    ctx.type_of("model") == Some("llama-causal-lm")
}

/// The header's problem, for a Llama model whose file exists.
fn header_error<'a>(ctx: &RuleContext<'a>) -> Option<&'a str> {
    if !llama(ctx) || !ctx.facts.path("model.path").is_some_and(|p| p.is_file()) {
        return None;
    }
    ctx.facts.model_error.as_deref()
}

fn unsupported(e: &str) -> bool {
    e.contains("is not supported") || e.contains("the types read are")
}

fn missing(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.facts.path("model.path") {
        Some(p) if llama(ctx) && !p.is_file() => one(
            format!("GGUF file {} does not exist", p.display()),
            ctx.location("model.path"),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::gguf-missing", category: Model, severity: Error,
    summary: "The GGUF file of a llama-causal-lm model does not exist.",
    doc: "`path` names the model's .gguf file (or `asset:NAME/file.gguf`); the tokenizer and chat template are read from it too.",
    trip: [Base("configs/chat-smollm2.toml"), Set("model.path=\"{fixtures}/models/no-such.gguf\"")], check: missing,
}

fn truncated(ctx: &RuleContext) -> Vec<Finding> {
    match header_error(ctx) {
        Some(e) if e.contains("truncated") => one(e, ctx.location("model.path"))
            .into_iter()
            .map(|f| f.help("the download was probably interrupted; fetch it again (cargo xtask fetch)"))
            .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::gguf-truncated", category: Model, severity: Error,
    summary: "The GGUF file is shorter than its header says.",
    doc: "The header lists every tensor's offset and size; a file that ends before the last tensor is an interrupted download or copy.",
    trip: [Base("configs/chat-smollm2.toml"), Set("model.path=\"{fixtures}/models/truncated.gguf\"")], check: truncated,
}

fn unsupported_model(ctx: &RuleContext) -> Vec<Finding> {
    match header_error(ctx) {
        Some(e) if unsupported(e) && !e.contains("truncated") => one(e, ctx.location("model.path"))
            .into_iter()
            .map(|f| {
                f.help("llama-causal-lm reads the `llama` architecture with F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K tensors")
            })
            .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::gguf-unsupported", category: Model, severity: Error,
    summary: "The GGUF file holds an architecture or a quantization type the decoder does not read.",
    doc: "The decoder is Llama's (`general.architecture = \"llama\"`); its matrices may be F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K or Q6_K (the types `lora export` writes). Other k-quants and other types are named with the tensors that use them.",
    trip: [Base("configs/chat-smollm2.toml"), Set("model.path=\"{fixtures}/models/gpt2-arch.gguf\"")], check: unsupported_model,
}

fn invalid(ctx: &RuleContext) -> Vec<Finding> {
    match header_error(ctx) {
        Some(e) if !unsupported(e) && !e.contains("truncated") => one(e, ctx.location("model.path")),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::gguf-invalid", category: Model, severity: Error,
    summary: "The GGUF file cannot be read as a Llama model.",
    doc: "Not a GGUF file, or its metadata and tensor shapes disagree (missing dimensions, a tensor of the wrong shape or missing).",
    trip: [Base("configs/chat-smollm2.toml"), Set("model.path=\"{fixtures}/tiny-tokenizer.json\"")], check: invalid,
}
