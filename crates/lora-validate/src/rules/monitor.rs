//! `[monitor]` and `[callbacks.NAME]`: the dashboard, and the callbacks that stop or repair a run.

use lora_core::doc::Node;
use lora_core::rules::Edit::Set;
use lora_core::rules::{Finding, RuleContext};

use super::{classification_eval, field, one, suggest};

fn monitor(_: &RuleContext) -> bool {
    true
}

field! { smoothing: "monitor::smoothing-range", Error, "monitor.smoothing" if monitor,
bad |v| !(0.0..1.0).contains(&v), "is out of range", "0 <= smoothing < 1",
"The loss smoothing weight is outside [0, 1).",
"The smoothed loss is an exponential moving average with this weight on the past; 1 would never move.",
[Set("monitor.smoothing=1.0")] }

field! { interval_zero: "monitor::system-interval-zero", Error, "monitor.system-interval-ms" if monitor,
bad |v| v < 1.0, "would sample without pause", "100 <= system-interval-ms",
"The system sampling interval is zero.",
"CPU, memory and GPU figures are sampled on a thread every interval; 0 would spin a core.",
[Set("monitor.system-interval-ms=0")] }

field! { interval_short: "monitor::system-interval-short", Warning, "monitor.system-interval-ms" if monitor,
bad |v| (1.0..100.0).contains(&v), "samples more often than every 100 ms", "100 <= system-interval-ms",
"The system sampling interval is below 100 ms.",
"Reading process and GPU figures costs a few milliseconds; sampling this often takes time from training.",
[Set("monitor.system-interval-ms=10")] }

field! { port_privileged: "monitor::port-privileged", Warning, "monitor.port" if monitor,
bad |v| (1.0..1024.0).contains(&v), "is a privileged port", "1024 <= port <= 65535, or 0 for any free port",
"The dashboard port is below 1024.",
"Ports below 1024 need root on most systems; 6006 is the default.",
[Set("monitor.port=80")] }

fn port_in_use(ctx: &RuleContext) -> Vec<Finding> {
    if ctx.bool("monitor.dashboard") != Some(true) {
        return Vec::new();
    }
    let (port, at) = match ctx.int("monitor.port") {
        Some(p) => (p.value, Some(p.location)),
        None => (6006, ctx.location("monitor.dashboard")),
    };
    if port <= 0 || port > 65535 {
        return Vec::new();
    }
    match std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
        Ok(_) => Vec::new(),
        Err(e) => one(format!("port {port} on 127.0.0.1 is not available: {e}"), at)
            .into_iter()
            .map(|f| f.help("pick another port, or port = 0 for any free one (printed at start)"))
            .collect(),
    }
}
lora_core::rule! {
    id: "monitor::port-in-use", category: Resource, severity: Error,
    summary: "The dashboard port is already taken.",
    doc: "Another process (often an earlier run or TensorBoard on 6006) listens there; the run would fail at start.",
    trip: [Set("monitor.dashboard=true"), Set("monitor.port={busy_port}")], check: port_in_use,
}

/// `[callbacks.NAME]` tables of a callback type (the type defaults to the table's name).
fn callbacks<'a>(ctx: &RuleContext<'a>, ty: &str) -> Vec<(String, &'a Node)> {
    let Some(table) = ctx.node("callbacks").and_then(Node::as_table) else {
        return Vec::new();
    };
    table
        .iter()
        .filter(|(name, node)| node.get("type").and_then(Node::as_str).unwrap_or(name) == ty)
        .map(|(name, node)| (format!("callbacks.{name}"), node))
        .collect()
}

fn each<'a>(
    ctx: &RuleContext<'a>,
    ty: &str,
    key: &str,
    bad: impl Fn(f64) -> bool,
    message: impl Fn(&str) -> String,
) -> Vec<Finding> {
    callbacks(ctx, ty)
        .into_iter()
        .filter_map(|(_, node)| node.get(key))
        .filter(|v| v.as_float().is_some_and(&bad))
        .map(|v| Finding::new(message(&super::written(v)), Some(v.location.clone())))
        .collect()
}

/// What the evaluator reports: the loss and its configured metrics.
fn reported(ctx: &RuleContext) -> Vec<String> {
    let mut out = vec!["loss".to_string()];
    match ctx.strings("eval.metrics") {
        Some(m) => out.extend(m.value.iter().map(|s| s.to_string())),
        None => out.extend(["accuracy".to_string(), "macro_f1".to_string()]),
    }
    out
}

