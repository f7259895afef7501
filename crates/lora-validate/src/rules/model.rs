//! Checks against the base model's files: `config.json` and the safetensors
//! header (names, dtypes, shapes), never the weights themselves.

use lora_core::bert::TARGETS;
use lora_core::diag::Location;
use lora_core::doc::Node;
use lora_core::lora::pattern_matches;
use lora_core::rules::Edit::{Replace, Set};
use lora_core::rules::{At, Finding, ModelFacts, RuleContext};

use super::{bert, one, suggest, text_data};

fn facts<'a>(ctx: &RuleContext<'a>) -> Option<&'a ModelFacts> {
    ctx.facts.model.as_ref()
}

/// An `asset:NAME/...` reference whose NAME is not a pinned asset.
pub(crate) fn unknown_asset(ctx: &RuleContext, key: &str) -> Vec<Finding> {
    let Some(p) = ctx.string(key) else { return Vec::new() };
    let Some(rest) = p.value.strip_prefix("asset:") else {
        return Vec::new();
    };
    let name = rest.split('/').next().unwrap_or("");
    if ctx.facts.assets.is_empty() || ctx.facts.assets.iter().any(|(n, _)| n == name) {
        return Vec::new();
    }
    let names = ctx.facts.assets.iter().map(|(n, _)| n.as_str());
    vec![Finding::new(format!("`{name}` is not a pinned asset"), Some(p.location)).help(suggest(name, names))]
}

fn model_asset(ctx: &RuleContext) -> Vec<Finding> {
    unknown_asset(ctx, "model.path")
}
lora_core::rule! {
    id: "model::asset-unknown", category: Model, severity: Error,
    summary: "The model path names an asset that is not pinned.",
    doc: "`asset:NAME` refers to the pinned assets (`cargo xtask fetch --list`); nothing is downloaded from a model hub.",
    trip: [Set("model.path=\"asset:all-minilm-l6\"")], check: model_asset,
}

fn model_dir<'a>(ctx: &RuleContext<'a>) -> Option<(&'a std::path::Path, lora_core::diag::Location)> {
    let at = ctx.location("model.path")?;
    if !bert(ctx) {
        return None;
    }
    Some((ctx.facts.path("model.path")?, at))
}

