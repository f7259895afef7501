//! Lion and Adafactor: combinations their reference implementations refuse,
//! and Adafactor's own step size against an explicit schedule.

use lora_core::rules::Edit::{Replace, Set};
use lora_core::rules::{Finding, RuleContext};

use super::one;

fn adafactor(ctx: &RuleContext) -> bool {
    ctx.type_of("train.optimizer") == Some("adafactor")
}

/// `relative-step` as configured (Hugging Face's default: true).
fn relative_step(ctx: &RuleContext) -> bool {
    ctx.bool("train.optimizer.relative-step") != Some(false)
}

fn relative_step_schedule(ctx: &RuleContext) -> Vec<Finding> {
    if !adafactor(ctx) || !relative_step(ctx) {
        return Vec::new();
    }
    let ty = ctx.type_of("train.scheduler");
    let warmup = ["warmup-steps", "warmup-ratio"]
        .into_iter()
        .find_map(|k| ctx.node(&format!("train.scheduler.{k}")))
        .filter(|n| n.as_float().is_some_and(|v| v > 0.0));
    if let Some(w) = warmup {
        return one(
            "adafactor's relative step warms up on its own (warmup-init); a scheduler warmup would multiply it",
            Some(w.location.clone()),
        )
        .into_iter()
        .map(|f| f.help("remove the warmup, or set relative-step = false with an lr"))
        .collect();
    }
    match ty {
        Some(t) if t != "constant" => one(
            format!(
                "adafactor's relative step decays as 1/sqrt(step) on its own; the `{t}` schedule would multiply it"
            ),
            ctx.location("train.scheduler.type"),
        )
        .into_iter()
        .map(|f| f.help("use type = \"constant\" (or no [train.scheduler]), or set relative-step = false with an lr"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "optim::adafactor-relative-step-schedule", category: Cross, severity: Error,
    summary: "Adafactor's relative step size is combined with a learning-rate schedule.",
    doc: "With relative-step (the default) Adafactor's step size is min(1e-2, 1/sqrt(step)), optionally warmed up by warmup-init: it is a schedule already. Hugging Face pairs it with a constant `AdafactorSchedule`; a linear or cosine schedule or a warmup on top would silently change it.",
    trip: [Set("train.optimizer.type=\"adafactor\""), Replace("lr = 2e-3\n", "")], check: relative_step_schedule,
}

fn lr_with_relative_step(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.node("train.optimizer.lr") {
        Some(n) if adafactor(ctx) && relative_step(ctx) => one(
            "adafactor with relative-step = true computes its own step size; lr would be ignored",
            Some(n.location.clone()),
        )
        .into_iter()
        .map(|f| f.help("remove lr, or set relative-step = false"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "optim::adafactor-lr-with-relative-step", category: Cross, severity: Error,
    summary: "Adafactor is given an lr while its relative step is on.",
    doc: "Hugging Face's Adafactor refuses `lr` with `relative_step=True` (\"Cannot combine manual lr and relative_step=True\"): the step size is its own.",
    trip: [Set("train.optimizer.type=\"adafactor\"")], check: lr_with_relative_step,
}

fn needs_lr(ctx: &RuleContext) -> Vec<Finding> {
    if adafactor(ctx) && !relative_step(ctx) && ctx.node("train.optimizer.lr").is_none() {
        return one(
            "adafactor with relative-step = false needs an lr",
            ctx.location("train.optimizer.relative-step"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "optim::adafactor-needs-lr", category: Cross, severity: Error,
    summary: "Adafactor without its relative step and without an lr.",
    doc: "Without relative-step the step size is lr (times the parameter's RMS with scale-parameter); there is no default.",
    trip: [Set("train.optimizer.type=\"adafactor\""), Replace("lr = 2e-3\n", ""), Set("train.optimizer.relative-step=false")],
    check: needs_lr,
}

fn warmup_init_alone(ctx: &RuleContext) -> Vec<Finding> {
    if adafactor(ctx) && !relative_step(ctx) && ctx.bool("train.optimizer.warmup-init") == Some(true) {
        return one(
            "warmup-init grows the relative step size; it needs relative-step = true",
            ctx.location("train.optimizer.warmup-init"),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "optim::adafactor-warmup-init-without-relative-step", category: Cross, severity: Error,
    summary: "Adafactor's warmup-init without its relative step.",
    doc: "warmup-init makes the relative step 1e-6 * step until it meets 1/sqrt(step); with an explicit lr there is nothing to warm up, and Hugging Face refuses the combination.",
    trip: [Set("train.optimizer.type=\"adafactor\""), Set("train.optimizer.relative-step=false"), Set("train.optimizer.warmup-init=true")],
    check: warmup_init_alone,
}
