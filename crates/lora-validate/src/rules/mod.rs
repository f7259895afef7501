//! The built-in rules, one module per category. Each rule registers itself with
//! `lora_core::rule!`; its `trip` edits turn the reference pipeline into one that
//! trips it (tests and `docs/RULES.md` use them).

use lora_core::diag::{Location, did_you_mean};
use lora_core::doc::Node;
use lora_core::rules::{Finding, RuleContext};

mod backend;
mod cross;
mod data;
mod image;
mod llama;
mod memory;
mod model;
mod monitor;
mod optimizers;
mod range;
mod resource;
mod structure;

/// A value exactly as written (`2e-3`, not `0.002`).
pub(crate) fn written(node: &Node) -> String {
    node.location
        .file
        .text
        .get(node.location.span.clone())
        .unwrap_or("?")
        .trim()
        .to_string()
}

pub(crate) fn one(message: impl Into<String>, location: Option<Location>) -> Vec<Finding> {
    vec![Finding::new(message, location)]
}

/// A numeric field that is present, numeric, in a table where it applies, and bad.
pub(crate) fn numeric(
    ctx: &RuleContext,
    path: &str,
    applies: fn(&RuleContext) -> bool,
    bad: impl Fn(f64) -> bool,
    problem: &str,
    range: &str,
) -> Vec<Finding> {
    let Some(node) = ctx.node(path) else { return Vec::new() };
    let Some(v) = node.as_float() else { return Vec::new() };
    if !applies(ctx) || !bad(v) {
        return Vec::new();
    }
    let key = path.rsplit('.').next().unwrap_or(path);
    one(
        format!("{key} ({}) {problem}. Valid range: {range}", written(node)),
        Some(node.location.clone()),
    )
}

/// "did you mean" help for a name among candidates, or the list of valid names.
pub(crate) fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let list: Vec<&str> = candidates.clone().into_iter().collect();
    match did_you_mean(name, candidates) {
        Some(s) => format!("did you mean `{s}`? valid: {}", list.join(", ")),
        None => format!("valid: {}", list.join(", ")),
    }
}

// Where a rule applies: the component types whose schema has the field.

pub(crate) fn always(_: &RuleContext) -> bool {
    true
}
pub(crate) fn text_data(ctx: &RuleContext) -> bool {
    matches!(ctx.type_of("data"), Some("csv" | "jsonl"))
}
pub(crate) fn csv_data(ctx: &RuleContext) -> bool {
    ctx.type_of("data") == Some("csv")
}
pub(crate) fn jsonl_data(ctx: &RuleContext) -> bool {
    ctx.type_of("data") == Some("jsonl")
}
pub(crate) fn bert(ctx: &RuleContext) -> bool {
    ctx.type_of("model") == Some("bert-classifier")
}
pub(crate) fn supervised(ctx: &RuleContext) -> bool {
    ctx.type_of("train") == Some("supervised")
}
pub(crate) fn adamw(ctx: &RuleContext) -> bool {
    ctx.type_of("train.optimizer") == Some("adamw")
}
pub(crate) fn sgd(ctx: &RuleContext) -> bool {
    ctx.type_of("train.optimizer") == Some("sgd")
}
pub(crate) fn any_optimizer(ctx: &RuleContext) -> bool {
    adamw(ctx) || sgd(ctx) || matches!(ctx.type_of("train.optimizer"), Some("lion" | "adafactor"))
}
pub(crate) fn warmup_schedule(ctx: &RuleContext) -> bool {
    matches!(ctx.type_of("train.scheduler"), Some("constant" | "linear" | "cosine"))
}
pub(crate) fn cosine(ctx: &RuleContext) -> bool {
    ctx.type_of("train.scheduler") == Some("cosine")
}
pub(crate) fn classification_eval(ctx: &RuleContext) -> bool {
    ctx.type_of("eval") == Some("classification")
}

/// The learning rate, when an optimizer sets one.
pub(crate) fn learning_rate(ctx: &RuleContext) -> Option<f64> {
    any_optimizer(ctx)
        .then(|| ctx.float("train.optimizer.lr").map(|v| v.value))
        .flatten()
}

/// Registers a range rule on one numeric field.
macro_rules! field {
    (
        $name:ident: $id:literal, $sev:ident, $path:literal if $applies:path,
        bad |$v:ident| $bad:expr, $problem:literal, $range:literal,
        $summary:literal,
        $doc:literal,
        [$($trip:expr),* $(,)?]
    ) => {
        fn $name(ctx: &lora_core::rules::RuleContext) -> Vec<lora_core::rules::Finding> {
            $crate::rules::numeric(ctx, $path, $applies, |$v: f64| $bad, $problem, $range)
        }
        lora_core::rule! {
            id: $id,
            category: Range,
            severity: $sev,
            summary: $summary,
            doc: $doc,
            trip: [$($trip),*],
            check: $name,
        }
    };
}
pub(crate) use field;
