//! candle and burn against each other: the same weights, inputs and seed must
//! give the same numbers, and an adapter (and a ViT base) moves between them
//! unchanged. MiniLM on tweets, and a tiny ViT on Fashion-MNIST images.

#[allow(dead_code, unused_macros, unused_imports)]
mod suite;

use lora_core::Batch;
use lora_train::peft;
use suite::checks::train;
use suite::fixtures::{VIT_FULL, VIT_LORA, VIT_NO_LORA, build, pipeline_text, vit_lora_model, vit_pipeline_text};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The first 20 training losses of both backends, within 1e-5 relative (both run
/// the same operations in the same order since lora-nn: measured at most 4.6e-7).
fn assert_losses_agree(candle: &[f64], burn: &[f64]) {
    assert_eq!(candle.len(), 20);
    assert_eq!(burn.len(), 20);
    let worst = candle
        .iter()
        .zip(burn)
        .map(|(x, y)| ((x - y) / x).abs())
        .fold(0f64, f64::max);
    eprintln!("20 losses: largest relative difference {worst:.2e}");
    for (i, (x, y)) in candle.iter().zip(burn).enumerate() {
        assert!(((x - y) / x).abs() < 1e-5, "step {}: candle {x} burn {y}", i + 1);
    }
}

fn batch(b: &suite::fixtures::Built) -> Batch {
    b.data.validation.batches(32, None).next().unwrap().unwrap()
}

#[test]
fn logits_agree_within_1e_5_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut candle = build(pipeline_text("candle", dir.path(), &[]));
    let mut burn = build(pipeline_text("burn", dir.path(), &[]));
    // Same seed: the same initial adapter, drawn from the core's streams.
    assert_eq!(candle.model.read_params().unwrap(), burn.model.read_params().unwrap());
    // Non-zero B, so that the LoRA path counts.
    let mut r = lora_core::init::rng(3);
    let values: Vec<Vec<f32>> = candle
        .model
        .params()
        .iter()
        .map(|p| lora_core::init::normal(0.05, p.numel(), &mut r))
        .collect();
    candle.model.write_params(&values).unwrap();
    burn.model.write_params(&values).unwrap();
    let x = batch(&candle);
    let d = max_abs_diff(
        &candle.model.predict(&x).unwrap().data,
        &burn.model.predict(&x).unwrap().data,
    );
    let h = max_abs_diff(
        &candle.model.hidden_states(&x).unwrap().data,
        &burn.model.hidden_states(&x).unwrap().data,
    );
    eprintln!("MiniLM: logits differ by {d:.2e}, hidden states by {h:.2e}");
    assert!(d < 1e-5, "logits differ by {d}");
    assert!(h < 1e-5, "hidden states differ by {h}");
}

#[test]
fn first_20_training_losses_agree_within_1e_5_relative() {
    let dir = tempfile::tempdir().unwrap();
    // 20 steps of 16 with dropout on: the masks come from the core's streams too.
    let text = |backend| {
        pipeline_text(
            backend,
            dir.path(),
            &[
                ("epochs", "max-steps = 20"),
                ("max-train-samples", "max-train-samples = 320"),
            ],
        )
    };
    let run = |backend| {
        let mut b = build(text(backend));
        train(&mut b).losses
    };
    let (c, b) = (run("candle"), run("burn"));
    assert_losses_agree(&c, &b);
}

