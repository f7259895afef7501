//! The example plugin and the test plugin, loaded from their shared libraries
//! (`cargo xtask build-plugins`) by pipelines: each contribution takes effect;
//! broken or incompatible libraries, and components that panic, are errors that
//! name the plugin, never crashes.

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
    let crate_name = if variant == "test-panicky" {
        "test_panicky"
    } else {
        "example_salt_pepper"
    };
    let name = format!(
        "{}{crate_name}{}",
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
    // The bad amount is in the second `[[data.augment]]`: the diagnostic points at it.
    let bad = check(digits_pipeline(
        &dir.path().join("a"),
        &[library("")],
        "\n[[data.augment]]\ntype = \"salt-pepper\"\namount = 0.1\n\n[[data.augment]]\ntype = \"salt-pepper\"\namount = 0.8\n",
    ));
    assert!(
        codes(&bad.diagnostics).contains(&"salt-pepper::amount-range"),
        "{}",
        bad.diagnostics
    );
    let finding = bad
        .diagnostics
        .0
        .iter()
        .find(|d| d.code == "salt-pepper::amount-range")
        .unwrap();
    let (line, column) = finding.location.as_ref().expect("a location").line_col();
    let text = bad.diagnostics.to_string();
    let source_line = bad.source.text.lines().nth(line - 1).unwrap();
    assert_eq!(source_line, "amount = 0.8", "{text}");
    assert_eq!(column, 10, "{text}");
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
fn the_callback_sees_every_training_step_and_writes_into_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    // A relative path is relative to the run's output folder (the callback's `on_start`).
    let text = digits_pipeline(
        &dir.path().join("run"),
        &[library("")],
        "\n[callbacks.log]\ntype = \"csv-loss-log\"\npath = \"loss.csv\"\n",
    );
    let pipeline = check(text).into_pipeline().unwrap_or_else(|e| panic!("{e}"));
    let done = lora_cli::pipeline::run(pipeline, &ASSETS, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.output_dir, dir.path().join("run"));
    let csv = std::fs::read_to_string(done.output_dir.join("loss.csv")).unwrap();
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
            && failures[0].contains(&format!(
                "built against lora-plugin-api {}.0.0, this host provides {}",
                lora_plugin_host::API_VERSION.major + 1,
                lora_plugin_host::API_VERSION
            )),
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
    // The help speaks to a third-party author: the interface and compiler to rebuild with.
    let api = lora_plugin_host::API_VERSION;
    for d in checked.diagnostics.0.iter().filter(|d| d.code == "plugin::load-failed") {
        let help = d.help.as_deref().unwrap_or_default();
        assert!(
            help.contains(&format!("lora-plugin-api {}.{}", api.major, api.minor))
                && help.contains(lora_plugin_host::RUSTC_VERSION)
                && !help.contains("xtask"),
            "{help}"
        );
    }
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

// ---- the test plugin: panics, finding paths, what a callback sees ----

/// The digits pipeline with the test plugin, a `panicky` augmentation (`augment`
/// is added to its table) and the `event-log` callback (`callback` added to its table).
fn panicky_pipeline(out: &Path, augment: &str, callback: &str, extra: &str) -> String {
    digits_pipeline(
        out,
        &[library("test-panicky")],
        &format!(
            "\n[[data.augment]]\ntype = \"random-affine\"\n\n[[data.augment]]\ntype = \"panicky\"\nlevels = 3\n{augment}\n\n[callbacks.log]\ntype = \"event-log\"\n{callback}\n{extra}"
        ),
    )
}

/// Runs a pipeline that must fail while training; its error, and the output folder.
fn failed_run(text: String) -> lora_core::Error {
    let pipeline = check(text).into_pipeline().unwrap_or_else(|e| panic!("{e}"));
    match lora_cli::pipeline::run(pipeline, &ASSETS, true) {
        Ok(_) => panic!("the run must fail"),
        Err(e) => e,
    }
}

/// The metrics log is finished (not `.partial`), and it and the report say why.
fn assert_failure_recorded(out: &Path, why: &str) {
    assert!(!out.join("metrics.jsonl.partial").exists());
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl is finished");
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let fail = lines
        .iter()
        .find(|l| l["event"] == "intervention" && l["action"] == "fail")
        .expect("a fail intervention");
    assert!(fail["message"].as_str().unwrap().contains(why), "{fail}");
    assert_eq!(lines.last().unwrap()["event"], "end");
    let report = std::fs::read_to_string(out.join("report/report.html")).expect("a report");
    assert!(report.contains(why), "the report says why");
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "no adapter from a failed run"
    );
}

