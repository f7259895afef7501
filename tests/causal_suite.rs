//! Checks of the causal language model, written once and run per backend.

use std::path::{Path, PathBuf};

use lora_core::AdapterModel;
use lora_core::config::PipelineConfig;
use lora_core::registry::build_model;
use lora_core::stage::{AssetResolver, StageContext};
use lora_core::{Batch, LoraSpec, Task, TokenBatch};
use lora_data::chat_template::{ChatTokenizer, Message};

pub static ASSETS: lora_assets::CacheResolver = lora_assets::CacheResolver;

pub const GGUF: &str = "asset:smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn gguf() -> PathBuf {
    ASSETS.resolve(GGUF).expect("the SmolLM2 asset")
}

/// A pipeline whose `[model]` and `[lora]` tables are given.
fn pipeline(model: &str, lora: &str) -> PipelineConfig {
    let text = format!(
        "[run]\nname = \"t\"\noutput-dir = \"out\"\n\n[data]\ntype = \"chat\"\npath = \"d\"\n\n\
         [model]\n{model}\n\n[lora]\n{lora}\n\n[train]\n\n[eval]\n"
    );
    PipelineConfig::parse(Path::new("pipeline.toml"), text).expect("pipeline")
}

/// The base model on `backend`, with an adapter as `lora` (a TOML body) says.
pub fn model(backend: &str, lora: &str) -> (Box<dyn AdapterModel>, LoraSpec) {
    let cfg = pipeline(
        &format!("type = \"llama-causal-lm\"\npath = \"{}\"", gguf().display()),
        lora,
    );
    let stage = build_model(&cfg.model, backend).expect("model stage");
    let ctx = StageContext {
        seed: 7,
        assets: &ASSETS,
        tokenizer: None,
    };
    let m = stage
        .build(&ctx, &cfg.lora, &Task::CausalLm, &Default::default())
        .expect("model");
    (m, cfg.lora)
}

pub fn base(backend: &str) -> Box<dyn AdapterModel> {
    model(backend, "r = 1\nalpha = 1\ntarget-modules = []").0
}

/// Greedy decoding through the model's key/value cache, up to the end of turn.
pub fn greedy(m: &mut dyn AdapterModel, tok: &ChatTokenizer, prompt: &[u32], max: usize) -> Vec<u32> {
    let dec = m.decoder().expect("a decoder");
    dec.reset();
    let mut logits = dec.feed(prompt).expect("prompt");
    let mut out = Vec::new();
    for _ in 0..max {
        let next = lora_core::adapter::argmax(&logits) as u32;
        if next == tok.eos_id {
            break;
        }
        out.push(next);
        logits = dec.feed(&[next]).expect("token");
    }
    out
}

pub fn greedy_answer_is_paris(backend: &str) {
    let tok = ChatTokenizer::from_gguf(&gguf()).expect("tokenizer");
    let text = tok
        .render(&[Message::new("user", "What is the capital of France?")], true)
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let mut m = base(backend);
    let answer = tok.decode(&greedy(m.as_mut(), &tok, &prompt, 16)).unwrap();
    assert_eq!(answer, "The capital of France is Paris.", "{backend}");
}

pub const NLL_TEXT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time, there was a little girl who lived in a village near the forest.";

/// A one-sequence batch scoring every next token of `ids`.
pub fn scoring_batch(ids: &[u32]) -> Batch {
    let n = ids.len() - 1;
    Batch::Tokens(TokenBatch {
        batch_size: 1,
        seq_len: n,
        input_ids: ids[..n].to_vec(),
        attention_mask: vec![1; n],
        targets: ids[1..].to_vec(),
        weights: vec![1.0; n],
    })
}

pub fn nll_matches_the_golden_value(backend: &str) {
    let tok = ChatTokenizer::from_gguf(&gguf()).expect("tokenizer");
    let ids = tok.encode(NLL_TEXT).unwrap();
    let m = base(backend);
    let sums = m.eval_step(&scoring_batch(&ids)).unwrap();
    let nll = sums.loss_sum / sums.weight;
    eprintln!("{backend}: {} tokens, NLL {nll:.4}", ids.len());
    assert!((nll - 2.666).abs() <= 0.01 * 2.666, "{backend}: NLL {nll}");
}
