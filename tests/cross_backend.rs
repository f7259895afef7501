//! candle and burn against each other: the same weights, inputs and seed must
//! give the same numbers, and an adapter moves between them unchanged.

#[allow(dead_code, unused_macros, unused_imports)]
mod suite;

use lora_core::Batch;
use lora_train::peft;
use suite::fixtures::{build, pipeline_text};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn batch(b: &suite::fixtures::Built) -> Batch {
    b.data.validation.batches(32, None).next().unwrap().unwrap()
}

#[test]
fn logits_agree_within_1e_4_on_the_same_weights() {
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
    assert!(d < 1e-4, "logits differ by {d}");
    let h = max_abs_diff(
        &candle.model.hidden_states(&x).unwrap().data,
        &burn.model.hidden_states(&x).unwrap().data,
    );
    assert!(h < 1e-4, "hidden states differ by {h}");
}

#[test]
fn first_20_training_losses_agree_within_1e_3_relative() {
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
        let seed = b.pipeline.config.run.seed;
        b.pipeline
            .train
            .train(b.model.as_mut(), &b.data, b.pipeline.eval.as_ref(), &mut [], seed)
            .unwrap()
            .losses
    };
    let (c, b) = (run("candle"), run("burn"));
    assert_eq!(c.len(), 20);
    for (i, (x, y)) in c.iter().zip(&b).enumerate() {
        assert!(((x - y) / x).abs() < 1e-3, "step {}: candle {x} burn {y}", i + 1);
    }
}

#[test]
fn an_adapter_trained_on_one_backend_predicts_the_same_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [("candle", "burn"), ("burn", "candle")] {
        let out = dir.path().join(format!("{from}-to-{to}"));
        let mut src = build(pipeline_text(from, &out, &[("epochs", "max-steps = 5")]));
        let seed = src.pipeline.config.run.seed;
        src.pipeline
            .train
            .train(src.model.as_mut(), &src.data, src.pipeline.eval.as_ref(), &mut [], seed)
            .unwrap();
        peft::save_adapter(&out, src.model.as_ref(), &src.pipeline.config.lora, "base").unwrap();
        let mut dst = build(pipeline_text(to, &out, &[("seed", "seed = 99")]));
        peft::load_adapter(&out, dst.model.as_mut()).unwrap();
        let x = batch(&src);
        let a = src.model.predict(&x).unwrap();
        let b = dst.model.predict(&x).unwrap();
        assert!(max_abs_diff(&a.data, &b.data) < 1e-4, "{from} -> {to}");
        let argmax = |t: &lora_core::HostTensor| {
            (0..t.shape[0])
                .map(|i| lora_train::metrics::argmax(t.row(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(argmax(&a), argmax(&b), "{from} -> {to}: predictions differ");
    }
}
