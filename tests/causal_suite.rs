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
    model_with(backend, lora, &Default::default())
}

pub fn model_with(backend: &str, lora: &str, options: &lora_core::ModelOptions) -> (Box<dyn AdapterModel>, LoraSpec) {
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
    let m = stage.build(&ctx, &cfg.lora, &Task::CausalLm, options).expect("model");
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

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A chat pipeline on the fixture conversations, with `edits` (`key = value` lines replacing the key's line).
pub fn chat_pipeline(backend: &str, out: &Path, edits: &[(&str, &str)]) -> String {
    let fixtures = repo().join("tests/validate");
    let mut text = format!(
        r#"[run]
name = "chat-test"
backend = "{backend}"
seed = 3
output-dir = "{out}"

[data]
type = "chat"
path = "{data}"
validation-path = "{data}"
max-length = 96
truncation = "error"

[model]
type = "llama-causal-lm"
path = "{GGUF}"

[lora]
r = 4
alpha = 8
target-modules = ["q_proj", "v_proj", "down_proj"]
layers-to-transform = [0, 1, 28, 29]

[train]
type = "supervised"
max-steps = 4
batch-size = 2

[train.optimizer]
type = "adamw"
lr = 5e-3

[eval]
type = "causal-lm"
batch-size = 4
"#,
        out = out.display(),
        data = fixtures.join("data/chat.jsonl").display(),
    );
    for (key, line) in edits {
        let start = text.find(&format!("\n{key} ")).map(|i| i + 1);
        match start {
            Some(s) => {
                let end = s + text[s..].find('\n').expect("line end");
                text.replace_range(s..end, line);
            }
            None => panic!("`{key}` is not in the chat pipeline"),
        }
    }
    text
}

fn run_text(text: String) -> lora_core::Result<lora_cli::pipeline::RunOutcome> {
    let composed = lora_validate::compose_text(Path::new("pipeline.toml"), text, &Default::default())?;
    let pipeline = lora_cli::validate::check_composed(composed, &ASSETS).into_pipeline()?;
    lora_cli::pipeline::run(pipeline, &ASSETS, true)
}

/// Broken models and chat files: exit code 2, the rule or check named, nothing written.
pub fn bad_inputs_exit_2_and_write_nothing(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let models = repo().join("tests/validate/models");
    let data = repo().join("tests/validate/data");
    let path = |p: PathBuf| format!("path = \"{}\"", p.display());
    let cases: [(&str, String, &str); 5] = [
        ("path", path(models.join("truncated.gguf")), "model::gguf-truncated"),
        (
            "path",
            path(models.join("gpt2-arch.gguf")),
            "architecture `gpt2` is not supported",
        ),
        ("path", path(models.join("q5k.gguf")), "quantization type Q5_K"),
        ("path", path(data.join("chat-bad-role.jsonl")), "data::unknown-role"),
        ("max-length", "max-length = 24".into(), "data::conversation-too-long"),
    ];
    for (i, (key, line, expected)) in cases.iter().enumerate() {
        let mut text = chat_pipeline(backend, &out, &[]);
        if i < 3 {
            // The model's `path`, not the data's.
            let at = text.find("[model]").unwrap();
            let s = at + text[at..].find("\npath ").unwrap() + 1;
            let e = s + text[s..].find('\n').unwrap();
            text.replace_range(s..e, line);
        } else if *key == "path" {
            text = text.replace(
                &format!("validation-path = \"{}\"", data.join("chat.jsonl").display()),
                "validation-fraction = 0.5",
            );
            let s = text.find("\npath ").unwrap() + 1;
            let e = s + text[s..].find('\n').unwrap();
            text.replace_range(s..e, line);
        } else {
            text = text.replace("max-length = 96", line);
        }
        let err = run_text(text).err().unwrap_or_else(|| panic!("case {i} must fail"));
        assert_eq!(err.exit_code(), 2, "case {i}: {err}");
        assert!(err.to_string().contains(expected), "case {i}: {err}");
        assert!(!out.exists(), "case {i}: output written before validation passed");
    }
}

/// A few steps on four conversations lower their loss; the adapter is PEFT's
/// `LlamaForCausalLM` layout and reloads to the same loss.
pub fn training_lowers_the_loss_and_saves_a_peft_adapter(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // One step at a negligible rate: the adapter's B starts at zero, so this is the base.
    let base_edits = [("lr", "lr = 1e-12"), ("max-steps", "max-steps = 1")];
    let base = run_text(chat_pipeline(backend, &out.with_extension("base"), &base_edits))
        .expect("base run")
        .final_eval;
    let trained = run_text(chat_pipeline(backend, &out, &[])).expect("run").final_eval;
    eprintln!(
        "{backend}: eval loss {:.4} -> {:.4}, perplexity {:.2} -> {:.2}, token accuracy {:.3} -> {:.3}",
        base.loss,
        trained.loss,
        base.metrics["perplexity"],
        trained.metrics["perplexity"],
        base.metrics["token_accuracy"],
        trained.metrics["token_accuracy"]
    );
    assert!(trained.loss < base.loss - 0.05, "{} -> {}", base.loss, trained.loss);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([0, 1, 28, 29]));
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names.len(), 4 * 3 * 2);
    assert!(names.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(names.contains(&"base_model.model.model.layers.29.mlp.down_proj.lora_B.weight".to_string()));
    let a = st
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
        .unwrap();
    let b = st
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
        .unwrap();
    assert_eq!((a.shape(), b.shape()), (&[4, 576][..], &[192, 4][..]));
    // Reloaded into a fresh model, the adapter gives the run's validation loss.
    let (mut fresh, _) = model(
        backend,
        "r = 4\nalpha = 8\ntarget-modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\nlayers-to-transform = [0, 1, 28, 29]",
    );
    lora_train::load_adapter(&out, fresh.as_mut()).unwrap();
    let loss = fixture_chat_loss(fresh.as_ref());
    assert!((loss - trained.loss).abs() < 1e-4, "{loss} vs {}", trained.loss);
}

/// Mean NLL of the assistant tokens of `tests/validate/data/chat.jsonl`, one
/// conversation at a time.
fn fixture_chat_loss(m: &dyn AdapterModel) -> f64 {
    let tok = ChatTokenizer::from_gguf(&gguf()).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/validate/data/chat.jsonl")).unwrap();
    let (mut loss, mut weight) = (0.0, 0.0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let messages: Vec<Message> = serde_json::from_value(v["messages"].clone()).unwrap();
        let seq = lora_data::chat::encode_chat(&tok, &messages, lora_data::chat::LossOn::Assistant).unwrap();
        let batch = Batch::Tokens(lora_data::chat::collate(&[&seq], tok.pad_id));
        let s = m.eval_step(&batch).unwrap();
        loss += s.loss_sum;
        weight += s.weight;
    }
    loss / weight
}

/// The fixture adapter (`lora run` on the chat fixture, 4 steps) gives the
/// held-out loss that transformers' `LlamaForCausalLM` from the same GGUF with
/// the adapter loaded by PEFT gave (tests/reference/llama_peft_transformers.py,
/// recorded in tests/fixtures/causal_peft/reference.json), within 1%; and the
/// base alone gives transformers' base loss.
pub fn peft_adapter_matches_transformers(backend: &str) {
    let dir = repo().join("tests/fixtures/causal_peft");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let (base_ref, adapter_ref) = (
        reference["base_loss"].as_f64().unwrap(),
        reference["adapter_loss"].as_f64().unwrap(),
    );
    // The check can tell the adapter from the base.
    assert!(base_ref - adapter_ref > 0.1 * base_ref, "{base_ref} vs {adapter_ref}");
    let (mut m, _) = model(
        backend,
        "r = 4\nalpha = 8\ntarget-modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\nlayers-to-transform = [0, 1, 28, 29]",
    );
    let base = fixture_chat_loss(m.as_ref());
    lora_train::load_adapter(&dir, m.as_mut()).unwrap();
    let adapted = fixture_chat_loss(m.as_ref());
    eprintln!(
        "{backend}: base {base:.6} (transformers {base_ref:.6}), adapter {adapted:.6} (transformers + PEFT {adapter_ref:.6})"
    );
    assert!((base - base_ref).abs() <= 0.01 * base_ref, "base {base} vs {base_ref}");
    assert!(
        (adapted - adapter_ref).abs() <= 0.01 * adapter_ref,
        "adapter {adapted} vs {adapter_ref}"
    );
}

/// The fixture conversations, tokenized (loss on the assistant's tokens).
fn fixture_sequences() -> (Vec<lora_data::chat::Sequence>, u32) {
    let tok = ChatTokenizer::from_gguf(&gguf()).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/validate/data/chat.jsonl")).unwrap();
    let seqs = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let messages: Vec<Message> = serde_json::from_value(v["messages"].clone()).unwrap();
            lora_data::chat::encode_chat(&tok, &messages, lora_data::chat::LossOn::Assistant).unwrap()
        })
        .collect();
    (seqs, tok.pad_id)
}

