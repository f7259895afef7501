//! Lion and Adafactor against their reference implementations (lion-pytorch's
//! `Lion`, transformers' `Adafactor`): the values every parameter takes over
//! six steps of fixed gradients, recorded by
//! `tests/fixtures/optimizers/make_reference.py` in `reference.json`.

use lora_core::optim::Optimizer;
use lora_core::{ParamInfo, ParamLayout};
use lora_train::adafactor::{Adafactor, AdafactorConfig};
use lora_train::lion::{Lion, LionConfig};
use serde::Deserialize;

#[derive(Deserialize)]
struct Param {
    name: String,
    shape: Vec<usize>,
    weight_decay: bool,
}

#[derive(Deserialize)]
struct Case {
    config: serde_json::Value,
    lrs: Vec<f64>,
    after: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Reference {
    params: Vec<Param>,
    initial: Vec<f32>,
    grads: Vec<Vec<f32>>,
    cases: std::collections::BTreeMap<String, Case>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/optimizers/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("valid fixture")
}

/// Runs `opt` over the fixture's gradients, comparing each step within 1e-6
/// (relative to the value, absolute below 1); returns the largest difference.
fn check(name: &str, mut opt: Box<dyn Optimizer>, r: &Reference) -> f64 {
    let case = &r.cases[name];
    let layout = ParamLayout::new(
        &r.params
            .iter()
            .map(|p| ParamInfo::new(p.name.clone(), p.shape.clone(), p.weight_decay))
            .collect::<Vec<_>>(),
    );
    let mut params = r.initial.clone();
    let mut worst = 0f64;
    for (step, (grads, expected)) in r.grads.iter().zip(&case.after).enumerate() {
        opt.step(&mut params, grads, &layout, case.lrs[step]);
        for (i, (&got, &want)) in params.iter().zip(expected).enumerate() {
            let diff = (got as f64 - want as f64).abs() / (want as f64).abs().max(1.0);
            worst = worst.max(diff);
            assert!(
                diff <= 1e-6,
                "{name}, step {}, value {i}: {got} against the reference's {want}",
                step + 1
            );
        }
    }
    assert_eq!(case.after.len(), 6);
    worst
}

#[test]
fn lion_matches_lion_pytorch() {
    let r = reference();
    let cfg: LionConfig = serde_json::from_value(r.cases["lion"].config.clone()).unwrap();
    let worst = check("lion", Box::new(Lion::new(cfg)), &r);
    eprintln!("lion: largest difference {worst:.2e}");
}

#[test]
fn adafactor_matches_transformers() {
    let r = reference();
    let names: Vec<&String> = r.cases.keys().filter(|n| n.starts_with("adafactor")).collect();
    assert_eq!(names.len(), 5);
    for name in names {
        let cfg: AdafactorConfig = serde_json::from_value(r.cases[name].config.clone()).unwrap();
        let worst = check(name, Box::new(Adafactor::new(cfg)), &r);
        eprintln!("{name}: largest difference {worst:.2e}");
    }
}