fn path_missing(ctx: &RuleContext) -> Vec<Finding> {
    match model_dir(ctx) {
        Some((dir, at)) if !dir.exists() => one(format!("model folder {} does not exist", dir.display()), Some(at)),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::path-missing", category: Model, severity: Error,
    summary: "The model folder does not exist.",
    doc: "`path` names a folder with config.json, model.safetensors and tokenizer.json.",
    trip: [Set("model.path=\"{fixtures}/no-such-model\"")], check: path_missing,
}

fn path_is_file(ctx: &RuleContext) -> Vec<Finding> {
    match model_dir(ctx) {
        Some((dir, at)) if dir.is_file() => one(
            format!("model path {} is a file; it must be the model's folder", dir.display()),
            Some(at),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::path-is-file", category: Model, severity: Error,
    summary: "The model path is a file, not a folder.",
    doc: "Name the folder that holds config.json and model.safetensors, not one of the files.",
    trip: [Set("model.path=\"asset:all-minilm-l6-v2/config.json\"")], check: path_is_file,
}

fn config_missing(ctx: &RuleContext) -> Vec<Finding> {
    match model_dir(ctx) {
        Some((dir, at)) if dir.is_dir() && !dir.join("config.json").is_file() => {
            one(format!("{} has no config.json", dir.display()), Some(at))
        }
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::config-missing", category: Model, severity: Error,
    summary: "The model folder has no config.json.",
    doc: "The architecture (hidden size, layers, heads, vocabulary) is read from Hugging Face's config.json.",
    trip: [Set("model.path=\"{fixtures}/models/empty\"")], check: config_missing,
}

fn weights_missing(ctx: &RuleContext) -> Vec<Finding> {
    match model_dir(ctx) {
        Some((dir, at)) if dir.join("config.json").is_file() && !dir.join("model.safetensors").is_file() => {
            one(format!("{} has no model.safetensors", dir.display()), Some(at))
        }
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::weights-missing", category: Model, severity: Error,
    summary: "The model folder has no model.safetensors.",
    doc: "Weights are read from safetensors only (no pickle). Convert a pytorch_model.bin with `safetensors.torch.save_file`.",
    trip: [Set("model.path=\"{fixtures}/models/config-only\"")], check: weights_missing,
}

fn files_present(ctx: &RuleContext) -> bool {
    model_dir(ctx).is_some_and(|(d, _)| d.join("config.json").is_file() && d.join("model.safetensors").is_file())
}

fn weights_truncated(ctx: &RuleContext) -> Vec<Finding> {
    match &ctx.facts.model_error {
        Some(e) if files_present(ctx) && e.contains("truncated") => one(e.clone(), ctx.location("model.path"))
            .into_iter()
            .map(|f| f.help("the download was probably interrupted; fetch it again"))
            .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::weights-truncated", category: Model, severity: Error,
    summary: "The weight file is shorter than its header says.",
    doc: "A safetensors header lists every tensor's byte range; a shorter file is an interrupted download or copy.",
    trip: [Set("model.path=\"{fixtures}/models/truncated\"")], check: weights_truncated,
}

fn weights_invalid(ctx: &RuleContext) -> Vec<Finding> {
    match &ctx.facts.model_error {
        Some(e) if files_present(ctx) && !e.contains("truncated") => one(e.clone(), ctx.location("model.path")),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::weights-invalid", category: Model, severity: Error,
    summary: "config.json or the safetensors header cannot be read.",
    doc: "The files exist but are not what they claim: not JSON, or not a safetensors header.",
    trip: [Set("model.path=\"{fixtures}/models/garbage\"")], check: weights_invalid,
}

fn inconsistent(ctx: &RuleContext) -> Vec<Finding> {
    let Some(m) = facts(ctx) else { return Vec::new() };
    m.inconsistencies
        .iter()
        .map(|(field, config, header)| {
            Finding::new(
                format!("config.json says {field} = {config}, but the weight file has {header}"),
                ctx.location("model.path"),
            )
            .help("config.json and model.safetensors come from different checkpoints")
        })
        .collect()
}
lora_core::rule! {
    id: "model::config-inconsistent", category: Model, severity: Error,
    summary: "config.json disagrees with the weight file's shapes.",
    doc: "Vocabulary, hidden size, positions and layer count are compared between config.json and the header; a mismatch means files from two checkpoints.",
    trip: [Set("model.path=\"{fixtures}/models/mismatched\"")], check: inconsistent,
}

fn activation(ctx: &RuleContext) -> Vec<Finding> {
    match facts(ctx) {
        Some(m) if bert(ctx) && m.activation != "gelu" => one(
            format!(
                "hidden_act `{}` is not supported; only `gelu` (the exact erf form)",
                m.activation
            ),
            ctx.location("model.path"),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::activation-unsupported", category: Model, severity: Error,
    summary: "The checkpoint uses an activation the BERT model does not implement.",
    doc: "Both backends implement BERT's exact GELU; a checkpoint trained with another activation would give wrong outputs.",
    trip: [Set("model.path=\"{fixtures}/models/relu\"")], check: activation,
}

fn base_dropout(ctx: &RuleContext) -> Vec<Finding> {
    let Some(m) = facts(ctx).filter(|_| bert(ctx) && ctx.bool("model.base-dropout") != Some(false)) else {
        return Vec::new();
    };
    m.base_dropout
        .iter()
        .filter(|(_, p)| !(0.0..1.0).contains(p))
        .map(|(name, p)| {
            Finding::new(
                format!("config.json's {name} ({p}) is out of range. Valid range: 0 <= {name} < 1"),
                ctx.location("model.path"),
            )
            .help("fix the checkpoint's config.json, or turn the base's dropout off with `base-dropout = false`")
        })
        .collect()
}
lora_core::rule! {
    id: "model::base-dropout-range", category: Model, severity: Error,
    summary: "The checkpoint's own hidden or attention dropout probability is outside [0, 1).",
    doc: "With `base-dropout = true` (the default, as Hugging Face trains) the model applies config.json's hidden_dropout_prob and attention_probs_dropout_prob in training; a probability of 1 or more drops everything.",
    trip: [Set("model.path=\"{fixtures}/models/bad-dropout\"")], check: base_dropout,
}

fn heads(ctx: &RuleContext) -> Vec<Finding> {
    match facts(ctx) {
        Some(m) if bert(ctx) && (m.num_heads == 0 || !m.hidden_size.is_multiple_of(m.num_heads)) => one(
            format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                m.hidden_size, m.num_heads
            ),
            ctx.location("model.path"),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::heads-not-divisor", category: Model, severity: Error,
    summary: "The hidden size is not divisible by the number of heads.",
    doc: "Each attention head takes hidden_size / heads features; the config.json is corrupt or edited.",
    trip: [Set("model.path=\"{fixtures}/models/odd-heads\"")], check: heads,
}

const LLAMA_NAMES: [(&str, &str); 7] = [
    ("q_proj", "query"),
    ("k_proj", "key"),
    ("v_proj", "value"),
    ("o_proj", "attention.output.dense"),
    ("up_proj", "intermediate.dense"),
    ("gate_proj", "intermediate.dense"),
    ("down_proj", "output.dense"),
];

fn is_path_like(name: &str) -> bool {
    name.contains("layer.")
        || name.starts_with("encoder.")
        || name.starts_with("bert.")
        || name.starts_with("attention.self.")
}

fn valid_targets() -> impl Iterator<Item = &'static str> + Clone {
    TARGETS.iter().map(|t| t.0)
}

fn unknown_target(ctx: &RuleContext) -> Vec<Finding> {
    let Some(t) = ctx.strings("lora.target-modules").filter(|_| bert(ctx)) else {
        return Vec::new();
    };
    t.value
        .iter()
        .filter(|n| !valid_targets().any(|v| v == **n))
        .filter(|n| !LLAMA_NAMES.iter().any(|(l, _)| l == *n) && !is_path_like(n))
        .map(|n| {
            Finding::new(
                format!("unknown target module `{n}` for a BERT encoder"),
                Some(t.location.clone()),
            )
            .help(suggest(n, valid_targets()))
        })
        .collect()
}
lora_core::rule! {
    id: "lora::unknown-target-module", category: Model, severity: Error,
    summary: "A target module does not exist in the model.",
    doc: "A misspelt module would silently train nothing in many tools; here it is an error with the closest valid name.",
    trip: [Set("lora.target-modules=[\"query\", \"valu\"]")], check: unknown_target,
}

fn llama_names(ctx: &RuleContext) -> Vec<Finding> {
    let Some(t) = ctx.strings("lora.target-modules").filter(|_| bert(ctx)) else {
        return Vec::new();
    };
    t.value
        .iter()
        .filter_map(|n| LLAMA_NAMES.iter().find(|(l, _)| l == n))
        .map(|(l, bert_name)| {
            Finding::new(
                format!("`{l}` is a LLaMA-style module name; BERT calls it `{bert_name}`"),
                Some(t.location.clone()),
            )
            .help(format!("write `{bert_name}`"))
        })
        .collect()
}
lora_core::rule! {
    id: "lora::target-llama-names", category: Model, severity: Error,
    summary: "LLaMA module names (q_proj, v_proj, ...) used on a BERT model.",
    doc: "Configurations copied from decoder fine-tuning name q_proj/v_proj; BERT's projections are query/key/value.",
    trip: [Set("lora.target-modules=[\"q_proj\", \"v_proj\"]")], check: llama_names,
}

fn target_is_path(ctx: &RuleContext) -> Vec<Finding> {
    let Some(t) = ctx.strings("lora.target-modules").filter(|_| bert(ctx)) else {
        return Vec::new();
    };
    t.value
        .iter()
        .filter(|n| is_path_like(n))
        .map(|n| {
            let last = TARGETS.iter().find(|(_, path, _)| n.ends_with(path)).map(|t| t.0);
            let f = Finding::new(
                format!("`{n}` is a module path; target-modules takes module names, applied to every layer"),
                Some(t.location.clone()),
            );
            match last {
                Some(name) => f.help(format!("write `{name}`")),
                None => f.help(suggest(n, valid_targets())),
            }
        })
        .collect()
}
lora_core::rule! {
    id: "lora::target-is-path", category: Model, severity: Error,
    summary: "A target module is written as a full path.",
    doc: "Names such as `query` apply to every layer; a path like `encoder.layer.0.attention.self.query` is not a module name.",
    trip: [Set("lora.target-modules=[\"attention.self.query\"]")], check: target_is_path,
}

fn rank_exceeds_hidden(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(r)) = (facts(ctx), ctx.int("lora.r")) else {
        return Vec::new();
    };
    if m.hidden_size > 0 && r.value as usize > m.hidden_size {
        return one(
            format!(
                "Rank value ({}) exceeds base model's hidden_size ({}). Valid range: 1 <= rank <= {}",
                r.value, m.hidden_size, m.hidden_size
            ),
            Some(r.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "lora::rank-exceeds-hidden", category: Model, severity: Error,
    summary: "The rank exceeds the model's hidden size.",
    doc: "B A has rank at most min(in, out); a larger r adds parameters that cannot add expressiveness, and is usually a typo.",
    trip: [Set("lora.r=512")], check: rank_exceeds_hidden,
}

/// The entries of a `[lora]` pattern table (`rank-pattern`, `alpha-pattern`).
fn pattern_entries<'a>(ctx: &RuleContext<'a>, table: &str) -> Vec<(&'a str, &'a Node)> {
    ctx.node(&format!("lora.{table}"))
        .and_then(Node::as_table)
        .map(|t| t.iter().map(|(k, n)| (k.as_str(), n)).collect())
        .unwrap_or_default()
}

/// The module name PEFT matches patterns against, from a header tensor name.
fn module_path(tensor: &str) -> String {
    let m = tensor.strip_suffix(".weight").unwrap_or(tensor);
    if m.starts_with("bert.") {
        m.to_string()
    } else {
        format!("bert.{m}")
    }
}

/// The rank of the module holding `tensor` and where it was written: the
/// longest `rank-pattern` key that names it (as the model resolves it), else `r`.
fn rank_of(ctx: &RuleContext, r: &At<i64>, tensor: &str) -> (i64, Location) {
    let path = module_path(tensor);
    pattern_entries(ctx, "rank-pattern")
        .into_iter()
        .filter_map(|(k, n)| Some((k, n.as_int()?, n)))
        .filter(|(k, _, _)| pattern_matches(k, &path))
        .max_by_key(|(k, _, _)| k.len())
        .map_or((r.value, r.location.clone()), |(_, v, n)| (v, n.location.clone()))
}

fn rank_exceeds_layer(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(r), Some(t)) = (facts(ctx), ctx.int("lora.r"), ctx.strings("lora.target-modules")) else {
        return Vec::new();
    };
    // Above the hidden size, rank-exceeds-hidden already speaks for `r`.
    let r_said = r.value.max(0) as usize > m.hidden_size;
    let mut out = Vec::new();
    for name in &t.value {
        let Some(layers) = m.targets.get(*name) else { continue };
        // One finding per module name and place the rank was written.
        let mut said: Vec<usize> = Vec::new();
        for (tensor, i, o) in layers {
            let (rank, at) = rank_of(ctx, &r, tensor);
            let limit = (*i).min(*o);
            let from_r = at.span.start == r.location.span.start;
            if rank.max(0) as usize <= limit || (from_r && r_said) || said.contains(&at.span.start) {
                continue;
            }
            said.push(at.span.start);
            out.push(Finding::new(
                format!(
                    "Rank value ({rank}) exceeds min(in, out) = {limit} of `{name}` ({tensor}: {i} -> {o}). Valid range: 1 <= rank <= {limit}"
                ),
                Some(at),
            ));
        }
    }
    out
}
lora_core::rule! {
    id: "lora::rank-exceeds-layer", category: Model, severity: Error,
    summary: "The rank exceeds min(in, out) of a targeted layer.",
    doc: "Each targeted linear is checked from the header's shapes: a rank above the smaller side cannot be used.",
    trip: [Set("model.path=\"{fixtures}/models/narrow-ffn\""), Set("lora.r=6"), Set("lora.target-modules=[\"intermediate.dense\"]")],
    check: rank_exceeds_layer,
}

fn tensor_missing(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(t)) = (facts(ctx), ctx.strings("lora.target-modules")) else {
        return Vec::new();
    };
    t.value
        .iter()
        .filter(|n| m.targets.get(**n).is_some_and(Vec::is_empty))
        .map(|n| {
            Finding::new(
                format!("the weight file has no `{n}` weights in any layer"),
                Some(t.location.clone()),
            )
            .help("the checkpoint is not a BERT encoder, or uses other tensor names")
        })
        .collect()
}
lora_core::rule! {
    id: "model::tensor-missing", category: Model, severity: Error,
    summary: "A targeted module has no weights in the checkpoint.",
    doc: "The header lacks `encoder.layer.N.<module>.weight`; the checkpoint has another architecture or naming.",
    trip: [Set("model.path=\"{fixtures}/models/narrow-ffn\""), Set("lora.r=2")], check: tensor_missing,
}

fn trainable_share(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(r), Some(t)) = (facts(ctx), ctx.int("lora.r"), ctx.strings("lora.target-modules")) else {
        return Vec::new();
    };
    let lora: usize = t
        .value
        .iter()
        .filter_map(|n| m.targets.get(*n))
        .flatten()
        .map(|(tensor, i, o)| rank_of(ctx, &r, tensor).0.max(0) as usize * (i + o))
        .sum();
    if m.parameters > 0 && lora * 2 > m.parameters {
        return one(
            format!(
                "the adapter has {lora} parameters, {:.0}% of the base's {}: LoRA no longer saves anything",
                100.0 * lora as f64 / m.parameters as f64,
                m.parameters
            ),
            Some(t.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "lora::trainable-share-high", category: Model, severity: Warning,
    summary: "The adapter is more than half the size of the base.",
    doc: "LoRA's point is a small trainable set; at this size full fine-tuning costs the same.",
    trip: [Set("lora.r=384"), Set("lora.target-modules=[\"query\", \"key\", \"value\", \"attention.output.dense\", \"intermediate.dense\", \"output.dense\"]")],
    check: trainable_share,
}

fn pattern_unmatched(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(t)) = (facts(ctx), ctx.strings("lora.target-modules")) else {
        return Vec::new();
    };
    let modules: Vec<String> = t
        .value
        .iter()
        .filter_map(|n| m.targets.get(*n))
        .flatten()
        .map(|(tensor, _, _)| module_path(tensor))
        .collect();
    let mut out = Vec::new();
    for table in ["rank-pattern", "alpha-pattern"] {
        for (key, node) in pattern_entries(ctx, table) {
            if !modules.iter().any(|p| pattern_matches(key, p)) {
                out.push(
                    Finding::new(
                        format!("{table} key `{key}` names no module LoRA is inserted in"),
                        Some(node.location.clone()),
                    )
                    .help(format!(
                        "a key is the end of a module's full name (`query`, `layer.0.attention.self.query`) among target-modules; {}",
                        suggest(key.rsplit('.').next().unwrap_or(key), t.value.iter().copied())
                    )),
                );
            }
        }
    }
    out
}
lora_core::rule! {
    id: "lora::pattern-unmatched", category: Model, severity: Error,
    summary: "A rank-pattern or alpha-pattern key names no targeted module.",
    doc: "Keys are the end of a module's full name after a dot, as PEFT matches them; a key that names nothing leaves every module at `r` and `alpha`, which is almost always a typo.",
    trip: [Set("lora.rank-pattern={ querry = 4 }")], check: pattern_unmatched,
}

fn max_length_positions(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(l)) = (facts(ctx), ctx.int("data.max-length")) else {
        return Vec::new();
    };
    if text_data(ctx) && m.max_positions > 0 && l.value as usize > m.max_positions {
        return one(
            format!(
                "max-length ({}) exceeds the model's max_position_embeddings ({}). Valid range: 3 <= max-length <= {}",
                l.value, m.max_positions, m.max_positions
            ),
            Some(l.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::max-length-exceeds-positions", category: Model, severity: Error,
    summary: "max-length exceeds the model's position table.",
    doc: "Positions past max_position_embeddings have no embedding; the model would index out of range.",
    trip: [Set("data.max-length=1024")], check: max_length_positions,
}

fn vocab_exceeds(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(d)) = (facts(ctx), ctx.facts.data.as_ref()) else {
        return Vec::new();
    };
    match d.tokenizer_vocab {
        Some(v) if m.vocab_size > 0 && v > m.vocab_size => one(
            format!(
                "the tokenizer has {v} tokens but the model's embedding has {} rows: ids >= {} have no embedding",
                m.vocab_size, m.vocab_size
            ),
            ctx.location("data.tokenizer").or_else(|| ctx.location("model.path")),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::tokenizer-vocab-exceeds-embeddings", category: Model, severity: Error,
    summary: "The tokenizer's vocabulary is larger than the model's embedding table.",
    doc: "The tokenizer belongs to another model: some token ids would index past the embedding rows.",
    trip: [Set("model.path=\"{fixtures}/models/narrow-ffn\""), Set("data.tokenizer=\"asset:all-minilm-l6-v2/tokenizer.json\"")],
    check: vocab_exceeds,
}

fn vocab_smaller(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(m), Some(d)) = (facts(ctx), ctx.facts.data.as_ref()) else {
        return Vec::new();
    };
    match d.tokenizer_vocab {
        Some(v) if v < m.vocab_size => one(
            format!(
                "the tokenizer has {v} tokens but the model's embedding has {} rows: probably another model's tokenizer",
                m.vocab_size
            ),
            ctx.location("data.tokenizer").or_else(|| ctx.location("model.path")),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::tokenizer-vocab-smaller", category: Model, severity: Warning,
    summary: "The tokenizer's vocabulary is smaller than the model's embedding table.",
    doc: "Not out of range, but token ids then mean other words than the model learned.",
    trip: [Set("data.tokenizer=\"{fixtures}/tiny-tokenizer.json\"")], check: vocab_smaller,
}

fn no_tokenizer(ctx: &RuleContext) -> Vec<Finding> {
    let Some(d) = ctx.facts.data.as_ref() else {
        return Vec::new();
    };
    if ctx.node("data.tokenizer").is_some() {
        return Vec::new();
    }
    match (&d.tokenizer_error, facts(ctx)) {
        (Some(_), Some(m)) if !m.has_tokenizer => one(
            "the model has no tokenizer.json and [data] names none",
            ctx.location("data"),
        )
        .into_iter()
        .map(|f| f.help("set tokenizer = \"path/to/tokenizer.json\" in [data]"))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "data::no-tokenizer", category: Model, severity: Error,
    summary: "Neither the model nor the data names a tokenizer.",
    doc: "Text is tokenized with the model folder's tokenizer.json unless [data] tokenizer names one.",
    trip: [Set("model.path=\"{fixtures}/models/narrow-ffn\"")], check: no_tokenizer,
}

fn num_labels_mismatch(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(n), Some(d)) = (ctx.int("model.num-labels"), ctx.facts.data.as_ref()) else {
        return Vec::new();
    };
    let labels = d.label_names.len();
    if bert(ctx) && labels > 0 && n.value as usize != labels && n.value >= 2 {
        return one(
            format!(
                "num-labels ({}) differs from the data's {labels} labels ({})",
                n.value,
                d.label_names.join(", ")
            ),
            Some(n.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "model::num-labels-mismatch", category: Model, severity: Error,
    summary: "The head size differs from the number of labels.",
    doc: "The classification head has one output per class; a head of another size cannot be trained on these labels.",
    trip: [Set("model.num-labels=5")], check: num_labels_mismatch,
}

fn base_name_not_portable(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("model.path") {
        Some(p) if bert(ctx) && ctx.node("model.base-model-name").is_none() && p.value.starts_with("asset:") => one(
            "base-model-name is not set: adapter_config.json will record this machine's cache path",
            ctx.location("model"),
        )
        .into_iter()
        .map(|f| f.help("set base-model-name to the hub id, for example \"sentence-transformers/all-MiniLM-L6-v2\""))
        .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::base-model-name-not-portable", category: Model, severity: Warning,
    summary: "The adapter would name a local cache path as its base.",
    doc: "PEFT loads the base named in adapter_config.json; a path under this machine's cache does not exist elsewhere.",
    trip: [Replace("base-model-name = \"sentence-transformers/all-MiniLM-L6-v2\"\n", "")], check: base_name_not_portable,
}

fn base_name_unresolvable(ctx: &RuleContext) -> Vec<Finding> {
    match ctx.string("model.base-model-name") {
        Some(n)
            if bert(ctx)
                && !n.value.trim().is_empty()
                && !n.value.contains('/')
                && !std::path::Path::new(n.value).exists() =>
        {
            one(
                format!(
                    "base-model-name {:?} is neither a hub id (org/name) nor an existing path",
                    n.value
                ),
                Some(n.location),
            )
        }
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "model::base-model-name-unresolvable", category: Model, severity: Warning,
    summary: "base-model-name is neither a hub id nor a path.",
    doc: "Python tools resolve `base_model_name_or_path` as a hub id (`org/name`) or a local folder; a bare name finds neither.",
    trip: [Set("model.base-model-name=\"minilm\"")], check: base_name_unresolvable,
}
