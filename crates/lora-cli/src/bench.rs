//! `lora bench`: training-step speed and memory of LoRA on MiniLM-L6, one JSON
//! line per case. Measures and reports; asserts nothing.
//!
//! LoRA r=8, alpha=16, query and value, LoRA and head dropout 0, a 3-class
//! head; fp32 unless `--dtype` says otherwise; random token ids (seeded) with
//! full attention masks. By default the four cases of the PyTorch comparison
//! (`../shared/bench/peft_minilm.py`): training at 32 x 128 with BERT's own
//! hidden and attention dropout (0.1, as Hugging Face trains) and without,
//! training at 8 x 64 with it, and inference at 32 x 128. `--batch` and
//! `--seq-len` run one case instead (`--dropout` turns the base's dropout on),
//! `--checkpointing` recomputes the blocks in the backward pass (`cargo xtask
//! bench --memory` runs each variant in its own process, so that each peak RSS
//! is its own). `--inference` times `predict` instead.

use std::path::Path;
use std::time::Instant;

use lora_core::config::PipelineConfig;
use lora_core::registry::build_model;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{Batch, ModelOptions, Result, Task, TextBatch};
use rand::Rng;

pub(crate) const MODEL: &str = r#"
[run]
name = "bench"
backend = "BACKEND"
output-dir = "unused"
[data]
type = "csv"
path = "unused"
[model]
type = "bert-classifier"
path = "asset:all-minilm-l6-v2"
classifier-dropout = 0.0
base-dropout = false
[lora]
r = 8
alpha = 16
dropout = 0.0
target-modules = ["query", "value"]
[train.optimizer]
type = "adamw"
lr = 1e-3
[eval]
"#;

pub struct Case {
    pub batch: usize,
    pub seq_len: usize,
}

pub const CASES: [Case; 2] = [
    Case {
        batch: 32,
        seq_len: 128,
    },
    Case { batch: 8, seq_len: 64 },
];

/// The default runs, as (case, the base's dropout, inference): the cases of
/// the PyTorch comparison.
const DEFAULT_RUNS: [(Case, bool, bool); 4] = [
    (
        Case {
            batch: 32,
            seq_len: 128,
        },
        true,
        false,
    ),
    (
        Case {
            batch: 32,
            seq_len: 128,
        },
        false,
        false,
    ),
    (Case { batch: 8, seq_len: 64 }, true, false),
    (
        Case {
            batch: 32,
            seq_len: 128,
        },
        false,
        true,
    ),
];

/// Peak resident set size of this process in bytes (VmHWM).
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak so that each case reports its own (Linux: clear_refs 5).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) fn random_batch(case: &Case, vocab: u32, seed: u64) -> Batch {
    let mut r = lora_core::init::rng(seed);
    let n = case.batch * case.seq_len;
    // 101/102 are BERT's [CLS]/[SEP]; the rest are random ordinary tokens.
    let ids = (0..n)
        .map(|i| match i % case.seq_len {
            0 => 101,
            j if j == case.seq_len - 1 => 102,
            _ => r.random_range(1000..vocab),
        })
        .collect();
    Batch::Text(TextBatch {
        batch_size: case.batch,
        seq_len: case.seq_len,
        input_ids: ids,
        attention_mask: vec![1; n],
        labels: (0..case.batch).map(|i| (i % 3) as u32).collect(),
    })
}

/// What one `lora bench` measures.
pub struct Options {
    pub warmup: usize,
    pub steps: usize,
    /// One case instead of [`CASES`].
    pub case: Option<Case>,
    pub model: ModelOptions,
    /// Time `predict` (the forward pass in evaluation mode) instead of a training step.
    pub inference: bool,
    /// Train with BERT's own hidden and attention dropout (`[model] base-dropout`).
    pub dropout: bool,
}

pub fn run(backend: &str, opts: &Options, assets: &dyn AssetResolver) -> Result<Vec<serde_json::Value>> {
    let (warmup, steps) = (opts.warmup, opts.steps);
    let ctx = StageContext {
        seed: 0,
        assets,
        tokenizer: None,
    };
    let mut lines = Vec::new();
    let runs: Vec<(&Case, bool, bool)> = match &opts.case {
        Some(c) => vec![(c, opts.dropout, opts.inference)],
        None if opts.inference || opts.dropout => CASES.iter().map(|c| (c, opts.dropout, opts.inference)).collect(),
        None => DEFAULT_RUNS.iter().map(|(c, d, i)| (c, *d, *i)).collect(),
    };
    for (case, dropout, inference) in runs {
        let text = MODEL.replace("BACKEND", backend);
        let text = if dropout {
            text.replace("base-dropout = false", "base-dropout = true")
        } else {
            text
        };
        let config = PipelineConfig::parse(Path::new("<bench>"), text)?;
        let stage = build_model(&config.model, backend)?;
        let task = Task::classification(vec!["a".into(), "b".into(), "c".into()]);
        let mut model = stage.build(&ctx, &config.lora, &task, &opts.model)?;
        reset_peak_rss();
        let mut times = Vec::with_capacity(steps);
        for i in 0..warmup + steps {
            let batch = random_batch(case, 30522, i as u64);
            let t = Instant::now();
            if inference {
                model.predict(&batch)?;
            } else {
                model.train_step(&batch, i as u64)?;
            }
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let line = serde_json::json!({
            "backend": model.backend(),
            "case": format!("batch {} x length {}", case.batch, case.seq_len),
            "batch": case.batch,
            "seq_len": case.seq_len,
            "steps_measured": steps,
            "dtype": opts.model.dtype.name(),
            "gradient_checkpointing": opts.model.gradient_checkpointing,
            "mode": if inference { "inference" } else { "training" },
            "base_dropout": dropout && !inference,
            "median_step_s": median,
            "steps_per_s": 1.0 / median,
            "tokens_per_s": (case.batch * case.seq_len) as f64 / median,
            "peak_rss_mib": peak_rss().map(|b| b as f64 / (1024.0 * 1024.0)),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        });
        println!("{line}");
        lines.push(line);
    }
    Ok(lines)
}