#[test]
fn a_panicking_augmentation_fails_the_run_naming_the_plugin_and_the_augmentation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let e = failed_run(panicky_pipeline(&out, "panic = true", "", ""));
    let message = e.to_string();
    assert_eq!(e.exit_code(), 1);
    assert!(
        message.contains("augmentation `panicky` of plugin `test-panicky`")
            && message.contains("panicky augmentation panics on purpose"),
        "{message}"
    );
    assert_failure_recorded(&out, "panicky augmentation panics on purpose");
}

#[test]
fn a_panicking_callback_fails_the_run_naming_the_plugin_and_the_callback() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let e = failed_run(panicky_pipeline(&out, "", "panic-at-step = 2", ""));
    let message = e.to_string();
    assert_eq!(e.exit_code(), 1);
    assert!(
        message.contains("callback `event-log` of plugin `test-panicky`")
            && message.contains("event-log panics at step 2 on purpose"),
        "{message}"
    );
    assert_failure_recorded(&out, "event-log panics at step 2 on purpose");
    // The callback saw step 1 and step 2 (where it panicked), then nothing more.
    let seen = std::fs::read_to_string(out.join("plugin-events.jsonl")).unwrap();
    assert_eq!(
        seen.lines().filter(|l| l.contains("\"kind\":\"Step\"")).count(),
        2,
        "{seen}"
    );
}

#[test]
fn a_panicking_rule_is_a_validation_error_naming_the_plugin_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let checked = check(panicky_pipeline(
        &dir.path().join("run"),
        "panic-in-rule = true",
        "",
        "",
    ));
    let d = checked
        .diagnostics
        .0
        .iter()
        .find(|d| d.code == "validate::rule-panicked")
        .unwrap_or_else(|| panic!("{}", checked.diagnostics));
    assert_eq!(d.severity, lora_core::diag::Severity::Error, "even for a warning rule");
    assert!(
        d.message.contains("rule `test-panicky::panics`")
            && d.message.contains("plugin `test-panicky`")
            && d.message.contains("panics on purpose"),
        "{}",
        d.message
    );
    assert_eq!(checked.into_pipeline().err().unwrap().exit_code(), 2);
}

#[test]
fn finding_paths_address_an_array_element_and_a_key_inside_it_and_warn_when_they_name_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let find = r#"find = ["data.augment.1.levels", "data.augment[1].levels", "data.augment[1]", "data.augment.7.levels", "data.augment.levels"]"#;
    let checked = check(panicky_pipeline(&dir.path().join("run"), find, "", ""));
    let text = checked.source.text.clone();
    let at = |d: &lora_core::diag::Diagnostic| {
        d.location.as_ref().map(|l| {
            let (line, column) = l.line_col();
            (text.lines().nth(line - 1).unwrap().to_string(), column)
        })
    };
    let found: Vec<_> = checked
        .diagnostics
        .0
        .iter()
        .filter(|d| d.code == "test-panicky::find")
        .collect();
    assert_eq!(found.len(), 5, "{}", checked.diagnostics);
    let by_path = |p: &str| {
        *found
            .iter()
            .find(|d| d.message.starts_with(&format!("found `{p}`")))
            .unwrap()
    };
    for p in ["data.augment.1.levels", "data.augment[1].levels"] {
        let d = by_path(p);
        assert_eq!(at(d), Some(("levels = 3".to_string(), 10)), "{p}");
        assert!(d.message.ends_with(": 3"), "the rule read the value too: {}", d.message);
    }
    let element = at(by_path("data.augment[1]")).expect("the element has a location");
    assert_eq!(element.0, "[[data.augment]]");
    // Which `[[data.augment]]`: the second one.
    let second_header = text.match_indices("[[data.augment]]").nth(1).unwrap().0;
    let element_offset = by_path("data.augment[1]").location.as_ref().unwrap().span.start;
    assert_eq!(element_offset, second_header);
    let unresolved: Vec<_> = checked
        .diagnostics
        .0
        .iter()
        .filter(|d| d.code == "plugin::finding-path")
        .collect();
    assert_eq!(unresolved.len(), 2, "{}", checked.diagnostics);
    for (d, p) in unresolved.iter().zip(["data.augment.7.levels", "data.augment.levels"]) {
        assert_eq!(d.severity, lora_core::diag::Severity::Warning);
        assert!(
            d.message.contains(&format!("`{p}`")) && d.message.contains("test-panicky"),
            "{}",
            d.message
        );
    }
    assert_eq!(at(by_path("data.augment.7.levels")), None);
}