/// The fixture adapter on the model, so that the check covers LoRA's path too.
fn adapted(backend: &str, options: &lora_core::ModelOptions) -> Box<dyn AdapterModel> {
    let (mut m, _) = model_with(
        backend,
        "r = 4\nalpha = 8\ndropout = 0.1\ntarget-modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\nlayers-to-transform = [0, 1, 28, 29]",
        options,
    );
    lora_train::load_adapter(&repo().join("tests/fixtures/causal_peft"), m.as_mut()).unwrap();
    m
}

/// Four conversations packed into two rows (attention within each, positions
/// restarting) give each conversation the loss it gets alone in a padded
/// batch, within 1e-5: scored one conversation at a time by zeroing the
/// other conversations' target weights in the packed batch.
pub fn packed_rows_give_each_conversation_its_padded_loss(backend: &str) {
    let (seqs, pad) = fixture_sequences();
    let m = adapted(backend, &Default::default());
    let rows = vec![vec![&seqs[0], &seqs[1]], vec![&seqs[2], &seqs[3]]];
    let packed = lora_data::chat::collate_packed(&rows, pad);
    assert!(packed.attention_mask.contains(&2), "two conversations in a row");
    // Where each conversation's targets sit in the packed batch.
    let mut at = 0;
    for (r, row) in rows.iter().enumerate() {
        let mut offset = r * packed.seq_len;
        for s in row {
            let len = s.ids.len() - 1;
            let mut only = packed.clone();
            for (i, w) in only.weights.iter_mut().enumerate() {
                if !(offset..offset + len).contains(&i) {
                    *w = 0.0;
                }
            }
            let p = m.eval_step(&Batch::Tokens(only)).unwrap();
            // Padded: the conversation with a shorter one, so that it has padding.
            let other = &seqs[(at + 1) % seqs.len()];
            let mut padded = lora_data::chat::collate(&[s, other], pad);
            let t = padded.seq_len;
            padded.weights[t..].iter_mut().for_each(|w| *w = 0.0);
            let q = m.eval_step(&Batch::Tokens(padded)).unwrap();
            eprintln!(
                "{backend}: conversation {at}: packed {:.7} padded {:.7} over {} tokens",
                p.loss_sum / p.weight,
                q.loss_sum / q.weight,
                q.weight
            );
            assert_eq!(p.weight, q.weight);
            let (a, b) = (p.loss_sum / p.weight, q.loss_sum / q.weight);
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "conversation {at}: {a} vs {b}"
            );
            offset += len;
            at += 1;
        }
    }
}

