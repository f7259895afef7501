//! The checks themselves, each a function of the backend name.

use std::path::{Path, PathBuf};

use lora_core::{AdapterModel, Batch};
use lora_train::peft;

use super::fixtures::{VIT_FULL, VIT_LORA, VIT_NO_LORA, build, pipeline_text, vit_lora_model, vit_pipeline_text};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Golden values of ASSETS.md: sentence-transformers' mean pooling, L2-normalised.
pub fn golden_sentence_embeddings(backend: &str) {
    let dir = tmp();
    let b = build(pipeline_text(backend, dir.path(), &[]));
    let texts: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
    ]
    .map(String::from)
    .to_vec();
    let batch = b.data.encoder.encode_inputs(&texts).unwrap();
    let Batch::Text(t) = &batch else {
        panic!("text batch expected")
    };
    let hidden = b.model.hidden_states(&batch).unwrap();
    let h = hidden.shape[2];
    let mut emb = Vec::new();
    for i in 0..t.batch_size {
        let mut mean = vec![0f64; h];
        let mut count = 0.0;
        for j in 0..t.seq_len {
            if t.attention_mask[i * t.seq_len + j] == 1 {
                count += 1.0;
                for (k, m) in mean.iter_mut().enumerate() {
                    *m += hidden.data[(i * t.seq_len + j) * h + k] as f64;
                }
            }
        }
        let norm = mean.iter().map(|x| (x / count).powi(2)).sum::<f64>().sqrt();
        emb.push(mean.iter().map(|x| x / count / norm).collect::<Vec<f64>>());
    }
    let golden = [0.03324157, 0.00440607, -0.00627695, 0.04837872, -0.13870225];
    for (got, want) in emb[0].iter().zip(golden) {
        assert!((got - want).abs() < 1e-4, "embedding {got} vs golden {want}");
    }
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(
        (cos(&emb[0], &emb[1]) - 0.7553).abs() < 1e-3,
        "cosine {}",
        cos(&emb[0], &emb[1])
    );
    assert!(
        (cos(&emb[0], &emb[2]) - -0.0461).abs() < 1e-3,
        "cosine {}",
        cos(&emb[0], &emb[2])
    );
}

fn first_validation_batch(b: &super::fixtures::Built) -> Batch {
    b.data.validation.batches(32, None).next().unwrap().unwrap()
}

/// Random non-zero adapter values, so that a round trip cannot pass by accident.
fn perturb(model: &mut dyn AdapterModel, seed: u64) {
    let mut r = lora_core::init::rng(seed);
    let values: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|p| lora_core::init::normal(0.05, p.numel(), &mut r))
        .collect();
    model.write_params(&values).unwrap();
}