#[test]
fn the_callback_sees_the_epochs_and_steps_that_metrics_jsonl_records() {
    let dir = tempfile::tempdir().unwrap();
    // 64 samples in batches of 32: 2 steps per epoch, 3 epochs, evaluations every 3 steps.
    let text = panicky_pipeline(&dir.path().join("run"), "", "", "")
        .replace("max-steps = 2", "epochs = 3")
        .replace("[eval]\n", "[eval]\nevery-steps = 3\n");
    let pipeline = check(text).into_pipeline().unwrap_or_else(|e| panic!("{e}"));
    let done = lora_cli::pipeline::run(pipeline, &ASSETS, true).unwrap_or_else(|e| panic!("{e}"));
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(done.output_dir.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let seen: Vec<(String, u64, u64)> = read("plugin-events.jsonl")
        .iter()
        .map(|e| {
            let kind = match e["kind"].as_str().unwrap() {
                "EpochEnd" => "epoch-end".to_string(),
                k => k.to_lowercase(),
            };
            (kind, e["step"].as_u64().unwrap(), e["epoch"].as_u64().unwrap())
        })
        .collect();
    let logged: Vec<(String, u64, u64)> = read("metrics.jsonl")
        .iter()
        .filter(|e| e["event"] != "intervention")
        .map(|e| {
            let step = e["step"].as_u64().unwrap_or(0);
            (
                e["event"].as_str().unwrap().to_string(),
                step,
                e["epoch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, logged);
    let evals: Vec<(u64, u64)> = seen.iter().filter(|e| e.0 == "eval").map(|e| (e.1, e.2)).collect();
    assert_eq!(evals, [(3, 1), (6, 2)], "0-based epochs: step 3 is in the second epoch");
    assert_eq!(seen.last().unwrap(), &("end".to_string(), 6, 2));
}

#[test]
fn a_copy_of_the_api_crate_builds_on_its_own_and_declares_its_own_version() {
    // A third-party author vendors the API crate at another version: it must build
    // outside this workspace, and a plugin built against it must declare that version.
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("lora-plugin-api");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/lora-plugin-api");
    std::fs::create_dir_all(api.join("src")).unwrap();
    for file in [
        "build.rs",
        "src/lib.rs",
        "src/components.rs",
        "src/value.rs",
        "src/boundary.rs",
    ] {
        std::fs::copy(source.join(file), api.join(file)).unwrap();
    }
    // The guide the doctests include is not part of a vendored copy.
    let lib = std::fs::read_to_string(api.join("src/lib.rs")).unwrap();
    std::fs::write(api.join("src/lib.rs"), lib.replace("#[cfg(doctest)]", "#[cfg(any())]")).unwrap();
    let manifest = std::fs::read_to_string(source.join("Cargo.toml")).unwrap();
    let host = lora_plugin_host::API_VERSION;
    let bumped = format!("{}.{}.0", host.major, host.minor + 1);
    let manifest = manifest.replacen(&format!("version = \"{host}\""), &format!("version = \"{bumped}\""), 1);
    assert!(manifest.contains(&bumped), "the manifest's version line");
    std::fs::write(api.join("Cargo.toml"), manifest).unwrap();

    let plugin = dir.path().join("vendored-plugin");
    std::fs::create_dir_all(plugin.join("src")).unwrap();
    std::fs::write(
        plugin.join("Cargo.toml"),
        "[package]\nname = \"vendored-plugin\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nlora-plugin-api = { path = \"../lora-plugin-api\" }\n",
    )
    .unwrap();
    std::fs::write(
        plugin.join("src/lib.rs"),
        "fn register(_: &mut dyn lora_plugin_api::Registrar) {}\nlora_plugin_api::export_plugin!(\"vendored\", \"0.1.0\", register);\n",
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "--offline", "--quiet"])
        .arg("--target-dir")
        .arg(dir.path().join("target"))
        .current_dir(&plugin)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let library = dir.path().join("target/release").join(format!(
        "{}vendored_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let (_, errors) = lora_plugin_host::load_all(&[lora_plugin_host::Request {
        path: library,
        location: None,
    }]);
    let message = errors.first().expect("refused").to_string();
    assert!(
        message.contains(&format!(
            "built against lora-plugin-api {bumped}, this host provides {host}"
        )),
        "{message}"
    );
}