/// A checkpointed training step (each layer recomputed in the backward pass)
/// gives the loss and gradients of the plain step, within 1e-6 relative, with
/// dropout on (the masks replayed) and on a packed batch.
pub fn checkpointed_step_matches_the_plain_one(backend: &str) {
    let (seqs, pad) = fixture_sequences();
    let batch = Batch::Tokens(lora_data::chat::collate_packed(
        &[vec![&seqs[0], &seqs[1]], vec![&seqs[2]]],
        pad,
    ));
    let mut plain = adapted(backend, &Default::default());
    let mut ckpt = adapted(
        backend,
        &lora_core::ModelOptions {
            gradient_checkpointing: true,
            ..Default::default()
        },
    );
    let a = plain.train_step(&batch, 11).unwrap();
    let b = ckpt.train_step(&batch, 11).unwrap();
    assert!(
        (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(),
        "{} vs {}",
        a.loss,
        b.loss
    );
    let norm = a.grads.iter().map(|g| g * g).sum::<f32>().sqrt();
    let diff = a
        .grads
        .iter()
        .zip(&b.grads)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    eprintln!("{backend}: loss {} gradient norm {norm}, difference {diff}", a.loss);
    assert!(norm > 0.0);
    assert!(diff <= 1e-6 * norm, "{diff} vs {norm}");
}
