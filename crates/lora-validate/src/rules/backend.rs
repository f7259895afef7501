//! Checks against the chosen backend.

use lora_core::rules::Edit::Set;
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

/// The build options every backend implements today; `lora_nn`'s stages
/// answer the others with an `Unsupported` error when the model is built.
fn dtype_unsupported(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("model.dtype") {
        Some(d) if d.value != "f32" => one(
            format!(
                "dtype `{}` is not implemented by the {} backend yet: base weights and compute are f32",
                d.value,
                ctx.string("run.backend").map_or("chosen", |b| b.value)
            ),
            Some(d.location),
        )
        .into_iter()
        .map(|f| f.help("remove `dtype` or set it to \"f32\""))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "backend::dtype-unsupported", category: Backend, severity: Error,
    summary: "The model's dtype is one no backend implements yet.",
    doc: "`[model] dtype` chooses the type of the frozen base weights and of the compute. Only `f32` is implemented; `bf16` and `f16` come with mixed precision.",
    trip: [Set("model.dtype=\"bf16\"")], check: dtype_unsupported,
}

fn checkpointing_unsupported(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.node("train.gradient-checkpointing") {
        Some(n) if ctx.bool("train.gradient-checkpointing") == Some(true) => one(
            "gradient checkpointing is not implemented by a backend yet",
            Some(n.location.clone()),
        )
        .into_iter()
        .map(|f| f.help("remove `gradient-checkpointing` or set it to false"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "backend::checkpointing-unsupported", category: Backend, severity: Error,
    summary: "Gradient checkpointing is asked for, and no backend implements it yet.",
    doc: "`[train] gradient-checkpointing = true` recomputes each layer's activations in the backward pass to save memory; it comes with the memory-and-precision work.",
    trip: [Set("train.gradient-checkpointing=true")], check: checkpointing_unsupported,
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
