//! `lora bench --causal`: LoRA on SmolLM2-135M over its Q4_1 GGUF, one JSON
//! line per case: training tokens/s at batch x 256 tokens, greedy generation
//! tokens/s through the key/value cache, and peak RSS. Measures and reports;
//! asserts nothing.
//!
//! LoRA r=8, alpha=16 on every linear of every layer, dropout 0; real
//! conversations are not needed for speed: token ids are seeded random ones,
//! every position a target.

use std::path::Path;
use std::time::Instant;

use lora_core::config::PipelineConfig;
use lora_core::registry::build_model;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{Batch, Error, ModelOptions, Result, Task, TokenBatch};
use rand::Rng;

use crate::bench::{peak_rss, reset_peak_rss};

const MODEL: &str = r#"
[run]
name = "bench"
backend = "BACKEND"
output-dir = "unused"
[data]
type = "chat"
path = "unused"
[model]
type = "llama-causal-lm"
path = "asset:smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
[lora]
r = 8
alpha = 16
dropout = 0.0
target-modules = ["all-linear"]
[train.optimizer]
type = "adamw"
lr = 1e-3
[eval]
"#;

const SEQ_LEN: usize = 256;

fn random_batch(batch: usize, seq_len: usize, seed: u64) -> Batch {
    let mut r = lora_core::init::rng(seed);
    let n = batch * seq_len;
    let ids: Vec<u32> = (0..n + 1).map(|_| r.random_range(100..49_000)).collect();
    Batch::Tokens(TokenBatch {
        batch_size: batch,
        seq_len,
        input_ids: ids[..n].to_vec(),
        attention_mask: vec![1; n],
        targets: ids[1..].to_vec(),
        weights: vec![1.0; n],
    })
}

/// What to measure: the default cases (batch 1 and 4 at 256 tokens) or one
/// batch x length, with or without gradient checkpointing, then generation;
/// or generation alone (`generate_only`, so that a process's peak RSS is
/// generation's when `cargo xtask bench` compares it with PyTorch's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub warmup: usize,
    pub steps: usize,
    pub case: Option<(usize, usize)>,
    pub checkpointing: bool,
    pub generate_only: bool,
}

pub fn run(backend: &str, opts: Options, assets: &dyn AssetResolver) -> Result<Vec<serde_json::Value>> {
    let (warmup, steps) = (opts.warmup, opts.steps.max(1));
    let config = PipelineConfig::parse(Path::new("<bench>"), MODEL.replace("BACKEND", backend))?;
    let stage = build_model(&config.model, backend)?;
    let ctx = StageContext {
        seed: 0,
        assets,
        tokenizer: None,
    };
    let mut lines = Vec::new();
    reset_peak_rss();
    let options = ModelOptions {
        gradient_checkpointing: opts.checkpointing,
        ..Default::default()
    };
    let mut model = stage.build(&ctx, &config.lora, &Task::CausalLm, &options)?;
    let loaded_rss = peak_rss();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cases = match (opts.generate_only, opts.case) {
        (true, _) => vec![],
        (false, Some(c)) => vec![c],
        (false, None) => vec![(1, SEQ_LEN), (4, SEQ_LEN)],
    };
    for (batch, seq_len) in cases {
        reset_peak_rss();
        let mut times = Vec::with_capacity(steps);
        for i in 0..warmup + steps {
            let b = random_batch(batch, seq_len, i as u64);
            let t = Instant::now();
            model.train_step(&b, i as u64)?;
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let line = serde_json::json!({
            "backend": model.backend(),
            "case": format!("train batch {batch} x {seq_len} tokens"),
            "checkpointing": opts.checkpointing,
            "median_step_s": median,
            "tokens_per_s": (batch * seq_len) as f64 / median,
            "peak_rss_mib": peak_rss().map(|b| b as f64 / 1048576.0),
            "rss_after_load_mib": loaded_rss.map(|b| b as f64 / 1048576.0),
            "threads": threads,
        });
        println!("{line}");
        lines.push(line);
    }
    let dec = model
        .decoder()
        .ok_or_else(|| Error::Other("the model does not decode".into()))?;
    let prompt: Vec<u32> = (0..32).map(|i| 100 + i * 7).collect();
    let new_tokens = 48;
    reset_peak_rss();
    dec.reset();
    let t = Instant::now();
    let mut logits = dec.feed(&prompt)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let next = lora_core::adapter::argmax(&logits) as u32;
        logits = dec.feed(&[next])?;
    }
    let decode = t.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "backend": model.backend(),
        "case": format!("generate {new_tokens} tokens after a {}-token prompt (greedy, KV cache)", prompt.len()),
        "prefill_s": prefill,
        "s_per_token": decode / new_tokens as f64,
        "tokens_per_s": new_tokens as f64 / decode,
        "rss_after_load_mib": loaded_rss.map(|b| b as f64 / 1048576.0),
        "peak_rss_mib": peak_rss().map(|b| b as f64 / 1048576.0),
        "threads": threads,
    });
    println!("{line}");
    lines.push(line);
    Ok(lines)
}