pub fn saved_adapter_has_peft_layout_and_reloads_identically(backend: &str) {
    let dir = tmp();
    let mut b = build(pipeline_text(backend, dir.path(), &[]));
    perturb(b.model.as_mut(), 11);
    let batch = first_validation_batch(&b);
    let before = b.model.predict(&batch).unwrap();
    let out = dir.path().join("adapter");
    peft::save_adapter(
        &out,
        b.model.as_ref(),
        &b.pipeline.config.lora,
        "sentence-transformers/all-MiniLM-L6-v2",
    )
    .unwrap();

    // PEFT's key names, shapes and dtype.
    let bytes = std::fs::read(out.join(peft::WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut expected = Vec::new();
    for layer in 0..6 {
        for module in ["query", "value"] {
            for (ab, shape) in [("lora_A", [8, 384]), ("lora_B", [384, 8])] {
                expected.push((
                    format!("base_model.model.bert.encoder.layer.{layer}.attention.self.{module}.{ab}.weight"),
                    shape.to_vec(),
                ));
            }
        }
    }
    expected.push(("base_model.model.classifier.weight".into(), vec![3, 384]));
    expected.push(("base_model.model.classifier.bias".into(), vec![3]));
    let mut names = st.names();
    names.sort();
    let mut want: Vec<&String> = expected.iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(names.len(), 26);
    assert_eq!(names, want);
    for (name, shape) in &expected {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );

    // PEFT's config fields.
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(peft::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["target_modules"], serde_json::json!(["query", "value"]));
    assert!((cfg["lora_dropout"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier", "score"]));
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["init_lora_weights"], true);
    assert_eq!(cfg["base_model_name_or_path"], "sentence-transformers/all-MiniLM-L6-v2");

    // A fresh model (another seed, so another initial adapter) with the file loaded predicts the same.
    let mut fresh = build(pipeline_text(backend, dir.path(), &[("seed", "seed = 1234")]));
    assert_ne!(fresh.model.predict(&batch).unwrap().data, before.data);
    peft::load_adapter(&out, fresh.model.as_mut()).unwrap();
    assert_eq!(fresh.model.predict(&batch).unwrap().data, before.data);
    let saved = peft::read_adapter_config(&out).unwrap();
    assert_eq!((saved.r, saved.alpha, saved.use_rslora), (8, 16.0, false));
}

/// PEFT's `rank_pattern` and `alpha_pattern`: per-module shapes, and an alpha
/// that scales the update exactly as scaling `B` does.
pub fn rank_and_alpha_patterns_set_per_module_shapes_and_scales(backend: &str) {
    let dir = tmp();
    let with = |extra: &str| {
        pipeline_text(backend, dir.path(), &[]).replace(
            "target-modules = [\"query\", \"value\"]",
            &format!("target-modules = [\"query\", \"value\"]\n{extra}"),
        )
    };
    let ranked = build(with("rank-pattern = { \"layer.0.attention.self.query\" = 2 }"));
    let mut checked = 0;
    for p in ranked.model.params().iter().filter(|p| p.name.contains(".lora_")) {
        let r = if p.name.contains("layer.0.attention.self.query.") {
            2
        } else {
            8
        };
        let want = if p.name.contains(".lora_A.") {
            [r, 384]
        } else {
            [384, r]
        };
        assert_eq!(p.shape, want, "{}", p.name);
        checked += 1;
    }
    assert_eq!(checked, 24);

    let mut plain = build(pipeline_text(backend, dir.path(), &[]));
    let mut doubled = build(with("alpha-pattern = { query = 32 }"));
    let mut r = lora_core::init::rng(5);
    let values: Vec<Vec<f32>> = plain
        .model
        .params()
        .iter()
        .map(|p| lora_core::init::normal(0.05, p.numel(), &mut r))
        .collect();
    doubled.model.write_params(&values).unwrap();
    // alpha 32 over r 8 on the queries is twice their B at alpha 16.
    let twice_query_b: Vec<Vec<f32>> = plain
        .model
        .params()
        .iter()
        .zip(&values)
        .map(|(p, v)| {
            let scale = if p.name.contains(".query.lora_B.") { 2.0 } else { 1.0 };
            v.iter().map(|x| x * scale).collect()
        })
        .collect();
    plain.model.write_params(&twice_query_b).unwrap();
    let batch = first_validation_batch(&plain);
    let (a, b) = (
        plain.model.predict(&batch).unwrap(),
        doubled.model.predict(&batch).unwrap(),
    );
    let diff = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "max logit difference {diff}");
    let unscaled = doubled.model.predict(&batch).unwrap();
    plain.model.write_params(&values).unwrap();
    assert_ne!(
        plain.model.predict(&batch).unwrap().data,
        unscaled.data,
        "the pattern changes the output"
    );

    // adapter_config.json carries both patterns, as PEFT writes them.
    let out = dir.path().join("patterned");
    peft::save_adapter(&out, doubled.model.as_ref(), &doubled.pipeline.config.lora, "base").unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(peft::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["alpha_pattern"], serde_json::json!({"query": 32.0}));
    assert_eq!(cfg["rank_pattern"], serde_json::json!({}));

    // A key that names no adapted module stops the run before training.
    let typo = with("rank-pattern = { querry = 4 }");
    let pipeline = lora_cli::pipeline::Pipeline::build(super::fixtures::config(typo)).unwrap();
    let ctx = super::fixtures::context(&pipeline);
    let err = pipeline.prepare(&ctx).err().unwrap().to_string();
    assert!(err.contains("rank-pattern key `querry` names no module"), "{err}");
}

/// Trains with the pipeline's own trainer and seed, no callbacks.
pub fn train(b: &mut super::fixtures::Built) -> lora_core::stage::TrainSummary {
    let seed = b.pipeline.config.run.seed;
    b.pipeline
        .train
        .train(lora_core::stage::TrainContext {
            model: b.model.as_mut(),
            data: &b.data,
            eval: b.pipeline.eval.as_ref(),
            callbacks: &mut [],
            strategy: &mut lora_train::strategy::SingleProcess,
            seed,
            checkpoints: None,
            resume: None,
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn same_seed_gives_identical_losses(backend: &str) {
    let dir = tmp();
    let text = pipeline_text(backend, dir.path(), &[("epochs", "max-steps = 4")]);
    let first = train(&mut build(text.clone())).losses;
    let second = train(&mut build(text)).losses;
    assert_eq!(first.len(), 4);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first), bits(&second), "same seed, different losses");
    let other = train(&mut build(pipeline_text(
        backend,
        dir.path(),
        &[("epochs", "max-steps = 4"), ("seed", "seed = 8")],
    )));
    assert_ne!(bits(&first), bits(&other.losses), "the seed has no effect");
}

/// Trains `b` for `steps` optimizer steps and checks that the loss on its
/// `validation_samples` validation examples fell.
fn assert_training_lowers_validation_loss(b: &mut super::fixtures::Built, steps: usize, validation_samples: usize) {
    let before = b
        .pipeline
        .eval
        .evaluate(b.model.as_ref(), b.data.validation.as_ref(), &b.data.task)
        .unwrap();
    let summary = train(b);
    assert_eq!(summary.steps, steps);
    let after = &summary.evals.last().unwrap().1;
    assert!(
        after.loss < before.loss,
        "validation loss {} -> {}",
        before.loss,
        after.loss
    );
    assert_eq!(after.samples, validation_samples);
}

pub fn short_run_lowers_validation_loss(backend: &str) {
    let dir = tmp();
    // 480 tweets at batch 16: 30 optimizer steps.
    let mut b = build(pipeline_text(
        backend,
        dir.path(),
        &[("max-train-samples", "max-train-samples = 480")],
    ));
    assert_training_lowers_validation_loss(&mut b, 30, 64);
}

pub fn accumulated_micro_batches_equal_one_batch(backend: &str) {
    let dir = tmp();
    let common = [
        ("dropout", "dropout = 0.0"),
        // The base's own dropout off too: its masks follow the batch's shape.
        ("classifier-dropout", "classifier-dropout = 0.0\nbase-dropout = false"),
        ("epochs", "max-steps = 1"),
        ("max-grad-norm", "max-grad-norm = 0.0"),
    ];
    let sgd = |extra: &[(&'static str, &'static str)]| {
        let mut r: Vec<(&str, &str)> = common.to_vec();
        r.extend_from_slice(extra);
        let text = pipeline_text(backend, dir.path(), &r).replace(
            "type = \"adamw\"\nlr = 2e-3\nweight-decay = 0.01",
            "type = \"sgd\"\nlr = 0.5",
        );
        let mut b = build(text);
        let start = b.model.read_params().unwrap();
        train(&mut b);
        let end = b.model.read_params().unwrap();
        // The SGD step is -lr * gradient.
        start
            .iter()
            .zip(&end)
            .map(|(s, e)| s.iter().zip(e).map(|(s, e)| (s - e) / 0.5).collect())
            .collect::<Vec<Vec<f32>>>()
    };
    let whole = sgd(&[("batch-size", "batch-size = 16")]);
    let split = sgd(&[
        ("batch-size", "batch-size = 8"),
        ("gradient-accumulation-steps", "gradient-accumulation-steps = 2"),
    ]);
    let mut max_rel: f32 = 0.0;
    let scale = whole.iter().flatten().fold(0f32, |m, g| m.max(g.abs()));
    for (a, b) in whole.iter().flatten().zip(split.iter().flatten()) {
        max_rel = max_rel.max((a - b).abs() / scale);
    }
    assert!(scale > 0.0);
    assert!(
        max_rel < 1e-4,
        "k micro-batches of b differ from one batch of k*b by {max_rel} (relative)"
    );
}

pub fn merge_is_exact_and_base_weights_stay_unchanged(backend: &str) {
    let dir = tmp();
    let text = pipeline_text(backend, dir.path(), &[("epochs", "max-steps = 3")]);
    let mut b = build(text.clone());
    train(&mut b);
    let batch = first_validation_batch(&b);
    let unmerged = b.model.predict(&batch).unwrap();
    b.model.merge().unwrap();
    let merged = b.model.predict(&batch).unwrap();
    for (x, y) in unmerged.data.iter().zip(&merged.data) {
        assert!((x - y).abs() < 1e-4, "merged {y} vs unmerged {x}");
    }
    b.model.unmerge().unwrap();
    assert_eq!(
        b.model.predict(&batch).unwrap().data,
        unmerged.data,
        "unmerge is not exact"
    );

    // With B zeroed, the trained model must compute exactly what a freshly loaded one does.
    let zeroed: Vec<Vec<f32>> = b
        .model
        .params()
        .iter()
        .zip(b.model.read_params().unwrap())
        .map(|(p, v)| {
            if p.name.contains("lora_B") {
                vec![0.0; v.len()]
            } else {
                v
            }
        })
        .collect();
    b.model.write_params(&zeroed).unwrap();
    let fresh = build(text);
    assert_eq!(
        b.model.hidden_states(&batch).unwrap().data,
        fresh.model.hidden_states(&batch).unwrap().data,
        "base weights changed during training"
    );
}

pub fn bad_pipelines_fail_before_writing_anything(backend: &str) {
    let dir = tmp();
    let out = dir.path().join("never");
    let text = pipeline_text(
        backend,
        &out,
        &[
            ("target-modules", "target-modules = [\"quary\", \"value\"]"),
            ("max-length", "max-length = 0"),
        ],
    );
    let err = run_text(text).err().expect("must fail");
    assert_eq!(err.exit_code(), 2, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("max-length"), "{msg}");
    assert!(!out.exists(), "output folder written before validation passed");

    let err = run_text(pipeline_text(
        backend,
        &out,
        &[("target-modules", "target-modules = [\"quary\"]")],
    ))
    .err()
    .expect("must fail");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("did you mean `query`"), "{err}");
    assert!(!out.exists());
}

pub fn run_writes_outputs_that_predict_and_eval_read(backend: &str) {
    let dir = tmp();
    let out = dir.path().join("run");
    let file = dir.path().join("pipeline.toml");
    let text = pipeline_text(backend, &out, &[("epochs", "max-steps = 2")]);
    std::fs::write(&file, &text).unwrap();
    let done = run_text(text).unwrap_or_else(|e| panic!("{e}"));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "base-model.json",
            "labels.json",
            "metrics.json",
            "metrics.jsonl",
            "pipeline.toml",
            "report",
            "resolved-config.toml"
        ]
    );
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["train"]["steps"], 2);
    assert_eq!(
        metrics["final"]["details"]["confusion_matrix"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The resolved configuration names every default and parses as a pipeline again.
    let resolved = std::fs::read_to_string(out.join("resolved-config.toml")).unwrap();
    for default in [
        "betas = [",
        "eps = ",
        "gradient-accumulation-steps = 1",
        "use-rslora = false",
        "validation-fraction = 0.1",
    ] {
        assert!(resolved.contains(default), "{default} missing from\n{resolved}");
    }
    lora_core::config::PipelineConfig::parse(std::path::Path::new("resolved.toml"), resolved).unwrap();

    // `lora eval --adapter` reproduces the final evaluation of the run.
    let cfg = lora_core::config::PipelineConfig::load(&file).unwrap();
    let report = lora_cli::pipeline::eval(
        lora_cli::pipeline::Pipeline::build(cfg).unwrap(),
        &out,
        &super::fixtures::ASSETS,
    )
    .unwrap();
    assert_eq!(report.metrics, done.final_eval.metrics);
    assert!((report.loss - done.final_eval.loss).abs() < 1e-9);

    // `lora predict --adapter` reads the run's own copy of the pipeline.
    let cfg = lora_core::config::PipelineConfig::load(&out.join("pipeline.toml")).unwrap();
    let texts = vec!["I love this so much!".to_string(), "worst day ever".to_string()];
    let preds = lora_cli::pipeline::predict(cfg, &out, &texts, &super::fixtures::ASSETS).unwrap();
    assert_eq!(preds.len(), 2);
    for p in preds {
        let total: f64 = p.probabilities.iter().map(|(_, v)| v).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(p.probabilities.len(), 3);
    }
}

/// Validates a pipeline as `lora run` does (every rule), then runs it.
fn run_text(text: String) -> lora_core::Result<lora_cli::pipeline::RunOutcome> {
    let composed = lora_validate::compose_text(std::path::Path::new("pipeline.toml"), text, &Default::default())?;
    let pipeline = lora_cli::validate::check_composed(composed, &super::fixtures::ASSETS).into_pipeline()?;
    lora_cli::pipeline::run(pipeline, &super::fixtures::ASSETS, true)
}

// ---- The ViT: a tiny model on real Fashion-MNIST images, full mode and LoRA mode.

/// A tiny ViT base: a full-mode model trained 4 steps, saved by `save_base` in `dir/base`.
pub fn vit_base(backend: &str, dir: &Path) -> PathBuf {
    let base = dir.join("base");
    let text = vit_pipeline_text(backend, dir, VIT_FULL, VIT_NO_LORA, &[("epochs", "max-steps = 4")]);
    let mut b = build(text);
    train(&mut b);
    assert!(b.model.save_base(&base).unwrap(), "a full-mode model writes a base");
    base
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn vit_same_seed_gives_identical_losses(backend: &str) {
    let dir = tmp();
    let base = vit_base(backend, dir.path());
    for (model, lora) in [(VIT_FULL.to_string(), VIT_NO_LORA), (vit_lora_model(&base), VIT_LORA)] {
        let losses = |seed: &'static str| {
            let text = vit_pipeline_text(
                backend,
                dir.path(),
                &model,
                lora,
                &[("epochs", "max-steps = 4"), ("seed", seed)],
            );
            train(&mut build(text)).losses
        };
        let first = losses("seed = 7");
        assert_eq!(first.len(), 4);
        assert_eq!(bits(&first), bits(&losses("seed = 7")), "same seed, different losses");
        assert_ne!(bits(&first), bits(&losses("seed = 8")), "the seed has no effect");
    }
}

pub fn vit_full_training_then_lora_each_lower_validation_loss(backend: &str) {
    let dir = tmp();
    let base = dir.path().join("base");
    // 320 images at batch 16: 20 optimizer steps each.
    let more = [("max-train-samples", "max-train-samples = 320")];
    for (i, (model, lora)) in [(VIT_FULL.to_string(), VIT_NO_LORA), (vit_lora_model(&base), VIT_LORA)]
        .into_iter()
        .enumerate()
    {
        let mut b = build(vit_pipeline_text(backend, dir.path(), &model, lora, &more));
        assert_training_lowers_validation_loss(&mut b, 20, 64);
        // The trained full model is the LoRA run's base (a LoRA model writes no base).
        assert_eq!(b.model.save_base(&base).unwrap(), i == 0);
    }
}

pub fn vit_saved_adapter_has_peft_layout_and_reloads_identically(backend: &str) {
    let dir = tmp();
    let base = vit_base(backend, dir.path());
    let text = |seed: &str| vit_pipeline_text(backend, dir.path(), &vit_lora_model(&base), VIT_LORA, &[("seed", seed)]);
    let mut b = build(text("seed = 7"));
    perturb(b.model.as_mut(), 11);
    let batch = first_validation_batch(&b);
    let before = b.model.predict(&batch).unwrap();
    let out = dir.path().join("adapter");
    peft::save_adapter(&out, b.model.as_ref(), &b.pipeline.config.lora, "tiny-vit").unwrap();

    let bytes = std::fs::read(out.join(peft::WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut expected = vec![
        (
            "base_model.model.vit.embeddings.patch_embeddings.projection.lora_A.weight".to_string(),
            vec![4, 1, 7, 7],
        ),
        (
            "base_model.model.vit.embeddings.patch_embeddings.projection.lora_B.weight".to_string(),
            vec![16, 4, 1, 1],
        ),
    ];
    for layer in 0..2 {
        for (module, out_dim) in [
            ("attention.attention.query", 16),
            ("attention.attention.value", 16),
            ("intermediate.dense", 32),
        ] {
            let prefix = format!("base_model.model.vit.encoder.layer.{layer}.{module}");
            expected.push((format!("{prefix}.lora_A.weight"), vec![4, 16]));
            expected.push((format!("{prefix}.lora_B.weight"), vec![out_dim, 4]));
        }
    }
    expected.push(("base_model.model.classifier.weight".into(), vec![10, 16]));
    expected.push(("base_model.model.classifier.bias".into(), vec![10]));
    let names: Vec<&str> = b.model.params().iter().map(|p| p.name.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "parameter order");
    assert_eq!(st.names().len(), expected.len());
    for (name, shape) in &expected {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(peft::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], serde_json::Value::Null);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["patch_embeddings.projection", "query", "value", "intermediate.dense"])
    );
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(4), Some(8.0)));

    // A fresh model (another seed, so another initial adapter) with the file loaded predicts the same.
    let mut fresh = build(text("seed = 1234"));
    assert_ne!(fresh.model.predict(&batch).unwrap().data, before.data);
    peft::load_adapter(&out, fresh.model.as_mut()).unwrap();
    assert_eq!(fresh.model.predict(&batch).unwrap().data, before.data);

    // Merging (the patch embedding's adapter included) is exact to rounding; unmerging is exact.
    b.model.merge().unwrap();
    let merged = b.model.predict(&batch).unwrap();
    for (x, y) in before.data.iter().zip(&merged.data) {
        assert!((x - y).abs() < 1e-4, "merged {y} vs unmerged {x}");
    }
    b.model.unmerge().unwrap();
    assert_eq!(b.model.predict(&batch).unwrap().data, before.data);
}