fn metric_unknown(ctx: &RuleContext) -> Vec<Finding> {
    if !classification_eval(ctx) {
        return Vec::new();
    }
    let reported = reported(ctx);
    callbacks(ctx, "early-stopping")
        .into_iter()
        .filter_map(|(_, n)| n.get("metric"))
        .filter_map(|m| m.as_str().map(|s| (s, m)))
        .filter(|(s, _)| !reported.iter().any(|r| r == s))
        .map(|(s, m)| {
            Finding::new(
                format!("early-stopping metric `{s}` is not reported by the evaluator"),
                Some(m.location.clone()),
            )
            .help(suggest(s, reported.iter().map(String::as_str)))
        })
        .collect()
}
lora_core::rule! {
    id: "callbacks::early-stopping-metric-unknown", category: Cross, severity: Error,
    summary: "Early stopping watches a metric the evaluator does not report.",
    doc: "The evaluator reports the loss and the metrics of `[eval] metrics` (accuracy and macro_f1 by default); any other name never changes, so the run would stop after `patience` evaluations.",
    trip: [Set("callbacks.early-stopping.metric=\"acc\"")], check: metric_unknown,
}

fn mode_mismatch(ctx: &RuleContext) -> Vec<Finding> {
    callbacks(ctx, "early-stopping")
        .into_iter()
        .filter_map(|(_, n)| {
            let metric = n.get("metric").and_then(Node::as_str).unwrap_or("loss");
            let mode = n.get("mode")?;
            let expected = if metric == "loss" { "min" } else { "max" };
            (mode.as_str() != Some(expected)).then(|| {
                Finding::new(
                    format!(
                        "mode `{}` for `{metric}`: lower is better only for the loss",
                        super::written(mode).trim_matches('"')
                    ),
                    Some(mode.location.clone()),
                )
                .help(format!("use mode = \"{expected}\", or leave mode out"))
            })
        })
        .collect()
}
lora_core::rule! {
    id: "callbacks::early-stopping-mode-mismatch", category: Cross, severity: Warning,
    summary: "Early stopping's mode contradicts its metric.",
    doc: "With mode `max` on the loss (or `min` on accuracy) every improvement looks like a regression and the run stops early.",
    trip: [Set("callbacks.early-stopping.metric=\"loss\""), Set("callbacks.early-stopping.mode=\"max\"")], check: mode_mismatch,
}

fn without_eval(ctx: &RuleContext) -> Vec<Finding> {
    let every = ctx.int("eval.every-steps").map_or(0, |e| e.value);
    if every > 0 {
        return Vec::new();
    }
    callbacks(ctx, "early-stopping")
        .into_iter()
        .map(|(path, n)| {
            Finding::new(
                "early stopping needs evaluations during training, but every-steps is 0 (only at the end)",
                Some(n.location.clone()),
            )
            .help(format!("set [eval] every-steps, or remove [{path}]"))
        })
        .collect()
}
lora_core::rule! {
    id: "callbacks::early-stopping-without-eval", category: Cross, severity: Error,
    summary: "Early stopping without periodic evaluation.",
    doc: "Early stopping acts on evaluations; with only the final one it can never fire.",
    trip: [Set("callbacks.early-stopping.patience=2"), Set("eval.every-steps=0")], check: without_eval,
}

fn patience_beyond_run(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(every)) = (ctx.plan(), ctx.int("eval.every-steps")) else {
        return Vec::new();
    };
    if every.value <= 0 {
        return Vec::new();
    }
    let evaluations = plan.total_steps / every.value as usize;
    callbacks(ctx, "early-stopping")
        .into_iter()
        .filter_map(|(_, n)| {
            let p = n.get("patience")?;
            let patience = p.as_int()?;
            (patience > 0 && patience as usize >= evaluations).then(|| {
                Finding::new(
                    format!("patience ({patience}) is not below the {evaluations} evaluations of the run: early stopping cannot fire"),
                    Some(p.location.clone()),
                )
            })
        })
        .collect()
}
lora_core::rule! {
    id: "callbacks::early-stopping-patience-beyond-run", category: Cross, severity: Warning,
    summary: "Early stopping's patience is as long as the run.",
    doc: "The run has total-steps / every-steps evaluations; a patience of that many never triggers.",
    trip: [Set("callbacks.early-stopping.patience=10")], check: patience_beyond_run,
}

fn min_delta(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "early-stopping",
        "min-delta",
        |v| !(v >= 0.0),
        |v| format!("min-delta ({v}) is negative. Valid range: 0 <= min-delta"),
    )
}
lora_core::rule! {
    id: "callbacks::early-stopping-min-delta-negative", category: Range, severity: Error,
    summary: "Early stopping's min-delta is negative.",
    doc: "min-delta is how much a metric must improve to count; a negative one counts regressions as improvements.",
    trip: [Set("callbacks.early-stopping.min-delta=-0.1")], check: min_delta,
}

fn patience_zero(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "early-stopping",
        "patience",
        |v| v < 1.0,
        |v| format!("patience ({v}) must be at least 1. Valid range: 1 <= patience"),
    )
}
lora_core::rule! {
    id: "callbacks::early-stopping-patience-zero", category: Range, severity: Error,
    summary: "Early stopping's patience is zero.",
    doc: "Patience counts evaluations without improvement; 0 would stop at the first evaluation.",
    trip: [Set("callbacks.early-stopping.patience=0")], check: patience_zero,
}

