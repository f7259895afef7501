//! Checks against the machine: predicted memory and time, and the output folder.

use lora_core::rules::Edit::Set;
use lora_core::rules::{Finding, RuleContext};

use super::one;

const GIB: f64 = (1u64 << 30) as f64;

fn memory(ctx: &RuleContext) -> Vec<Finding> {
    let Some(total) = ctx.facts.machine.total_memory_bytes else {
        return Vec::new();
    };
    if super::memory::auto(ctx) {
        return Vec::new();
    }
    let Some(p) = super::memory::predicted(ctx, None) else {
        return Vec::new();
    };
    let batch = ctx.plan().map_or(0, |p| p.batch_size);
    if p.total > total as f64 {
        return one(
            format!(
                "a training run at batch {batch} needs about {:.1} GiB at its peak; this machine has {:.1} GiB",
                p.total / GIB,
                total as f64 / GIB
            ),
            ctx.location("train.batch-size").or_else(|| ctx.location("train")),
        )
        .into_iter()
        .map(|f| {
            f.help("lower batch-size and raise gradient-accumulation-steps: the same effective batch in less memory")
        })
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "resource::memory-exceeds-machine", category: Resource, severity: Error,
    summary: "A training step would need more memory than the machine has.",
    doc: "Predicted by the memory planner from the model's shape, the batch, the longest texts of a sample, the precision and checkpointing; the run would be killed by the OOM killer mid-epoch.",
    trip: [Set("train.batch-size=8000")], check: memory,
}

/// Sustained training throughput per core, FLOP/s (measured: about 15 GFLOP/s per core).
const FLOPS_PER_CORE: f64 = 15e9;

fn slow_run(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(plan), Some(d)) = (ctx.facts.model.as_ref(), ctx.plan(), ctx.facts.data.as_ref()) else {
        return Vec::new();
    };
    let Some([p50, ..]) = d.token_length_percentiles else {
        return Vec::new();
    };
    let tokens = (plan.total_steps * plan.batch_size * plan.accumulation).min(plan.total_steps * plan.samples.max(1))
        as f64
        * p50 as f64;
    // Forward (2 FLOP per weight per token) and backward for activations only (2 more).
    let flops = 4.0 * m.parameters as f64 * tokens;
    let seconds = flops / (FLOPS_PER_CORE * ctx.facts.machine.cores.max(1) as f64);
    if seconds > 24.0 * 3600.0 {
        return one(
            format!(
                "{} steps are estimated at {:.0} hours on {} cores",
                plan.total_steps,
                seconds / 3600.0,
                ctx.facts.machine.cores
            ),
            ctx.location("train.epochs")
                .or_else(|| ctx.location("train.max-steps"))
                .or_else(|| ctx.location("train")),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "resource::slow-run", category: Resource, severity: Warning,
    summary: "The run is estimated to take more than a day on this machine.",
    doc: "Estimated from the parameter count, the tokens the plan processes and a measured 15 GFLOP/s per core; often epochs were meant as max-steps.",
    trip: [Set("train.epochs=300")], check: slow_run,
}

fn output_dir(ctx: &RuleContext) -> Option<(std::path::PathBuf, lora_core::diag::Location)> {
    let o = ctx.string("run.output-dir")?;
    (!o.value.trim().is_empty()).then(|| (std::path::PathBuf::from(o.value), o.location))
}

fn output_not_empty(ctx: &RuleContext) -> Vec<Finding> {
    let Some((dir, at)) = output_dir(ctx) else {
        return Vec::new();
    };
    if dir.join("adapter_config.json").exists() || dir.join("adapter_model.safetensors").exists() {
        return one(
            format!(
                "{} holds the adapter of an earlier run; it will be overwritten",
                dir.display()
            ),
            Some(at),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "resource::output-dir-not-empty", category: Resource, severity: Warning,
    summary: "The output folder already holds an adapter.",
    doc: "A new run replaces it (atomically, at the end); pick another output-dir to keep both.",
    trip: [Set("run.output-dir=\"{fixtures}/old-run\"")], check: output_not_empty,
}

fn output_is_file(ctx: &RuleContext) -> Vec<Finding> {
    match output_dir(ctx) {
        Some((dir, at)) if dir.is_file() => one(format!("output-dir {} is a file", dir.display()), Some(at)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "resource::output-dir-is-file", category: Resource, severity: Error,
    summary: "The output folder is an existing file.",
    doc: "Outputs are several files and need a folder.",
    trip: [Set("run.output-dir=\"{fixtures}/data/empty.csv\"")], check: output_is_file,
}

fn output_unwritable(ctx: &RuleContext) -> Vec<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let Some((dir, at)) = output_dir(ctx) else {
        return Vec::new();
    };
    // The nearest folder that exists is where the run will create its own.
    let existing = dir.ancestors().find(|p| !p.as_os_str().is_empty() && p.exists());
    let Some(existing) = existing else { return Vec::new() };
    match std::fs::metadata(existing) {
        Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o222 == 0 => one(
            format!(
                "{} cannot be created: {} is read-only",
                dir.display(),
                existing.display()
            ),
            Some(at),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "resource::output-dir-unwritable", category: Resource, severity: Error,
    summary: "The output folder cannot be created.",
    doc: "Its nearest existing parent is read-only; the run would fail after training, losing the adapter.",
    trip: [Set("run.output-dir=\"/proc/lora-run\"")], check: output_unwritable,
}
