//! The range of every numeric field, and the string fields that can be empty or malformed.

use lora_core::rules::Edit::Set;
use lora_core::rules::{Finding, RuleContext};

use super::{
    adamw, always, any_optimizer, bert, classification_eval, cosine, field, jsonl_data, one, sgd, supervised,
    text_data, warmup_schedule,
};

// [run]

field! { seed_negative: "run::seed-negative", Error, "run.seed" if always,
bad |v| v < 0.0, "is negative", "0 <= seed < 2^64",
"The seed is negative.",
"Seeds are unsigned 64-bit integers; every random stream (split, shuffle, LoRA init, dropout) derives from it.",
[Set("run.seed=-1")] }

fn name_empty(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("run.name") {
        Some(n) if n.value.trim().is_empty() => one("run name is empty", Some(n.location)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "run::name-empty", category: Range, severity: Error,
    summary: "The run name is empty.",
    doc: "The name labels metrics, reports and the dashboard; an empty one makes runs indistinguishable.",
    trip: [Set("run.name=\"\"")], check: name_empty,
}

fn name_separator(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("run.name") {
        Some(n) if n.value.contains(['/', '\\']) => one(
            format!("run name {:?} contains a path separator", n.value),
            Some(n.location),
        )
        .into_iter()
        .map(|f| f.help("the name is a label; set where outputs go with `output-dir`"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "run::name-has-separator", category: Range, severity: Warning,
    summary: "The run name contains a path separator.",
    doc: "Names end up in file names and URLs of reports; use `output-dir` for paths.",
    trip: [Set("run.name=\"exp/1\"")], check: name_separator,
}

fn output_dir_empty(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("run.output-dir") {
        Some(n) if n.value.trim().is_empty() => one("output-dir is empty", Some(n.location)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "run::output-dir-empty", category: Range, severity: Error,
    summary: "The output folder is empty.",
    doc: "An empty output-dir would write the adapter into the working directory, mixed with other files.",
    trip: [Set("run.output-dir=\"\"")], check: output_dir_empty,
}

// [data]

field! { validation_fraction: "data::validation-fraction-range", Error, "data.validation-fraction" if text_data,
bad |v| !(v > 0.0 && v < 1.0), "is outside the open interval (0, 1)", "0 < validation-fraction < 1",
"validation-fraction is not strictly between 0 and 1.",
"The share of the training file split off for validation: 0 leaves nothing to evaluate on, 1 leaves nothing to train on.",
[Set("data.validation-fraction=1.5")] }

field! { validation_fraction_large: "data::validation-fraction-large", Warning, "data.validation-fraction" if text_data,
bad |v| v > 0.5 && v < 1.0, "holds out more than half of the data", "0 < validation-fraction <= 0.5 is usual",
"More than half of the data is held out for validation.",
"Usually 0.05-0.2; a larger share trains on less data than it could. Perhaps 0.6 was meant as 0.06?",
[Set("data.validation-fraction=0.6")] }

field! { max_length_tiny: "data::max-length-too-small", Error, "data.max-length" if text_data,
bad |v| v < 3.0, "leaves no room for text ([CLS] and [SEP] take 2 tokens)", "3 <= max-length <= the model's positions",
"max-length leaves no room for text.",
"BERT tokenizers add [CLS] and [SEP]; max-length counts them, so it must be at least 3.",
[Set("data.max-length=2")] }

field! { max_length_short: "data::max-length-short", Warning, "data.max-length" if text_data,
bad |v| (3.0..16.0).contains(&v), "keeps fewer than 14 tokens of each text", "16 <= max-length is usual",
"max-length is very short.",
"Fewer than 14 tokens of text survive truncation; most sentences lose their ending.",
[Set("data.max-length=8")] }

field! { max_train_zero: "data::max-train-samples-zero", Error, "data.max-train-samples" if text_data,
bad |v| v < 1.0, "leaves no training rows", "1 <= max-train-samples",
"max-train-samples is zero or negative.",
"A cap of 0 trains on nothing. Remove the key to use every row.",
[Set("data.max-train-samples=0")] }

field! { max_validation_zero: "data::max-validation-samples-zero", Error, "data.max-validation-samples" if text_data,
bad |v| v < 1.0, "leaves no validation rows", "1 <= max-validation-samples",
"max-validation-samples is zero or negative.",
"A cap of 0 evaluates on nothing. Remove the key to use every row.",
[Set("data.max-validation-samples=0")] }

fn labels_empty(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.strings("data.labels") {
        Some(l) if text_data(ctx) && l.value.is_empty() => one("labels is empty", Some(l.location)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::labels-empty", category: Range, severity: Error,
    summary: "The label list is empty.",
    doc: "`labels` is the label map (index = class id). Remove it to derive the labels from the data, or list at least two.",
    trip: [Set("data.labels=[]")], check: labels_empty,
}

fn labels_single(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.strings("data.labels") {
        Some(l) if text_data(ctx) && l.value.len() == 1 => one(
            format!(
                "labels has a single class ({:?}); a classifier needs at least 2",
                l.value[0]
            ),
            Some(l.location),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::labels-single", category: Range, severity: Error,
    summary: "The label list has one class.",
    doc: "With one class there is nothing to learn: the loss is zero from the first step.",
    trip: [Set("data.labels=[\"positive\"]")], check: labels_single,
}

fn labels_duplicate(ctx: &RuleContext) -> Vec<Finding> {
    let Some(l) = ctx.strings("data.labels").filter(|_| text_data(ctx)) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    l.value
        .iter()
        .filter(|name| !seen.insert(**name))
        .map(|name| {
            Finding::new(
                format!("labels lists {name:?} twice; class names must be unique"),
                Some(l.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "data::labels-duplicate", category: Range, severity: Error,
    summary: "A class name appears twice in the label list.",
    doc: "Two class ids for one name: rows go to the first, the second never gets an example.",
    trip: [Set("data.labels=[\"negative\", \"negative\", \"positive\"]")], check: labels_duplicate,
}

fn labels_whitespace(ctx: &RuleContext) -> Vec<Finding> {
    let Some(l) = ctx.strings("data.labels").filter(|_| text_data(ctx)) else {
        return Vec::new();
    };
    l.value
        .iter()
        .filter(|name| name.trim() != **name || name.is_empty())
        .map(|name| {
            Finding::new(
                format!("label {name:?} has leading or trailing whitespace, or is empty"),
                Some(l.location.clone()),
            )
            .help("labels are matched exactly; the data's labels are probably written without the spaces")
        })
        .collect()
}
lora_core::rule! {
    id: "data::labels-whitespace", category: Range, severity: Error,
    summary: "A class name is empty or has surrounding whitespace.",
    doc: "Labels are matched exactly against the data, so `\" neutral\"` matches no row.",
    trip: [Set("data.labels=[\"negative\", \" neutral\", \"positive\"]")], check: labels_whitespace,
}

fn same_column(ctx: &RuleContext) -> Vec<Finding> {
    if !text_data(ctx) {
        return Vec::new();
    }
    let text = ctx.string("data.text-column").map_or("text", |t| t.value);
    let label = ctx.string("data.label-column");
    let label_name = label.as_ref().map_or("label", |l| l.value);
    if text != label_name {
        return Vec::new();
    }
    let at = label.map(|l| l.location).or_else(|| ctx.location("data.text-column"));
    one(
        format!("text-column and label-column are both {text:?}; they must differ"),
        at,
    )
}
lora_core::rule! {
    id: "data::same-column", category: Range, severity: Error,
    summary: "The text and label columns are the same.",
    doc: "The model would be asked to predict its own input.",
    trip: [Set("data.label-column=\"text\"")], check: same_column,
}

fn delimiter_jsonl(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.node("data.delimiter") {
        Some(n) if jsonl_data(ctx) => one("delimiter applies to csv data, not jsonl", Some(n.location.clone())),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::delimiter-jsonl", category: Range, severity: Error,
    summary: "A delimiter is set for jsonl data.",
    doc: "JSON lines have no field delimiter; the key suggests the wrong `type`.",
    trip: [Set("data.type=\"jsonl\""), Set("data.delimiter=\",\"")], check: delimiter_jsonl,
}

fn delimiter_length(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("data.delimiter") {
        Some(d) if super::csv_data(ctx) && !(d.value.len() == 1 && d.value.is_ascii()) => one(
            format!(
                "delimiter ({:?}) must be exactly one ASCII character, such as \",\" or \"\\t\"",
                d.value
            ),
            Some(d.location),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::delimiter-length", category: Range, severity: Error,
    summary: "The csv delimiter is not one ASCII character.",
    doc: "The csv reader splits on a single byte.",
    trip: [Set("data.delimiter=\";;\"")], check: delimiter_length,
}

// [model]

field! { head_dropout: "model::classifier-dropout-range", Error, "model.classifier-dropout" if bert,
bad |v| !(0.0..1.0).contains(&v), "is out of range", "0 <= classifier-dropout < 1",
"classifier-dropout is outside [0, 1).",
"A dropout probability of 1 or more drops every feature before the head.",
[Set("model.classifier-dropout=1.0")] }

field! { head_dropout_high: "model::classifier-dropout-high", Warning, "model.classifier-dropout" if bert,
bad |v| v > 0.5 && v < 1.0, "drops more than half of the pooled features", "0 <= classifier-dropout <= 0.5 is usual",
"classifier-dropout above 0.5.",
"Hugging Face's default is 0.1; above 0.5 the head learns slowly.",
[Set("model.classifier-dropout=0.7")] }

field! { num_labels_range: "model::num-labels-range", Error, "model.num-labels" if bert,
bad |v| v < 2.0, "is below 2", "2 <= num-labels",
"num-labels is below 2.",
"A classification head needs at least two outputs.",
[Set("model.num-labels=1")] }

fn base_name_empty(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("model.base-model-name") {
        Some(n) if bert(ctx) && n.value.trim().is_empty() => one("base-model-name is empty", Some(n.location)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::base-model-name-empty", category: Range, severity: Error,
    summary: "base-model-name is empty.",
    doc: "It is written to `adapter_config.json` as `base_model_name_or_path`; PEFT cannot load an adapter whose base is empty.",
    trip: [Set("model.base-model-name=\"\"")], check: base_name_empty,
}

// [lora]

field! { rank_zero: "lora::rank-zero", Error, "lora.r" if always,
bad |v| v < 1.0, "must be at least 1", "1 <= r <= hidden size",
"The LoRA rank is below 1.",
"r is the inner dimension of B A; 0 adds nothing. For a head-only baseline, set target-modules = [].",
[Set("lora.r=0")] }

field! { rank_large: "lora::rank-large", Warning, "lora.r" if always,
bad |v| v > 64.0, "is above 64", "1 <= r <= 64 is usual",
"The LoRA rank is above 64.",
"Ranks above 64 rarely improve classification and grow the adapter and step time linearly.",
[Set("lora.r=128")] }

/// Every value of a `[lora]` pattern table that `bad` rejects, as a finding at the value.
fn pattern_values(ctx: &RuleContext, table: &str, bad: fn(f64) -> bool, what: &str, range: &str) -> Vec<Finding> {
    let Some(entries) = ctx
        .node(&format!("lora.{table}"))
        .and_then(lora_core::doc::Node::as_table)
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|(key, n)| Some((key, n.as_float()?, n)))
        .filter(|(_, v, _)| bad(*v))
        .map(|(key, v, n)| {
            Finding::new(
                format!("{table} gives `{key}` {what} {v}. Valid range: {range}"),
                Some(n.location.clone()),
            )
        })
        .collect()
}

fn pattern_rank_zero(ctx: &RuleContext) -> Vec<Finding> {
    pattern_values(ctx, "rank-pattern", |v| v < 1.0, "rank", "1 <= rank")
}
lora_core::rule! {
    id: "lora::pattern-rank-zero", category: Range, severity: Error,
    summary: "A rank-pattern value is below 1.",
    doc: "Each value is the rank of the modules its key names; 0 adds nothing. Leave a module out of target-modules instead.",
    trip: [Set("lora.rank-pattern={ query = 0 }")], check: pattern_rank_zero,
}

fn pattern_alpha_nonpositive(ctx: &RuleContext) -> Vec<Finding> {
    pattern_values(
        ctx,
        "alpha-pattern",
        |v| !(v > 0.0 && v.is_finite()),
        "alpha",
        "0 < alpha",
    )
}
lora_core::rule! {
    id: "lora::pattern-alpha-nonpositive", category: Range, severity: Error,
    summary: "An alpha-pattern value is not positive.",
    doc: "As for alpha: the update of the modules the key names is scaled by this alpha over their rank; 0 disables it, a negative value flips it.",
    trip: [Set("lora.alpha-pattern={ query = 0 }")], check: pattern_alpha_nonpositive,
}

field! { alpha_nonpositive: "lora::alpha-nonpositive", Error, "lora.alpha" if always,
bad |v| !(v > 0.0 && v.is_finite()), "must be positive and finite", "0 < alpha",
"LoRA alpha is not positive.",
"The update is scaled by alpha / r: 0 disables it, a negative alpha flips it.",
[Set("lora.alpha=0")] }

field! { dropout_range: "lora::dropout-range", Error, "lora.dropout" if always,
bad |v| !(0.0..1.0).contains(&v), "is out of range", "0 <= dropout < 1",
"LoRA dropout is outside [0, 1).",
"Dropout is a probability; 1 drops every input of the adapter.",
[Set("lora.dropout=1.0")] }

field! { dropout_high: "lora::dropout-high", Warning, "lora.dropout" if always,
bad |v| v > 0.5 && v < 1.0, "drops more than half of the adapter's input", "0 <= dropout <= 0.5 is usual",
"LoRA dropout above 0.5.",
"PEFT's examples use 0.05-0.1; above 0.5 the adapter learns slowly.",
[Set("lora.dropout=0.6")] }

fn scale_extreme(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(r), Some(alpha)) = (ctx.float("lora.r"), ctx.float("lora.alpha")) else {
        return Vec::new();
    };
    if r.value < 1.0 || !(alpha.value > 0.0) {
        return Vec::new();
    }
    let rs = ctx.bool("lora.use-rslora").unwrap_or(false);
    let scale = if rs {
        alpha.value / r.value.sqrt()
    } else {
        alpha.value / r.value
    };
    if (0.0625..=16.0).contains(&scale) {
        return Vec::new();
    }
    let formula = if rs { "alpha / sqrt(r)" } else { "alpha / r" };
    one(
        format!("the LoRA scale {formula} = {scale} is outside the usual range. Valid range: 1/16 <= scale <= 16"),
        Some(alpha.location),
    )
    .into_iter()
    .map(|f| f.help("alpha = 2 * r is a common choice"))
    .collect()
}
lora_core::rule! {
    id: "lora::scale-extreme", category: Range, severity: Warning,
    summary: "alpha / r is far from 1.",
    doc: "The update B A is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA); a very large scale destabilises training, a very small one makes LoRA inert.",
    trip: [Set("lora.alpha=512")], check: scale_extreme,
}

fn targets_empty(ctx: &RuleContext) -> Vec<Finding> {
    // A fully trained model (pretraining) has no adapter on purpose.
    if ctx.string("model.mode").is_some_and(|m| m.value == "full") {
        return Vec::new();
    }
    match ctx.strings("lora.target-modules") {
        Some(t) if t.value.is_empty() => one(
            "target-modules is empty: no LoRA layer is inserted and only the head trains",
            Some(t.location),
        )
        .into_iter()
        .map(|f| f.help("list modules such as [\"query\", \"value\"], unless a head-only baseline is intended"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "lora::targets-empty", category: Range, severity: Warning,
    summary: "No module is targeted: only the head trains.",
    doc: "Useful as a baseline; otherwise the run trains no adapter at all.",
    trip: [Set("lora.target-modules=[]")], check: targets_empty,
}

fn target_duplicate(ctx: &RuleContext) -> Vec<Finding> {
    let Some(t) = ctx.strings("lora.target-modules") else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    t.value
        .iter()
        .filter(|n| !seen.insert(**n))
        .map(|n| Finding::new(format!("target module `{n}` is listed twice"), Some(t.location.clone())))
        .collect()
}
lora_core::rule! {
    id: "lora::target-duplicate", category: Range, severity: Error,
    summary: "A target module is listed twice.",
    doc: "Each module gets one adapter; a repeat is a typo for another module.",
    trip: [Set("lora.target-modules=[\"query\", \"query\"]")], check: target_duplicate,
}

// [train]

field! { epochs_zero: "train::epochs-zero", Error, "train.epochs" if supervised,
bad |v| v < 1.0, "trains nothing", "1 <= epochs",
"epochs is zero or negative.",
"Zero passes over the data train nothing.",
[Set("train.epochs=0")] }

field! { epochs_many: "train::epochs-many", Warning, "train.epochs" if supervised,
bad |v| v > 100.0, "is above 100", "1 <= epochs <= 100 is usual",
"More than 100 epochs.",
"Fine-tuning converges in a few epochs; hundreds overfit and take long. Perhaps max-steps was meant.",
[Set("train.epochs=500")] }

field! { max_steps_zero: "train::max-steps-zero", Error, "train.max-steps" if supervised,
bad |v| v < 1.0, "trains nothing", "1 <= max-steps",
"max-steps is zero or negative.",
"Zero optimizer steps train nothing.",
[Set("train.max-steps=0")] }

field! { batch_zero: "train::batch-size-zero", Error, "train.batch-size" if supervised,
bad |v| v < 1.0, "must be at least 1", "1 <= batch-size",
"The training batch size is below 1.",
"A micro-batch needs at least one example.",
[Set("train.batch-size=0")] }

field! { accumulation_zero: "train::accumulation-zero", Error, "train.gradient-accumulation-steps" if supervised,
bad |v| v < 1.0, "must be at least 1", "1 <= gradient-accumulation-steps",
"gradient-accumulation-steps is below 1.",
"It counts micro-batches per optimizer step; 1 means no accumulation.",
[Set("train.gradient-accumulation-steps=0")] }

field! { accumulation_large: "train::accumulation-large", Warning, "train.gradient-accumulation-steps" if supervised,
bad |v| v > 64.0, "is above 64", "1 <= gradient-accumulation-steps <= 64 is usual",
"More than 64 accumulation steps.",
"Each optimizer step then waits for 64+ micro-batches: very few updates per epoch.",
[Set("train.gradient-accumulation-steps=128")] }

field! { clip_negative: "train::max-grad-norm-negative", Error, "train.max-grad-norm" if supervised,
bad |v| !(v >= 0.0), "is negative", "0 <= max-grad-norm (0 disables clipping)",
"max-grad-norm is negative.",
"Gradients are clipped to this global norm; 0 disables clipping, a negative norm means nothing.",
[Set("train.max-grad-norm=-1.0")] }

field! { clip_tiny: "train::max-grad-norm-tiny", Warning, "train.max-grad-norm" if supervised,
bad |v| v > 0.0 && v < 1e-3, "clips every step to almost nothing", "0.1 <= max-grad-norm <= 10 is usual",
"max-grad-norm is tiny.",
"Below 1e-3 every gradient is shrunk to a negligible step; the learning rate no longer matters.",
[Set("train.max-grad-norm=1e-5")] }

// [train.optimizer]

field! { lr_nonpositive: "optim::lr-nonpositive", Error, "train.optimizer.lr" if any_optimizer,
bad |v| !(v > 0.0 && v.is_finite()), "must be positive and finite", "0 < lr",
"The learning rate is not positive.",
"With lr <= 0 the weights do not move, or move uphill.",
[Set("train.optimizer.lr=0")] }

field! { lr_above_one: "optim::lr-above-one", Error, "train.optimizer.lr" if adamw,
bad |v| v >= 1.0 && v.is_finite(), "is at least 1, which diverges with AdamW", "0 < lr < 1 (1e-5 to 1e-2 is usual)",
"AdamW learning rate of 1 or more.",
"AdamW's step is about lr per weight regardless of the gradient's size; lr >= 1 destroys the weights in one step. A missing minus sign in an exponent (1e3 for 1e-3) is the usual cause.",
[Set("train.optimizer.lr=1.5")] }

field! { lr_high: "optim::lr-high", Warning, "train.optimizer.lr" if adamw,
bad |v| (0.05..1.0).contains(&v), "is high for AdamW", "1e-5 <= lr <= 1e-2 is usual for LoRA",
"AdamW learning rate above 0.05.",
"LoRA tolerates higher rates than full fine-tuning, but above 0.05 training usually diverges.",
[Set("train.optimizer.lr=0.1")] }

field! { lr_tiny: "optim::lr-tiny", Warning, "train.optimizer.lr" if any_optimizer,
bad |v| v > 0.0 && v < 1e-7, "is so small that nothing will change", "1e-6 <= lr",
"The learning rate is below 1e-7.",
"Updates this small are lost in float rounding; perhaps the exponent's sign is wrong.",
[Set("train.optimizer.lr=1e-9")] }

field! { sgd_lr_high: "optim::sgd-lr-high", Warning, "train.optimizer.lr" if sgd,
bad |v| v > 1.0 && v.is_finite(), "is above 1 for SGD", "1e-4 <= lr <= 1 is usual for SGD",
"SGD learning rate above 1.",
"SGD's step is lr times the gradient; above 1 it overshoots unless gradients are tiny.",
[Set("train.optimizer.type=\"sgd\""), Set("train.optimizer.lr=5.0")] }

fn beta(ctx: &RuleContext, index: usize) -> Option<(f64, lora_core::diag::Location)> {
    let betas = ctx.node("train.optimizer.betas")?.as_array()?;
    let b = betas.get(index)?;
    Some((b.as_float()?, b.location.clone()))
}

fn beta_range(ctx: &RuleContext, index: usize) -> Vec<Finding> {
    match beta(ctx, index) {
        Some((v, at)) if adamw(ctx) && !(0.0..1.0).contains(&v) => one(
            format!(
                "betas[{index}] ({v}) is out of range. Valid range: 0 <= beta{} < 1",
                index + 1
            ),
            Some(at),
        ),
        _ => Vec::new(),
    }
}
fn beta1_range(ctx: &RuleContext) -> Vec<Finding> {
    beta_range(ctx, 0)
}
fn beta2_range(ctx: &RuleContext) -> Vec<Finding> {
    beta_range(ctx, 1)
}
lora_core::rule! {
    id: "optim::beta1-range", category: Range, severity: Error,
    summary: "AdamW beta1 is outside [0, 1).",
    doc: "beta1 is the decay of the gradient's moving average; 1 or more never forgets the first gradient.",
    trip: [Set("train.optimizer.betas=[1.0, 0.999]")], check: beta1_range,
}
lora_core::rule! {
    id: "optim::beta2-range", category: Range, severity: Error,
    summary: "AdamW beta2 is outside [0, 1).",
    doc: "beta2 is the decay of the squared gradient's moving average; it must be below 1.",
    trip: [Set("train.optimizer.betas=[0.9, 1.5]")], check: beta2_range,
}

fn betas_swapped(ctx: &RuleContext) -> Vec<Finding> {
    match (beta(ctx, 0), beta(ctx, 1)) {
        (Some((b1, at)), Some((b2, _)))
            if adamw(ctx) && (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) && b1 > b2 =>
        {
            one(
                format!("betas = [{b1}, {b2}]: beta1 is larger than beta2; they look swapped"),
                Some(at),
            )
            .into_iter()
            .map(|f| f.help("the usual order is [0.9, 0.999]"))
            .collect()
        }
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "optim::betas-swapped", category: Range, severity: Warning,
    summary: "AdamW beta1 is larger than beta2.",
    doc: "betas = [beta1, beta2] with beta1 for the gradient and beta2 for its square; [0.999, 0.9] is the usual pair swapped.",
    trip: [Set("train.optimizer.betas=[0.999, 0.9]")], check: betas_swapped,
}

fn beta2_low(ctx: &RuleContext) -> Vec<Finding> {
    match (beta(ctx, 0), beta(ctx, 1)) {
        (Some((b1, _)), Some((b2, at))) if adamw(ctx) && b2 < 0.9 && b2 >= b1 && b2 >= 0.0 => one(
            format!(
                "betas[1] ({b2}) is low: the second-moment estimate will be noisy. Valid range: 0.9 <= beta2 < 1 is usual"
            ),
            Some(at),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "optim::beta2-low", category: Range, severity: Warning,
    summary: "AdamW beta2 is below 0.9.",
    doc: "A short second-moment average makes the per-weight step size jump between steps.",
    trip: [Set("train.optimizer.betas=[0.5, 0.8]")], check: beta2_low,
}

field! { eps_nonpositive: "optim::eps-nonpositive", Error, "train.optimizer.eps" if adamw,
bad |v| v <= 0.0 && v.is_finite(), "must be positive", "0 < eps (1e-8 is usual)",
"AdamW eps is not positive.",
"eps keeps the division by the second moment finite; 0 gives inf or NaN for weights with zero gradient.",
[Set("train.optimizer.eps=0.0")] }

field! { eps_large: "optim::eps-large", Warning, "train.optimizer.eps" if adamw,
bad |v| v > 1e-3 && v.is_finite(), "is large and damps every update", "1e-10 <= eps <= 1e-6 is usual",
"AdamW eps above 1e-3.",
"A large eps turns Adam into a slow SGD; perhaps 1e-8 was meant.",
[Set("train.optimizer.eps=0.1")] }

field! { wd_negative: "optim::weight-decay-negative", Error, "train.optimizer.weight-decay" if any_optimizer,
bad |v| v < 0.0 && v.is_finite(), "is negative", "0 <= weight-decay",
"weight-decay is negative.",
"Negative decay grows every weight each step.",
[Set("train.optimizer.weight-decay=-0.1")] }

field! { wd_large: "optim::weight-decay-large", Warning, "train.optimizer.weight-decay" if any_optimizer,
bad |v| v > 0.5 && v.is_finite(), "is large", "0 <= weight-decay <= 0.1 is usual",
"weight-decay above 0.5.",
"Decoupled decay of 0.5 or more pulls the adapter to zero faster than it learns.",
[Set("train.optimizer.weight-decay=2.0")] }

/// Optimizer fields whose own range rule already rejects a value that is not finite.
fn finite_checked_elsewhere(ctx: &RuleContext, key: &str) -> bool {
    match key {
        "lr" => any_optimizer(ctx),
        "betas" => adamw(ctx),
        "momentum" | "dampening" => sgd(ctx),
        _ => false,
    }
}

fn optimizer_non_finite(ctx: &RuleContext) -> Vec<Finding> {
    let Some(fields) = ctx.node("train.optimizer").and_then(|n| n.as_table()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, node) in fields {
        if finite_checked_elsewhere(ctx, key) {
            continue;
        }
        let values: Vec<&lora_core::doc::Node> = match node.as_array() {
            Some(items) => items.iter().collect(),
            None => vec![node],
        };
        for v in values {
            if let Some(x) = v.as_float().filter(|x| !x.is_finite()) {
                out.push(Finding::new(
                    format!("{key} ({x}) is not a finite number: every update would turn the weights into inf or NaN"),
                    Some(v.location.clone()),
                ));
            }
        }
    }
    out
}
lora_core::rule! {
    id: "optim::non-finite", category: Range, severity: Error,
    summary: "An optimizer value is inf or nan.",
    doc: "TOML accepts `inf` and `nan`, but no optimizer hyper-parameter (weight-decay, eps, ...) means anything there: the first step would make the adapter inf or NaN.",
    trip: [Set("train.optimizer.weight-decay=inf")], check: optimizer_non_finite,
}

field! { momentum_range: "optim::momentum-range", Error, "train.optimizer.momentum" if sgd,
bad |v| !(0.0..1.0).contains(&v), "is out of range", "0 <= momentum < 1",
"SGD momentum is outside [0, 1).",
"Momentum of 1 or more never lets a past gradient fade and diverges.",
[Set("train.optimizer.type=\"sgd\""), Set("train.optimizer.momentum=1.0")] }

field! { dampening_range: "optim::dampening-range", Error, "train.optimizer.dampening" if sgd,
bad |v| !(0.0..=1.0).contains(&v), "is out of range", "0 <= dampening <= 1",
"SGD dampening is outside [0, 1].",
"Dampening scales the new gradient's share of the momentum buffer by (1 - dampening).",
[Set("train.optimizer.type=\"sgd\""), Set("train.optimizer.dampening=1.5")] }

// [train.scheduler]

field! { warmup_ratio: "sched::warmup-ratio-range", Error, "train.scheduler.warmup-ratio" if warmup_schedule,
bad |v| !(0.0..1.0).contains(&v), "is out of range", "0 <= warmup-ratio < 1",
"warmup-ratio is outside [0, 1).",
"The share of the run spent warming up; 1 or more never reaches the full learning rate.",
[Set("train.scheduler.warmup-ratio=1.0")] }

field! { warmup_steps_negative: "sched::warmup-steps-negative", Error, "train.scheduler.warmup-steps" if warmup_schedule,
bad |v| v < 0.0, "is negative", "0 <= warmup-steps < total steps",
"warmup-steps is negative.",
"Warmup is a count of optimizer steps.",
[Set("train.scheduler.warmup-steps=-5")] }

field! { min_lr_range: "sched::min-lr-ratio-range", Error, "train.scheduler.min-lr-ratio" if cosine,
bad |v| !(0.0..=1.0).contains(&v), "is out of range", "0 <= min-lr-ratio <= 1",
"min-lr-ratio is outside [0, 1].",
"The cosine floor as a share of the peak learning rate.",
[Set("train.scheduler.type=\"cosine\""), Set("train.scheduler.min-lr-ratio=1.5")] }

field! { min_lr_high: "sched::min-lr-ratio-high", Warning, "train.scheduler.min-lr-ratio" if cosine,
bad |v| v > 0.5 && v <= 1.0, "leaves little decay", "0 <= min-lr-ratio <= 0.1 is usual",
"min-lr-ratio above 0.5.",
"The cosine schedule then barely decays; a constant schedule says so more plainly.",
[Set("train.scheduler.type=\"cosine\""), Set("train.scheduler.min-lr-ratio=0.8")] }

// [train] checkpoints

field! { checkpoint_every_negative: "train::checkpoint-every-negative", Error, "train.checkpoint-every-steps" if always,
bad |v| v < 0.0, "is negative", "0 <= checkpoint-every-steps (0: only when interrupted)",
"checkpoint-every-steps is negative.",
"The checkpoint interval counts optimizer steps; 0 writes a checkpoint only when the run is interrupted (SIGINT, SIGTERM).",
[Set("train.checkpoint-every-steps=-1")] }

field! { keep_last_zero: "train::keep-last-zero", Error, "train.keep-last" if always,
bad |v| v < 1.0, "must be at least 1", "1 <= keep-last",
"keep-last keeps no checkpoint.",
"How many checkpoints are kept; older ones are deleted once a newer one is complete. Below 1 there would be nothing to resume from.",
[Set("train.keep-last=0")] }

// [eval]

field! { eval_batch_zero: "eval::batch-size-zero", Error, "eval.batch-size" if classification_eval,
bad |v| v < 1.0, "must be at least 1", "1 <= batch-size",
"The evaluation batch size is below 1.",
"Evaluation runs in batches of at least one example.",
[Set("eval.batch-size=0")] }

field! { every_negative: "eval::every-steps-negative", Error, "eval.every-steps" if classification_eval,
bad |v| v < 0.0, "is negative", "0 <= every-steps (0: only at the end)",
"every-steps is negative.",
"The evaluation interval counts optimizer steps; 0 evaluates only at the end.",
[Set("eval.every-steps=-1")] }

fn metrics_duplicate(ctx: &RuleContext) -> Vec<Finding> {
    let Some(m) = ctx.strings("eval.metrics").filter(|_| classification_eval(ctx)) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    m.value
        .iter()
        .filter(|n| !seen.insert(**n))
        .map(|n| Finding::new(format!("metric `{n}` is listed twice"), Some(m.location.clone())))
        .collect()
}
lora_core::rule! {
    id: "eval::metrics-duplicate", category: Range, severity: Warning,
    summary: "A metric is listed twice in `[eval] metrics`.",
    doc: "Each metric is reported once; a repeat is usually a typo for another metric.",
    trip: [Set("eval.metrics=[\"accuracy\", \"accuracy\"]")], check: metrics_duplicate,
}

fn metrics_accuracy_only_imbalanced(ctx: &RuleContext) -> Vec<Finding> {
    let Some(m) = ctx.strings("eval.metrics").filter(|_| classification_eval(ctx)) else {
        return Vec::new();
    };
    let Some(d) = ctx.facts.data.as_ref() else {
        return Vec::new();
    };
    let counts: Vec<usize> = d.train.label_counts.iter().copied().filter(|&n| n > 0).collect();
    let (Some(&max), Some(&min)) = (counts.iter().max(), counts.iter().min()) else {
        return Vec::new();
    };
    if m.value == ["accuracy"] && max >= 3 * min {
        return one(
            format!("only accuracy is reported on classes imbalanced {}:1", max / min.max(1)),
            Some(m.location),
        )
        .into_iter()
        .map(|f| f.help("add \"macro_f1\" or \"balanced_accuracy\": they show a model that ignores small classes"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "eval::accuracy-only-imbalanced", category: Cross, severity: Warning,
    summary: "Only accuracy is reported on imbalanced classes.",
    doc: "On classes imbalanced 3:1 or worse, accuracy rewards predicting the majority class; macro-F1 or balanced accuracy do not.",
    trip: [Set("eval.metrics=[\"accuracy\"]"), Set("data.path=\"{fixtures}/data/imbalanced.csv\"")], check: metrics_accuracy_only_imbalanced,
}
