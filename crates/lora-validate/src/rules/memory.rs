//! The memory planner's rules: the prediction of `lora_core::memory` from the
//! facts (the model's header, the data's token lengths, the machine), before
//! anything is loaded. Models without header facts (the ViT) are planned by
//! `lora plan` and `batch-size = "auto"` on the built model instead.

use lora_core::memory::{self, Budget, ModelShape, Prediction, StepShape};
use lora_core::rules::Edit::Set;
use lora_core::rules::{Finding, RuleContext};
use lora_core::{DType, ModelOptions};

use super::{one, supervised};

const MIB: f64 = (1u64 << 20) as f64;

pub(crate) fn auto(ctx: &RuleContext) -> bool {
    ctx.string("train.batch-size").is_some_and(|b| b.value == "auto")
}

/// The budget `batch-size = "auto"` plans against, in bytes.
fn budget(ctx: &RuleContext) -> Option<u64> {
    let b = match ctx.node("train.memory-budget") {
        Some(n) => match (n.as_str(), n.as_float()) {
            (Some(s), _) => Budget::parse(s)?,
            (None, Some(f)) if f > 0.0 && f <= 1.0 => Budget::Fraction(f),
            _ => return None,
        },
        None => Budget::default(),
    };
    b.bytes(ctx.facts.machine.available_memory_bytes)
}

/// The planner's shape of the model from its header, and the tokens of a batch.
fn shape(ctx: &RuleContext) -> Option<(ModelShape, usize)> {
    let m = ctx.facts.model.as_ref()?;
    let data = ctx.facts.data.as_ref()?;
    let max_length = ctx.count_or("data.max-length", 128);
    // Batches are padded to their longest text: the sample's longest, capped by max-length.
    let tokens = data
        .token_length_percentiles
        .map_or(max_length, |[.., max]| max.min(max_length))
        .max(1);
    let matrices: usize = m
        .tensors
        .values()
        .filter(|(_, shape)| shape.len() >= 2)
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    let r = ctx.count_or("lora.r", 8);
    let targets = ctx.strings("lora.target-modules").map(|t| t.value).unwrap_or_default();
    let lora: usize = targets
        .iter()
        .filter_map(|t| m.targets.get(*t))
        .flatten()
        .map(|(_, inp, out)| r * (inp + out))
        .sum();
    // A causal LM (a GGUF Llama) has no classifier head: its head is the
    // vocabulary projection, and its base stays in the file's blocks.
    let decoder = (m.architecture == "llama").then_some(memory::Decoder {
        vocab: m.vocab_size,
        stored_bytes: m.weight_bytes,
        file_bytes: m.weight_bytes,
    });
    let classes = if decoder.is_some() {
        0
    } else {
        data.label_names.len().max(2)
    };
    let p50 = data
        .token_length_percentiles
        .map_or(tokens, |[p50, ..]| p50.min(max_length));
    let shape = ModelShape {
        blocks: m.num_layers,
        hidden: m.hidden_size,
        heads: m.num_heads,
        intermediate: m.intermediate_size,
        frozen_values: m.parameters,
        frozen_matrix_values: matrices.min(m.parameters),
        trainable: lora + classes * (m.hidden_size + 1),
        data_bytes: ((data.train.rows + data.validation.rows) * p50 * 8) as u64,
        tokens: None,
        decoder,
    };
    Some((shape, tokens))
}

/// The predicted peak at micro-batch `batch` (the configured one when `None`).
pub fn predicted(ctx: &RuleContext, batch: Option<usize>) -> Option<Prediction> {
    if !supervised(ctx) {
        return None;
    }
    let (shape, tokens) = shape(ctx)?;
    let plan = ctx.plan()?;
    let batch = batch.unwrap_or(plan.batch_size.min(plan.samples.max(1)));
    let dtype = match ctx.string("model.dtype").map(|d| d.value) {
        Some("bf16") => DType::Bf16,
        Some("f16") => DType::F16,
        _ => DType::F32,
    };
    let options = ModelOptions {
        dtype,
        gradient_checkpointing: ctx.bool("train.gradient-checkpointing") == Some(true),
    };
    let buffers = match ctx.type_of("train.optimizer") {
        Some("sgd" | "lion") => 1,
        Some("adafactor") => 0,
        _ => 2,
    };
    let eval_batch = ctx.count_or("eval.batch-size", 64);
    let backend = ctx.string("run.backend").map_or("candle", |b| b.value);
    Some(memory::predict(
        &memory::profile(backend),
        &shape,
        StepShape { batch, tokens },
        (eval_batch > 0).then_some(StepShape {
            batch: eval_batch,
            tokens,
        }),
        options,
        buffers,
    ))
}

