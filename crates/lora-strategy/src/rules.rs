//! Validation rules of the `[strategy]` table (registered with `lora_core::rule!`).

use lora_core::rules::Edit::Set;
use lora_core::rules::{Finding, RuleContext};

/// The strategy's type, when the pipeline has a `[strategy]` table.
fn strategy<'a>(ctx: &RuleContext<'a>) -> Option<&'a str> {
    ctx.type_of("strategy")
}

/// A numeric key of the strategy when its type is one of `types` and `bad` holds.
fn numeric(ctx: &RuleContext, types: &[&str], key: &str, bad: impl Fn(f64) -> bool, message: &str) -> Vec<Finding> {
    let Some(ty) = strategy(ctx) else {
        return Vec::new();
    };
    if !types.contains(&ty) {
        return Vec::new();
    }
    let path = format!("strategy.{key}");
    let (value, location) = match (ctx.float(&path), ctx.int(&path)) {
        (Some(f), _) => (f.value, f.location),
        (None, Some(i)) => (i.value as f64, i.location),
        _ => return Vec::new(),
    };
    if bad(value) {
        vec![Finding::new(format!("{key} ({value}) {message}"), Some(location))]
    } else {
        Vec::new()
    }
}

fn topk_ratio(ctx: &RuleContext) -> Vec<Finding> {
    numeric(ctx, &["topk"], "ratio", |v| !(v > 0.0 && v <= 1.0), "must be in (0, 1]")
}
lora_core::rule! {
    id: "strategy::topk-ratio-range", category: Range, severity: Error,
    summary: "The top-k ratio is not in (0, 1].",
    doc: "`topk` sends the largest `ratio` of the gradient values each step; 0 would send nothing and above 1 there is nothing more to send.",
    trip: [Set("strategy.type=\"topk\""), Set("strategy.ratio=0.0")], check: topk_ratio,
}

fn topk_dense(ctx: &RuleContext) -> Vec<Finding> {
    numeric(
        ctx,
        &["topk"],
        "ratio",
        |v| (0.5..=1.0).contains(&v),
        "sends an index with every value: from 0.5 on, more bytes than a dense all-reduce",
    )
    .into_iter()
    .map(|f| f.help("use ddp-no-sync, or a ratio of 0.01 to 0.1"))
    .collect()
}
lora_core::rule! {
    id: "strategy::topk-ratio-dense", category: Cross, severity: Warning,
    summary: "The top-k ratio sends more bytes than an uncompressed all-reduce.",
    doc: "Each value sent by `topk` travels with its 4-byte index and is all-gathered: from a ratio of 0.5 on it costs more than a ring all-reduce of the whole gradient, and it is still inexact.",
    trip: [Set("strategy.type=\"topk\""), Set("strategy.ratio=0.5")], check: topk_dense,
}

fn topk_warmup(ctx: &RuleContext) -> Vec<Finding> {
    numeric(
        ctx,
        &["topk"],
        "warmup-steps",
        |v| v < 0.0 || v.fract() != 0.0,
        "must be a whole number of steps, 0 or more",
    )
    .into_iter()
    .map(|f| f.help("0 (the default) sends `ratio` from the first step; DGC-style warm-up: a few percent to a quarter of the run's steps"))
    .collect()
}
lora_core::rule! {
    id: "strategy::topk-warmup-range", category: Range, severity: Error,
    summary: "The top-k sparsity warm-up is not a whole number of steps, 0 or more.",
    doc: "`topk` with `warmup-steps` W sends every value at step 0 and a fraction `ratio^(t / W)` at step t < W (deep gradient compression's exponential sparsity warm-up), then `ratio`; W = 0 (the default) has no warm-up.",
    trip: [Set("strategy.type=\"topk\""), Set("strategy.warmup-steps=-4")], check: topk_warmup,
}

fn powersgd_rank(ctx: &RuleContext) -> Vec<Finding> {
    numeric(ctx, &["powersgd"], "rank", |v| v < 1.0, "must be at least 1")
}
lora_core::rule! {
    id: "strategy::powersgd-rank-zero", category: Range, severity: Error,
    summary: "The PowerSGD rank is below 1.",
    doc: "`powersgd` sends each matrix gradient as rank-r factors; r = 0 would send nothing.",
    trip: [Set("strategy.type=\"powersgd\""), Set("strategy.rank=0")], check: powersgd_rank,
}