pub fn vit_full_run_saves_a_base_that_a_lora_run_adapts(backend: &str) {
    let dir = tmp();
    // Through `lora run`: the full run writes a base in Hugging Face's layout, no adapter.
    let base = dir.path().join("base");
    let full = vit_pipeline_text(backend, &base, VIT_FULL, VIT_NO_LORA, &[("epochs", "max-steps = 3")]);
    run_text(full.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!base.join("adapter_model.safetensors").exists());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["hidden_size"].as_u64(), cfg["num_labels"].as_u64()),
        (Some(16), Some(10))
    );
    assert_eq!(cfg["architectures"], serde_json::json!(["ViTForImageClassification"]));
    let bytes = std::fs::read(base.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // 4 embedding tensors, 2 layers x 16, the final norm, the head.
    assert_eq!(st.names().len(), 4 + 2 * 16 + 2 + 2);
    for (name, shape) in [
        ("vit.embeddings.patch_embeddings.projection.weight", vec![16, 1, 7, 7]),
        ("vit.embeddings.position_embeddings", vec![1, 17, 16]),
        ("vit.encoder.layer.1.output.dense.weight", vec![16, 32]),
        ("classifier.weight", vec![10, 16]),
    ] {
        assert_eq!(st.tensor(name).unwrap().shape(), shape.as_slice(), "{name}");
    }

    // The LoRA run on it writes an adapter and leaves the base untouched.
    let adapted = dir.path().join("adapted");
    let lora = vit_pipeline_text(
        backend,
        &adapted,
        &vit_lora_model(&base),
        VIT_LORA,
        &[("epochs", "max-steps = 2")],
    );
    run_text(lora).unwrap_or_else(|e| panic!("{e}"));
    assert!(adapted.join("adapter_model.safetensors").is_file() && adapted.join("adapter_config.json").is_file());
    assert_eq!(std::fs::read(base.join("model.safetensors")).unwrap(), bytes);

    // At initialisation (B = 0) the adapted model computes what the saved full model did.
    let mut b = build(vit_pipeline_text(
        backend,
        dir.path(),
        VIT_FULL,
        VIT_NO_LORA,
        &[("epochs", "max-steps = 3")],
    ));
    train(&mut b);
    let mine = dir.path().join("mine");
    b.model.save_base(&mine).unwrap();
    let a = build(vit_pipeline_text(
        backend,
        dir.path(),
        &vit_lora_model(&mine),
        VIT_LORA,
        &[],
    ));
    let x = first_validation_batch(&b);
    let (h1, h2) = (b.model.hidden_states(&x).unwrap(), a.model.hidden_states(&x).unwrap());
    assert_eq!(h1.shape, [32, 17, 16]);
    let d = h1
        .data
        .iter()
        .zip(&h2.data)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "saved base reloaded frozen differs by {d}");

    // Bad pipelines fail before writing anything, with a configuration error.
    let never = dir.path().join("never");
    let targets = vit_pipeline_text(backend, &never, VIT_FULL, VIT_LORA, &[]);
    let err = run_text(targets).err().expect("full mode with LoRA targets must fail");
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("target-modules"), "{err}");
    let missing = vit_pipeline_text(
        backend,
        &never,
        &vit_lora_model(&dir.path().join("no-such-base")),
        VIT_LORA,
        &[],
    );
    let err = run_text(missing).err().expect("a missing base must fail");
    assert!(err.to_string().contains("no-such-base"), "{err}");
    assert!(!never.exists(), "output folder written before validation passed");
    // A batch of the wrong image size is an error, not a panic.
    let Batch::Image(mut wrong) = x else {
        panic!("image batch expected")
    };
    wrong.height = 14;
    wrong.width = 56;
    let e = a.model.predict(&Batch::Image(wrong)).unwrap_err().to_string();
    assert!(e.contains("takes 1x28x28 images"), "{e}");
}