fn batch_exceeds_budget(ctx: &RuleContext) -> Vec<Finding> {
    let Some(available) = ctx.facts.machine.available_memory_bytes else {
        return Vec::new();
    };
    if auto(ctx) {
        return Vec::new();
    }
    let Some(p) = predicted(ctx, None) else {
        return Vec::new();
    };
    let limit = Budget::default().bytes(Some(available)).unwrap_or(available) as f64;
    if p.total <= limit {
        return Vec::new();
    }
    let batch = ctx.plan().map_or(0, |p| p.batch_size);
    one(
        format!(
            // The available memory changes from run to run: the message leaves it out.
            "batch {batch} is predicted to need {:.0} MiB at its peak ({:.0} MiB of activations), above 80% of the memory available now",
            p.total / MIB,
            p.activations / MIB,
        ),
        ctx.location("train.batch-size").or_else(|| ctx.location("train")),
    )
    .into_iter()
    .map(|f| f.help("lower batch-size and raise gradient-accumulation-steps, or set batch-size = \"auto\" to let the planner choose"))
    .collect()
}
lora_core::rule! {
    id: "resource::batch-exceeds-budget", category: Resource, severity: Warning,
    summary: "A fixed batch is predicted not to fit the memory available now.",
    doc: "The memory planner (`lora plan`) predicts the run's peak from the model's dimensions, the longest texts, the batch, the precision and checkpointing; above 80% of the available memory the machine will swap or the run be killed. `batch-size = \"auto\"` picks the largest micro-batch that fits and keeps the effective batch by accumulation.",
    trip: [Set("train.batch-size=4000")], check: batch_exceeds_budget,
}

fn budget_below_weights(ctx: &RuleContext) -> Vec<Finding> {
    if !auto(ctx) {
        return Vec::new();
    }
    let (Some(budget), Some(p)) = (budget(ctx), predicted(ctx, Some(1))) else {
        return Vec::new();
    };
    let floor = p.fixed + p.data + p.weights;
    if (budget as f64) >= floor {
        return Vec::new();
    }
    one(
        format!(
            "the memory budget ({:.0} MiB) is below what the run needs before any activation: {:.0} MiB (base weights {:.0}, data {:.0}, process {:.0})",
            budget as f64 / MIB,
            floor / MIB,
            p.weights / MIB,
            p.data / MIB,
            p.fixed / MIB
        ),
        ctx.location("train.memory-budget").or_else(|| ctx.location("train.batch-size")),
    )
    .into_iter()
    .map(|f| f.help("raise memory-budget, or set [model] dtype = \"bf16\" to halve the base weights"))
    .collect()
}
lora_core::rule! {
    id: "resource::budget-below-weights", category: Resource, severity: Error,
    summary: "The memory budget is smaller than the model's own weights.",
    doc: "With `batch-size = \"auto\"` the planner fits micro-batches into `memory-budget`; a budget below the frozen base weights, the data and the process itself leaves nothing for any batch.",
    trip: [Set("train.batch-size=\"auto\""), Set("train.memory-budget=\"20MiB\"")], check: budget_below_weights,
}

fn effective_unreachable(ctx: &RuleContext) -> Vec<Finding> {
    if !auto(ctx) {
        return Vec::new();
    }
    let (Some(budget), Some(p)) = (budget(ctx), predicted(ctx, Some(1))) else {
        return Vec::new();
    };
    // The weights alone overflowing is the other rule's finding.
    if (budget as f64) < p.fixed + p.data + p.weights || p.total <= budget as f64 {
        return Vec::new();
    }
    let effective = ctx.count_or("train.effective-batch-size", 32);
    one(
        format!(
            "not even a micro-batch of 1 fits the memory budget ({:.0} MiB; predicted {:.0} MiB, of which {:.0} MiB activations of a training step or an evaluation batch): the effective batch of {effective} cannot be reached by accumulation",
            budget as f64 / MIB,
            p.total / MIB,
            p.activations / MIB
        ),
        ctx.location("train.memory-budget").or_else(|| ctx.location("train.batch-size")),
    )
    .into_iter()
    .map(|f| f.help("raise memory-budget, lower [eval] batch-size or max-length, or set gradient-checkpointing = true"))
    .collect()
}
lora_core::rule! {
    id: "resource::effective-batch-unreachable", category: Resource, severity: Error,
    summary: "No micro-batch fits the memory budget, so the effective batch cannot be reached.",
    doc: "Accumulation keeps the effective batch whatever micro-batch is chosen, but a micro-batch of 1 must fit: its activations (and those of an evaluation batch) on top of the weights must stay within `memory-budget`.",
    trip: [Set("train.batch-size=\"auto\""), Set("train.memory-budget=\"300MiB\"")], check: effective_unreachable,
}
