//! Structural rules: the loader reports these itself (syntax, keys, types,
//! layering); they are registered so that `lora rules` and `docs/RULES.md`
//! document every diagnostic code, and so that each is tested like any rule.

use lora_core::rules::Edit::{Env, Replace, Set};

lora_core::rule! {
    id: "config::syntax", category: Structure, severity: Error,
    summary: "The file is not valid TOML.",
    doc: "An unclosed bracket or quote, a missing `=`: toml's message and the exact spot.",
    trip: [Replace("[run]", "[run")], check: loader,
}
lora_core::rule! {
    id: "config::duplicate-key", category: Structure, severity: Error,
    summary: "A key is written twice in one table.",
    doc: "TOML forbids it; with layering, override the value in an upper layer instead. The message names the key by its full dotted path and the line where it was first set.",
    trip: [Replace("seed = 42", "seed = 42\nseed = 43")], check: loader,
}
lora_core::rule! {
    id: "config::unknown-section", category: Structure, severity: Error,
    summary: "A top-level table that the pipeline does not have.",
    doc: "Sections are run, data, model, lora, train and eval (and those that plugins add); the closest is suggested.",
    trip: [Set("trian.epochs=1")], check: loader,
}
lora_core::rule! {
    id: "config::unknown-key", category: Structure, severity: Error,
    summary: "A key that the table's schema does not have.",
    doc: "Every table denies unknown keys, so a typo never silently falls back to a default; the closest key is suggested.",
    trip: [Set("train.epoch=1")], check: loader,
}
lora_core::rule! {
    id: "config::wrong-type", category: Structure, severity: Error,
    summary: "A value of the wrong type.",
    doc: "For example a quoted number (`batch-size = \"32\"`) or a string where a list is expected.",
    trip: [Set("train.batch-size=\"32\"")], check: loader,
}
lora_core::rule! {
    id: "config::missing-key", category: Structure, severity: Error,
    summary: "A required key is missing.",
    doc: "Keys without a default (run name, data path, LoRA rank, ...) must be written.",
    trip: [Replace("name = \"sentiment-minilm\"\n", "")], check: loader,
}
lora_core::rule! {
    id: "config::missing-section", category: Structure, severity: Error,
    summary: "A required section is missing.",
    doc: "Every pipeline has run, data, model, lora, train and eval.",
    trip: [Replace("[lora]", "[lora-x]")], check: loader,
}
lora_core::rule! {
    id: "config::missing-type", category: Structure, severity: Error,
    summary: "A pluggable table has no `type`.",
    doc: "data and model name their component with `type`; train and eval default to supervised and classification.",
    trip: [Replace("type = \"csv\"\n", "")], check: loader,
}
lora_core::rule! {
    id: "config::unknown-type", category: Structure, severity: Error,
    summary: "A `type` that no registered component has.",
    doc: "`lora list` shows every registered component; the closest name is suggested.",
    trip: [Set("train.optimizer.type=\"adam\"")], check: loader,
}
lora_core::rule! {
    id: "config::invalid-value", category: Structure, severity: Error,
    summary: "A value outside a key's allowed set.",
    doc: "For example an unknown enum variant (`on-unknown-label = \"ignore\"`) or a negative count.",
    trip: [Set("data.on-unknown-label=\"ignore\"")], check: loader,
}
lora_core::rule! {
    id: "config::extends-cycle", category: Structure, severity: Error,
    summary: "Files extend each other in a cycle.",
    doc: "`extends` layers are applied bases first; a cycle has no first.",
    trip: [Replace("[run]", "extends = [\"{fixtures}/cycle-a.toml\"]\n\n[run]")], check: loader,
}
lora_core::rule! {
    id: "config::extends-missing", category: Structure, severity: Error,
    summary: "A base file named in `extends` cannot be read.",
    doc: "Paths in `extends` are relative to the file that names them.",
    trip: [Replace("[run]", "extends = [\"{fixtures}/no-such-base.toml\"]\n\n[run]")], check: loader,
}
lora_core::rule! {
    id: "config::extends-type", category: Structure, severity: Error,
    summary: "`extends` is not a list of paths.",
    doc: "Write `extends = [\"base.toml\"]` (a single string is accepted too).",
    trip: [Replace("[run]", "extends = 3\n\n[run]")], check: loader,
}
lora_core::rule! {
    id: "config::override-syntax", category: Structure, severity: Error,
    summary: "An override does not name a key.",
    doc: "`--set section.key=value`, `LORA__SECTION__KEY=value` (double underscores between levels, single ones become dashes).",
    trip: [Env("LORA__TRAIN", "1")], check: loader,
}
lora_core::rule! {
    id: "config::override-conflict", category: Structure, severity: Warning,
    summary: "OVERRIDE_LR and LORA__TRAIN__OPTIMIZER__LR both set the learning rate.",
    doc: "OVERRIDE_LR is applied last and wins; one of them is stale.",
    trip: [Env("OVERRIDE_LR", "1e-3"), Env("LORA__TRAIN__OPTIMIZER__LR", "2e-3")], check: loader,
}
lora_core::rule! {
    id: "plugin::load-failed", category: Structure, severity: Error,
    summary: "A plugin library named in [plugins] cannot be loaded.",
    doc: "A missing file, a library without the plugin declaration, an interface version or compiler mismatch, or a panic while registering; every plugin's problem is reported together, and nothing of a failed plugin is used.",
    trip: [Set("plugins.paths=[\"{fixtures}/no-such-plugin.so\"]")], check: loader,
}
lora_core::rule! {
    id: "eval::unknown-metric", category: Structure, severity: Error,
    summary: "`[eval] metrics` names a metric that is not registered.",
    doc: "Metrics are registered by name (`lora plugins` lists them: accuracy, macro_f1, weighted_f1, balanced_accuracy, macro_precision, mcc); the closest name is suggested.",
    trip: [Set("eval.metrics=[\"acuracy\"]")], check: loader,
}
lora_core::rule! {
    id: "config::env-near-miss", category: Structure, severity: Warning,
    summary: "An environment variable looks like an override but is not read.",
    doc: "Overrides are `LORA__SECTION__KEY` in capitals, with double underscores between levels (and `OVERRIDE_LR`); `LORA_TRAIN_BATCH_SIZE` or `lora__train__batch_size` would otherwise be ignored without a word. The right spelling is suggested.",
    trip: [Env("LORA_TRAIN_BATCH_SIZE", "16")], check: loader,
}
