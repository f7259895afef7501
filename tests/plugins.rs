//! The example plugin, loaded from its shared library (`cargo xtask build-plugins`)
//! by pipelines: each contribution takes effect, and broken or incompatible
//! libraries are errors that name the plugin, never crashes.

use std::path::{Path, PathBuf};

use lora_core::Batch;
use lora_core::diag::Diagnostics;
use lora_validate::Overrides;

static ASSETS: lora_assets::CacheResolver = lora_assets::CacheResolver;

fn plugins_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("plugins")
}

fn library(variant: &str) -> PathBuf {
    let name = format!(
        "{}example_salt_pepper{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = plugins_dir().join(variant).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A small digits pipeline with the plugin loaded and `extra` appended.
fn digits_pipeline(out: &Path, plugins: &[PathBuf], extra: &str) -> String {
    let paths: Vec<String> = plugins
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        r#"[run]
name = "plugin-test"
seed = 5
output-dir = "{out}"

[plugins]
paths = [{paths}]

[data]
type = "mnist-json"
path = "asset:mnist-digits"
validation-fraction = 0.1
max-train-samples = 64
max-validation-samples = 32
{extra}

[model]
type = "vit-classifier"
mode = "full"
image-size = 28
patch-size = 7
channels = 1
hidden-size = 16
layers = 1
heads = 2
mlp-size = 32

[lora]
r = 1
alpha = 1
target-modules = []

[train]
max-steps = 2
batch-size = 32

[train.optimizer]
type = "adamw"
lr = 1e-3

[eval]
batch-size = 32
"#,
        out = out.display(),
        paths = paths.join(", ")
    )
}

fn check(text: String) -> lora_cli::validate::Checked {
    let composed = lora_validate::compose_text(Path::new("plugin-test.toml"), text, &Overrides::default())
        .unwrap_or_else(|d| panic!("{d}"));
    lora_cli::validate::check_composed(composed, &ASSETS)
}

fn codes(d: &Diagnostics) -> Vec<&str> {
    d.0.iter().map(|d| d.code.as_str()).collect()
}

fn first_train_pixels(checked: lora_cli::validate::Checked) -> Vec<f32> {
    let pipeline = checked.into_pipeline().unwrap_or_else(|e| panic!("{e}"));
    let ctx = pipeline.context(&ASSETS).unwrap();
    let data = pipeline.data.prepare(&ctx).unwrap();
    match data.train.batches(32, Some(1)).next().unwrap().unwrap() {
        Batch::Image(b) => b.pixels,
        _ => panic!("not an image batch"),
    }
}

#[test]
fn the_augmentation_changes_pixels_to_black_or_white_at_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = library("");
    let started = std::time::Instant::now();
    let plain = first_train_pixels(check(digits_pipeline(
        &dir.path().join("a"),
        std::slice::from_ref(&plugin),
        "",
    )));
    eprintln!("first pipeline, plugin loading included: {:?}", started.elapsed());
    let noisy = first_train_pixels(check(digits_pipeline(
        &dir.path().join("b"),
        &[plugin],
        "\n[[data.augment]]\ntype = \"salt-pepper\"\namount = 0.3\n",
    )));
    assert_eq!(plain.len(), noisy.len());
    let changed: Vec<(f32, f32)> = plain
        .iter()
        .zip(&noisy)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (*a, *b))
        .collect();
    assert!(
        changed.iter().all(|(_, b)| *b == 0.0 || *b == 1.0),
        "only black or white is written"
    );
    // 30% of pixels are drawn, half of them white; MNIST is mostly black, so about
    // 15% of pixels turn white from black, plus the drawn ink pixels.
    let share = changed.len() as f64 / plain.len() as f64;
    assert!((0.10..0.30).contains(&share), "changed share {share}");
    let whites = changed.iter().filter(|(_, b)| *b == 1.0).count() as f64 / plain.len() as f64;
    assert!((0.12..0.18).contains(&whites), "white share {whites}");
}

#[test]
fn the_rule_fires_on_a_bad_amount_and_not_on_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = check(digits_pipeline(
        &dir.path().join("a"),
        &[library("")],
        "\n[[data.augment]]\ntype = \"salt-pepper\"\namount = 0.8\n",
    ));
    assert!(
        codes(&bad.diagnostics).contains(&"salt-pepper::amount-range"),
        "{}",
        bad.diagnostics
    );
    let text = bad.diagnostics.to_string();
    assert!(
        text.contains("salt-pepper amount (0.8) is out of range. Valid range: 0 <= amount <= 0.5"),
        "{text}"
    );
    let good = check(digits_pipeline(
        &dir.path().join("b"),
        &[library("")],
        "\n[[data.augment]]\ntype = \"salt-pepper\"\namount = 0.1\n",
    ));
    assert!(!codes(&good.diagnostics).contains(&"salt-pepper::amount-range"));
}

#[test]
fn the_callback_sees_every_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("loss.csv");
    let text = digits_pipeline(
        &dir.path().join("run"),
        &[library("")],
        &format!(
            "\n[callbacks.log]\ntype = \"csv-loss-log\"\npath = {:?}\n",
            log.display().to_string()
        ),
    );
    let pipeline = check(text).into_pipeline().unwrap_or_else(|e| panic!("{e}"));
    let done = lora_cli::pipeline::run(pipeline, &ASSETS, true).unwrap_or_else(|e| panic!("{e}"));
    let csv = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,loss");
    assert_eq!(lines.len(), 3, "two steps: {csv}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(done.output_dir.join("metrics.json")).unwrap()).unwrap();
    for (i, line) in lines[1..].iter().enumerate() {
        let (step, loss) = line.split_once(',').unwrap();
        assert_eq!(step, (i + 1).to_string());
        let logged: f64 = loss.parse().unwrap();
        assert_eq!(
            logged,
            metrics["train"]["losses"][i].as_f64().unwrap(),
            "the loss the trainer reported"
        );
    }
}

#[test]
fn incompatible_missing_broken_and_panicking_libraries_are_all_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnothing.so");
    let not_a_plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let checked = check(digits_pipeline(
        &dir.path().join("run"),
        &[library("incompatible"), missing, not_a_plugin, library("panicking")],
        "",
    ));
    let failures: Vec<String> = checked
        .diagnostics
        .0
        .iter()
        .filter(|d| d.code == "plugin::load-failed")
        .map(|d| d.message.clone())
        .collect();
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(
        failures[0].contains("plugin `example-salt-pepper`")
            && failures[0].contains("built against lora-plugin-api 2.0.0, this host provides 1.0.0"),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].contains("the library file does not exist"),
        "{}",
        failures[1]
    );
    assert!(failures[2].contains("cannot open the library"), "{}", failures[2]);
    assert!(
        failures[3].contains("panicked while registering") && failures[3].contains("on purpose"),
        "{}",
        failures[3]
    );
    assert!(checked.into_pipeline().is_err(), "nothing runs with a broken plugin");
}

#[test]
fn a_library_without_the_declaration_is_a_missing_symbol_error() {
    // Any shared library that is not a plugin: the C math library is on every Linux machine.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    let Some(libm) = libm else {
        panic!("no libm.so.6 found in the usual places");
    };
    let dir = tempfile::tempdir().unwrap();
    let checked = check(digits_pipeline(&dir.path().join("run"), &[libm], ""));
    let text = checked.diagnostics.to_string();
    assert!(
        text.contains("missing entry symbol `LORA_PLUGIN_DECLARATION`"),
        "{text}"
    );
}