/// `batch-size = "auto"`: with a budget between the planner's predictions at
/// micro-batches 4 and 8, the planner picks 4 and 4 accumulation steps, and the
/// step equals one of the whole effective batch of 16.
pub fn auto_batch_keeps_the_effective_batch(backend: &str) {
    let dir = tmp();
    let text = |batch: &str, accumulation: &str| {
        pipeline_text(
            backend,
            dir.path(),
            &[
                ("dropout", "dropout = 0.0"),
                // The base's own dropout off too: its masks follow the batch's shape.
                ("classifier-dropout", "classifier-dropout = 0.0\nbase-dropout = false"),
                ("epochs", "max-steps = 1"),
                ("max-grad-norm", "max-grad-norm = 0.0"),
                ("batch-size", batch),
                ("gradient-accumulation-steps", accumulation),
            ],
        )
        .replace(
            "type = \"adamw\"\nlr = 2e-3\nweight-decay = 0.01",
            "type = \"sgd\"\nlr = 0.5",
        )
        // A small evaluation batch, so that the training step decides the peak.
        .replace("[eval]\nbatch-size = 32", "[eval]\nbatch-size = 2")
    };
    let auto = |budget: &str| {
        text(
            "batch-size = \"auto\"",
            &format!("effective-batch-size = 16\nmemory-budget = \"{budget}\""),
        )
    };
    let probe = build(auto("64GiB"));
    let planner = lora_cli::plan::Planner::new(&probe.pipeline, probe.model.as_ref(), &probe.data, None).unwrap();
    let (p4, p8) = (planner.predict(4).total, planner.predict(8).total);
    assert!(p4 < p8, "{p4} {p8}");
    let mut b = build(auto(&(((p4 + p8) / 2.0) as u64).to_string()));
    let choice = lora_cli::plan::resolve_auto(&mut b.pipeline, b.model.as_mut(), &b.data)
        .unwrap()
        .expect("an auto batch");
    assert_eq!((choice.micro_batch, choice.accumulation), (4, 4));
    assert_eq!(b.pipeline.train.batch(), Some((4, 4)));
    assert!(choice.candidates.iter().all(|c| c.fits == (c.micro_batch <= 4)));
    let step = |b: &mut super::fixtures::Built| {
        let start = b.model.read_params().unwrap();
        train(b);
        let end = b.model.read_params().unwrap();
        start
            .iter()
            .flatten()
            .zip(end.iter().flatten())
            .map(|(s, e)| (s - e) / 0.5)
            .collect::<Vec<f32>>()
    };
    let split = step(&mut b);
    let whole = step(&mut build(text("batch-size = 16", "gradient-accumulation-steps = 1")));
    let scale = whole.iter().fold(0f32, |m, g| m.max(g.abs()));
    let max_rel = whole
        .iter()
        .zip(&split)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs() / scale));
    assert!(
        scale > 0.0 && max_rel < 1e-4,
        "auto 4 x 4 differs from one batch of 16 by {max_rel}"
    );
}