#[test]
fn an_adapter_trained_on_one_backend_predicts_the_same_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("candle", "burn"), ("burn", "candle")] {
        let out = dir.path().join(format!("{from}-to-{to}"));
        let mut src = build(pipeline_text(from, &out, &[("epochs", "max-steps = 5")]));
        train(&mut src);
        peft::save_adapter(&out, src.model.as_ref(), &src.pipeline.config.lora, "base").unwrap();
        let mut dst = build(pipeline_text(to, &out, &[("seed", "seed = 99")]));
        peft::load_adapter(&out, dst.model.as_mut()).unwrap();
        let x = batch(&src);
        let a = src.model.predict(&x).unwrap();
        let b = dst.model.predict(&x).unwrap();
        eprintln!(
            "MiniLM adapter {from} -> {to}: logits differ by {:.2e}",
            max_abs_diff(&a.data, &b.data)
        );
        assert!(max_abs_diff(&a.data, &b.data) < 1e-5, "{from} -> {to}");
        let argmax = |t: &lora_core::HostTensor| {
            (0..t.shape[0])
                .map(|i| lora_train::metrics::argmax(t.row(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(argmax(&a), argmax(&b), "{from} -> {to}: predictions differ");
    }
}

// ---- The ViT: a tiny model on real Fashion-MNIST images, full mode and LoRA mode.

/// Each backend's trainable values plus the same small noise: weights that no
/// longer sit at their initialisation (B non-zero), identical on both sides.
fn nudge(values: &[Vec<f32>], std: f32) -> Vec<Vec<f32>> {
    let mut r = lora_core::init::rng(3);
    values
        .iter()
        .map(|v| {
            v.iter()
                .zip(lora_core::init::normal(std, v.len(), &mut r))
                .map(|(a, b)| a + b)
                .collect()
        })
        .collect()
}

/// Full mode, and LoRA mode on `base`: (name, `[model]`, `[lora]`).
fn modes(base: &std::path::Path) -> [(&'static str, String, &'static str); 2] {
    [
        ("full", VIT_FULL.to_string(), VIT_NO_LORA),
        ("lora", vit_lora_model(base), VIT_LORA),
    ]
}

/// A base saved by `backend`'s full-mode model, trained 4 steps.
fn vit_base(backend: &str, dir: &std::path::Path) -> std::path::PathBuf {
    suite::checks::vit_base(backend, &dir.join(backend))
}

#[test]
fn vit_models_start_from_identical_parameters_from_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let base = vit_base("candle", dir.path());
    for (mode, model, lora) in modes(&base) {
        let c = build(vit_pipeline_text("candle", dir.path(), &model, lora, &[]));
        let b = build(vit_pipeline_text("burn", dir.path(), &model, lora, &[]));
        assert_eq!(c.model.params(), b.model.params(), "{mode} mode: names, shapes, decay");
        let (cv, bv) = (c.model.read_params().unwrap(), b.model.read_params().unwrap());
        // Bit for bit: the base (full mode), LoRA A and the head come from the core's streams.
        assert!(cv == bv, "{mode} mode: initial values differ");
        assert_eq!(c.model.summary(), b.model.summary());
        assert_eq!(c.model.peft_info(), b.model.peft_info());
    }
}

#[test]
fn vit_logits_agree_within_1e_5_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let base = vit_base("candle", dir.path());
    for (mode, model, lora) in modes(&base) {
        let mut c = build(vit_pipeline_text("candle", dir.path(), &model, lora, &[]));
        let mut b = build(vit_pipeline_text("burn", dir.path(), &model, lora, &[]));
        let x = batch(&c);
        let initial = c.model.predict(&x).unwrap().data;
        let values = nudge(&c.model.read_params().unwrap(), 0.05);
        c.model.write_params(&values).unwrap();
        b.model.write_params(&values).unwrap();
        assert!(
            max_abs_diff(&initial, &c.model.predict(&x).unwrap().data) > 1e-2,
            "{mode} mode: the new weights must count"
        );
        let d = max_abs_diff(&c.model.predict(&x).unwrap().data, &b.model.predict(&x).unwrap().data);
        let h = max_abs_diff(
            &c.model.hidden_states(&x).unwrap().data,
            &b.model.hidden_states(&x).unwrap().data,
        );
        eprintln!("ViT {mode} mode: logits differ by {d:.2e}, hidden states by {h:.2e}");
        assert!(d < 1e-5, "logits differ by {d}");
        assert!(h < 1e-5, "hidden states differ by {h}");
        if mode == "lora" {
            c.model.merge().unwrap();
            b.model.merge().unwrap();
            let d = max_abs_diff(&c.model.predict(&x).unwrap().data, &b.model.predict(&x).unwrap().data);
            eprintln!("ViT lora mode merged: logits differ by {d:.2e}");
            assert!(d < 1e-5, "merged logits differ by {d}");
        }
    }
}

#[test]
fn vit_first_20_training_losses_agree_within_1e_5_relative() {
    let dir = tempfile::tempdir().unwrap();
    let base = vit_base("candle", dir.path());
    // 20 steps of 16; the LoRA run with dropout on (masks from the core's streams).
    for (mode, model, lora) in modes(&base) {
        let run = |backend| {
            let mut b = build(vit_pipeline_text(
                backend,
                dir.path(),
                &model,
                lora,
                &[
                    ("epochs", "max-steps = 20"),
                    ("max-train-samples", "max-train-samples = 320"),
                ],
            ));
            let start = std::time::Instant::now();
            let losses = train(&mut b).losses;
            (losses, start.elapsed())
        };
        let ((c, tc), (b, tb)) = (run("candle"), run("burn"));
        let worst = c.iter().zip(&b).map(|(x, y)| ((x - y) / x).abs()).fold(0f64, f64::max);
        eprintln!(
            "ViT {mode} mode: 20 losses, largest relative difference {worst:.2e}; \
             candle {:.1} ms/step, burn {:.1} ms/step (with the final evaluation)",
            tc.as_secs_f64() * 50.0,
            tb.as_secs_f64() * 50.0
        );
        assert_losses_agree(&c, &b);
    }
}

#[test]
fn vit_bases_and_adapters_move_between_backends() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("candle", "burn"), ("burn", "candle")] {
        // A base saved by one backend loads frozen in the other and computes the same.
        let base = vit_base(from, dir.path());
        let mut full = build(vit_pipeline_text(
            from,
            dir.path(),
            VIT_FULL,
            VIT_NO_LORA,
            &[("epochs", "max-steps = 4")],
        ));
        train(&mut full);
        let x = batch(&full);
        let other = build(vit_pipeline_text(to, dir.path(), &vit_lora_model(&base), VIT_LORA, &[]));
        let h = max_abs_diff(
            &full.model.hidden_states(&x).unwrap().data,
            &other.model.hidden_states(&x).unwrap().data,
        );
        eprintln!("ViT {from} base in {to}: hidden states differ by {h:.2e}");
        assert!(h < 1e-5, "{from} base in {to}: hidden states differ by {h}");

        // An adapter trained on one loads in the other and predicts the same.
        let out = dir.path().join(format!("{from}-to-{to}"));
        let text = |backend, seed| {
            vit_pipeline_text(
                backend,
                &out,
                &vit_lora_model(&base),
                VIT_LORA,
                &[("seed", seed), ("epochs", "max-steps = 5")],
            )
        };
        let mut src = build(text(from, "seed = 7"));
        train(&mut src);
        peft::save_adapter(&out, src.model.as_ref(), &src.pipeline.config.lora, "tiny-vit").unwrap();
        let mut dst = build(text(to, "seed = 99"));
        peft::load_adapter(&out, dst.model.as_mut()).unwrap();
        let a = src.model.predict(&x).unwrap();
        let b = dst.model.predict(&x).unwrap();
        let d = max_abs_diff(&a.data, &b.data);
        eprintln!("ViT adapter {from} -> {to}: logits differ by {d:.2e}");
        assert!(d < 1e-5, "{from} -> {to}: logits differ by {d}");
        let argmax = |t: &lora_core::HostTensor| {
            (0..t.shape[0])
                .map(|i| lora_train::metrics::argmax(t.row(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(argmax(&a), argmax(&b), "{from} -> {to}: predictions differ");
    }
}