fn plateau_bound(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "loss-plateau",
        "bound",
        |v| !(v > 0.0),
        |v| format!("bound ({v}) is not positive: a cross-entropy loss is always above it. Valid range: 0 < bound"),
    )
}
lora_core::rule! {
    id: "callbacks::loss-plateau-bound-nonpositive", category: Range, severity: Error,
    summary: "The loss-plateau bound is zero or negative.",
    doc: "The callback stops a run whose epoch loss stays above the bound; every loss is above 0, so every run would stop.",
    trip: [Set("callbacks.loss-plateau.bound=0.0")], check: plateau_bound,
}

fn plateau_after(ctx: &RuleContext) -> Vec<Finding> {
    let epochs = ctx.int("train.epochs").map_or(1, |e| e.value);
    if ctx.node("train.max-steps").is_some() && ctx.node("train.epochs").is_none() {
        return Vec::new();
    }
    callbacks(ctx, "loss-plateau")
        .into_iter()
        .filter_map(|(_, n)| {
            let a = n.get("after-epochs")?;
            let after = a.as_int()?;
            (after > epochs).then(|| {
                Finding::new(
                    format!("after-epochs ({after}) is beyond the run's {epochs} epoch(s): the check never runs"),
                    Some(a.location.clone()),
                )
            })
        })
        .collect()
}
lora_core::rule! {
    id: "callbacks::loss-plateau-after-epochs-beyond-run", category: Cross, severity: Warning,
    summary: "The loss-plateau check starts after the run ends.",
    doc: "after-epochs counts epochs; a run with fewer never checks the bound.",
    trip: [Set("callbacks.loss-plateau.bound=0.5"), Set("callbacks.loss-plateau.after-epochs=5")], check: plateau_after,
}

fn nan_lr_factor(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "nan-rollback",
        "lr-factor",
        |v| !(v > 0.0 && v < 1.0),
        |v| format!("lr-factor ({v}) must shrink the learning rate. Valid range: 0 < lr-factor < 1"),
    )
}
lora_core::rule! {
    id: "callbacks::nan-rollback-lr-factor-range", category: Range, severity: Error,
    summary: "nan-rollback's lr-factor is outside (0, 1).",
    doc: "After a NaN the run goes back to the last good state and multiplies the learning rate by this factor; 1 or more repeats the same blow-up.",
    trip: [Set("callbacks.nan-rollback.lr-factor=1.5")], check: nan_lr_factor,
}

fn nan_retries(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "nan-rollback",
        "max-retries",
        |v| v < 1.0,
        |v| format!("max-retries ({v}) never rolls back: the first NaN stops the run"),
    )
}
lora_core::rule! {
    id: "callbacks::nan-rollback-no-retries", category: Range, severity: Warning,
    summary: "nan-rollback with zero retries.",
    doc: "With max-retries = 0 the callback only stops the run, which the trainer does on NaN anyway.",
    trip: [Set("callbacks.nan-rollback.max-retries=0")], check: nan_retries,
}

fn divergence_factor(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "divergence",
        "factor",
        |v| !(v > 1.0),
        |v| {
            format!(
                "factor ({v}) must be above 1: the loss is compared with factor x its best smoothed value. Valid range: 1 < factor"
            )
        },
    )
}
lora_core::rule! {
    id: "callbacks::divergence-factor-range", category: Range, severity: Error,
    summary: "The divergence factor is 1 or less.",
    doc: "At factor <= 1 ordinary noise above the best smoothed loss counts as divergence.",
    trip: [Set("callbacks.divergence.factor=0.5")], check: divergence_factor,
}

fn divergence_lr(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        "divergence",
        "lr-factor",
        |v| !(v > 0.0 && v < 1.0),
        |v| format!("lr-factor ({v}) must shrink the learning rate. Valid range: 0 < lr-factor < 1"),
    )
}
lora_core::rule! {
    id: "callbacks::divergence-lr-factor-range", category: Range, severity: Error,
    summary: "The divergence callback's lr-factor is outside (0, 1).",
    doc: "With action = \"rollback\" the learning rate is multiplied by lr-factor; 1 or more repeats the divergence.",
    trip: [Set("callbacks.divergence.lr-factor=2.0")], check: divergence_lr,
}

fn check_batches(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(plan), Some(c)) = (ctx.plan(), ctx.int("train.check-batches")) else {
        return Vec::new();
    };
    let micro = plan.samples.div_ceil(plan.batch_size.max(1));
    if c.value > 0 && c.value as usize > micro {
        return one(
            format!(
                "check-batches ({}) is more than the {micro} batches of an epoch",
                c.value
            ),
            Some(c.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "train::check-batches-beyond-epoch", category: Cross, severity: Warning,
    summary: "More early-check batches than an epoch has.",
    doc: "The early input checks look at the first check-batches batches; beyond an epoch they see nothing new.",
    trip: [Set("train.check-batches=1000")], check: check_batches,
}