fn sync_every(ctx: &RuleContext) -> Vec<Finding> {
    numeric(
        ctx,
        &["local-sgd", "diloco"],
        "sync-every",
        |v| v < 1.0,
        "must be at least 1",
    )
}
lora_core::rule! {
    id: "strategy::sync-every-zero", category: Range, severity: Error,
    summary: "The replicas of local-sgd or diloco would never meet.",
    doc: "`sync-every` is the number of optimizer steps between two meetings of the replicas; it must be at least 1 (1 averages after every step).",
    trip: [Set("strategy.type=\"local-sgd\""), Set("strategy.sync-every=0")], check: sync_every,
}

fn outer_momentum(ctx: &RuleContext) -> Vec<Finding> {
    numeric(
        ctx,
        &["diloco"],
        "outer-momentum",
        |v| !(0.0..1.0).contains(&v),
        "must be in [0, 1)",
    )
}
lora_core::rule! {
    id: "strategy::outer-momentum-range", category: Range, severity: Error,
    summary: "DiLoCo's outer momentum is not in [0, 1).",
    doc: "The outer Nesterov momentum keeps this fraction of the previous outer steps; 1 or more never forgets and diverges.",
    trip: [Set("strategy.type=\"diloco\""), Set("strategy.outer-momentum=1.0")], check: outer_momentum,
}

fn outer_lr(ctx: &RuleContext) -> Vec<Finding> {
    numeric(
        ctx,
        &["diloco"],
        "outer-lr",
        |v| v <= 0.0 || v.is_nan(),
        "must be positive",
    )
}
lora_core::rule! {
    id: "strategy::outer-lr-range", category: Range, severity: Error,
    summary: "DiLoCo's outer learning rate is not positive.",
    doc: "The outer step moves the shared parameters by outer-lr times the averaged change of the replicas; 0 would never move them.",
    trip: [Set("strategy.type=\"diloco\""), Set("strategy.outer-lr=0.0")], check: outer_lr,
}

fn no_sync_alone(ctx: &RuleContext) -> Vec<Finding> {
    if strategy(ctx) != Some("ddp-no-sync") || ctx.count_or("train.gradient-accumulation-steps", 1) > 1 {
        return Vec::new();
    }
    vec![
        Finding::new(
            "ddp-no-sync without gradient accumulation all-reduces every micro-batch, like ddp",
            ctx.location("strategy.type"),
        )
        .help("set [train] gradient-accumulation-steps above 1, or use ddp"),
    ]
}
lora_core::rule! {
    id: "strategy::no-sync-without-accumulation", category: Cross, severity: Warning,
    summary: "ddp-no-sync has no micro-batches to skip the all-reduce for.",
    doc: "`ddp-no-sync` saves the all-reduce of every micro-batch but the last of an optimizer step; with one micro-batch per step it is `ddp`.",
    trip: [Set("strategy.type=\"ddp-no-sync\"")], check: no_sync_alone,
}

fn collective_timeout(ctx: &RuleContext) -> Vec<Finding> {
    let Some(ty) = strategy(ctx) else {
        return Vec::new();
    };
    numeric(
        ctx,
        &[ty],
        "collective-timeout-s",
        |v| !(v > 0.0 && v <= crate::MAX_TIMEOUT_S),
        &format!(
            "must be a positive number of seconds, at most {} (a week)",
            crate::MAX_TIMEOUT_S
        ),
    )
    .into_iter()
    .map(|f| {
        f.help(format!(
            "leave it out for {} s, or give the longest a process may wait for the others",
            crate::DEFAULT_COLLECTIVE_TIMEOUT_S
        ))
    })
    .collect()
}
lora_core::rule! {
    id: "strategy::collective-timeout-range", category: Range, severity: Error,
    summary: "The collective timeout is not a positive number of seconds.",
    doc: "Every collective of a multi-process run waits at most `collective-timeout-s` seconds for the other processes (default 600, as PyTorch's NCCL groups); then the process reports which collective and step timed out and aborts the job. 0 or less would fail every collective, and NaN or more than a week is no timeout.",
    trip: [Set("strategy.type=\"ddp\""), Set("strategy.collective-timeout-s=0")], check: collective_timeout,
}
