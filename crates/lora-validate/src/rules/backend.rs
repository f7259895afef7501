//! Checks against the chosen backend.

use lora_core::rules::Edit::{Replace, Set};
use lora_core::rules::{Finding, RuleContext};

use super::{one, suggest};

/// Every backend this project has, compiled in or not.
pub const KNOWN_BACKENDS: [&str; 2] = ["candle", "burn"];

fn unknown(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("run.backend") {
        Some(b) if !KNOWN_BACKENDS.contains(&b.value) => vec![
            Finding::new(format!("unknown backend `{}`", b.value), Some(b.location))
                .help(suggest(b.value, KNOWN_BACKENDS)),
        ],
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "backend::unknown", category: Backend, severity: Error,
    summary: "The backend is not one this project has.",
    doc: "Backends are `candle` (the default) and `burn`.",
    trip: [Set("run.backend=\"candel\"")], check: unknown,
}

fn not_compiled(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("run.backend") {
        Some(b) if KNOWN_BACKENDS.contains(&b.value) && !ctx.facts.backends.iter().any(|c| c == b.value) => one(
            format!(
                "backend `{}` is not compiled into this binary (it has: {})",
                b.value,
                ctx.facts.backends.join(", ")
            ),
            Some(b.location),
        )
        .into_iter()
        .map(|f| {
            f.help(format!(
                "rebuild with `--features {}`, or use `cargo xtask run --backend {}`",
                b.value, b.value
            ))
        })
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "backend::not-compiled", category: Backend, severity: Error,
    summary: "The backend exists but is not compiled into this binary.",
    doc: "One backend per build keeps compile times down; `cargo xtask run` builds the one the pipeline names.",
    trip: [Set("run.backend=\"burn\"")], check: not_compiled,
}

/// The base-weight types each backend keeps (`TensorOps::dtypes`); the
/// models' stages refuse the others when the model is built.
pub const DTYPES: [(&str, &[&str]); 2] = [("candle", &["f32", "bf16", "f16"]), ("burn", &["f32"])];

fn dtype_unsupported(ctx: &RuleContext) -> Vec<Finding> {
    let backend = ctx.string("run.backend").map_or("candle", |b| b.value);
    let Some((_, kept)) = DTYPES.iter().find(|(b, _)| *b == backend) else {
        return Vec::new();
    };
    match ctx.string("model.dtype") {
        Some(d) if !kept.contains(&d.value) => one(
            format!(
                "dtype `{}` is not implemented by the {backend} backend: it keeps base weights in {}",
                d.value,
                kept.join(", ")
            ),
            Some(d.location),
        )
        .into_iter()
        .map(|f| {
            f.help(if backend == "burn" {
                "use the candle backend for bf16 or f16 base weights, or remove `dtype`"
            } else {
                "remove `dtype` or set it to \"f32\""
            })
        })
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "backend::dtype-unsupported", category: Backend, severity: Error,
    summary: "The model's dtype is one the backend does not implement.",
    doc: "`[model] dtype` chooses the type the frozen base weights are kept in: `f32`, or `bf16` and `f16` to halve their memory (LoRA weights, activations, gradients and the optimizer stay f32). candle keeps all three and widens a narrow weight to f32 inside each frozen linear (its CPU matmul has no bf16 kernel and widens too). burn keeps f32 only: its autodiff saves the widened f32 copy of every weight for the backward pass, so a narrow base would save nothing during a step.",
    trip: [Set("run.backend=\"burn\""), Set("model.dtype=\"bf16\"")], check: dtype_unsupported,
}

/// Gradient checkpointing recomputes the blocks in the backward pass; a model
/// whose blocks hold nothing trained (an empty `target-modules` on a frozen
/// base) keeps no activations there, so there is nothing to recompute.
fn checkpointing_nothing(ctx: &RuleContext) -> Vec<Finding> {
    let Some(n) = ctx.node("train.gradient-checkpointing") else {
        return Vec::new();
    };
    let full =
        ctx.type_of("model") == Some("vit-classifier") && ctx.string("model.mode").is_some_and(|m| m.value == "full");
    let empty = ctx
        .node("lora.target-modules")
        .and_then(|t| t.as_array())
        .is_some_and(|t| t.is_empty());
    if ctx.bool("train.gradient-checkpointing") == Some(true) && empty && !full {
        return one(
            "gradient checkpointing with an empty target-modules: the frozen blocks keep no activations for a backward pass, so there is nothing to recompute",
            Some(n.location.clone()),
        )
        .into_iter()
        .map(|f| f.help("remove `gradient-checkpointing`: only the head trains"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::checkpointing-nothing-to-recompute", category: Cross, severity: Warning,
    summary: "Gradient checkpointing is on, and no block of the model trains.",
    doc: "`[train] gradient-checkpointing = true` keeps each block's input and recomputes the block in the backward pass, trading a second forward pass for the block activations. With `target-modules = []` only the head trains: the backward pass never enters the blocks, so checkpointing saves nothing.",
    trip: [Replace("target-modules = [\"query\", \"value\"]", "target-modules = []"), Set("train.gradient-checkpointing=true")],
    check: checkpointing_nothing,
}

fn model_unavailable(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(b), Some(ty)) = (ctx.string("run.backend"), ctx.type_of("model")) else {
        return Vec::new();
    };
    let here = ctx
        .facts
        .model_types
        .iter()
        .any(|(backend, t)| backend == b.value && t == ty);
    let elsewhere: Vec<&str> = ctx
        .facts
        .model_types
        .iter()
        .filter(|(backend, t)| backend != b.value && t == ty)
        .map(|(backend, _)| backend.as_str())
        .collect();
    if ctx.facts.backends.iter().any(|c| c == b.value) && !here && !elsewhere.is_empty() {
        return one(
            format!(
                "model `{ty}` is not implemented by the {} backend (only by: {})",
                b.value,
                elsewhere.join(", ")
            ),
            ctx.location("model.type"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "backend::model-unavailable", category: Backend, severity: Error,
    summary: "The model type exists only on another backend.",
    doc: "Models are registered per backend; pick a backend that implements this one.",
    trip: [Set("model.type=\"test-only-model\"")], check: model_unavailable,
}
