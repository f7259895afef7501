//! Times `train_step` and `predict` of the burn backend on the real MiniLM.
//!
//! `cargo run --release -p lora-backend-burn --example step_time [-- BATCH SEQ STEPS]`
//! (defaults 32 64 5). Random token ids, LoRA r=8 on query and value, dropout 0.1.

use std::path::PathBuf;
use std::time::Instant;

use lora_backend_burn::BertClassifier;
use lora_backend_burn::bert::BertConfig;
use lora_backend_burn::weights::SafetensorsWeights;
use lora_core::{AdapterModel, Batch, LoraSpec, TextBatch};

fn main() -> lora_core::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (b, t, steps) = (
        args.first().copied().unwrap_or(32),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(5),
    );
    let dir = PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/lora-scripts/assets/all-minilm-l6-v2");
    let cfg = BertConfig::from_file(&dir.join("config.json"))?;
    let vocab = cfg.vocab_size as u64;
    let start = Instant::now();
    let weights = SafetensorsWeights::open(&dir.join("model.safetensors"))?;
    let lora = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.1,
        target_modules: vec!["query".into(), "value".into()],
        use_rslora: false,
        target_modules_location: None,
    };
    let mut model = BertClassifier::new(cfg, &weights, &lora, 2, 0.1, 42)?;
    println!("load: {:.3} s", start.elapsed().as_secs_f64());

    // A small LCG: random ids without another dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let input_ids: Vec<u32> = (0..b * t).map(|_| (1000 + next() % (vocab - 1000)) as u32).collect();
    let labels: Vec<u32> = (0..b).map(|_| (next() % 2) as u32).collect();
    let batch = Batch::Text(TextBatch {
        batch_size: b,
        seq_len: t,
        input_ids,
        attention_mask: vec![1; b * t],
        labels,
    });

    let mut times = Vec::new();
    for step in 0..=steps {
        let s = Instant::now();
        let out = model.train_step(&batch, step as u64)?;
        let dt = s.elapsed().as_secs_f64();
        println!("train_step {step}: {dt:.3} s (loss {:.4})", out.loss);
        if step > 0 {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "train_step median over {steps} (after 1 warm-up): {:.3} s at batch {b} x seq {t}",
        times[times.len() / 2]
    );

    let mut times = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        model.predict(&batch)?;
        times.push(s.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("predict median over 3: {:.3} s", times[1]);
    Ok(())
}
