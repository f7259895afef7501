//! Every validation rule trips on its example edit of the reference pipeline
//! and stays silent without it; the broken pipelines of `validate/broken`
//! produce exactly the diagnostics of their snapshots (`BLESS=1` rewrites them;
//! a `# env: NAME=value` line in a broken pipeline sets an environment variable).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lora_core::diag::Diagnostics;
use lora_core::registry::ModelEntry;
use lora_core::rules::{Edit, rules};
use lora_validate::Overrides;

static ASSETS: lora_assets::CacheResolver = lora_assets::CacheResolver;

// A model type that only another backend has, for `backend::model-unavailable`.
lora_core::inventory::submit! {
    ModelEntry {
        backend: "burn",
        name: "test-only-model",
        summary: "registered by tests/validate.rs only",
        build: |_| Err(Diagnostics::default()),
    }
}

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> String {
    tests_dir().join("validate").display().to_string()
}

fn reference() -> PathBuf {
    tests_dir().join("../configs/sentiment-minilm.toml")
}

/// The codes that validation reports for the reference pipeline with `edits` applied.
fn codes(edits: &[Edit], out: &Path) -> BTreeSet<String> {
    let base = edits
        .iter()
        .find_map(|e| match e {
            Edit::Base(path) => Some(tests_dir().join("..").join(path)),
            _ => None,
        })
        .unwrap_or_else(reference);
    let mut text = std::fs::read_to_string(&base).unwrap();
    // A fresh output folder, so that an earlier run of the README command does not trip anything.
    let mut overrides = Overrides {
        env: Vec::new(),
        sets: vec![format!("run.output-dir={}", out.display())],
    };
    // A port that is taken for as long as this check runs.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let fill = |s: &str| s.replace("{fixtures}", &fixtures()).replace("{busy_port}", &busy_port);
    for e in edits {
        match e {
            Edit::Set(s) => overrides.sets.push(fill(s)),
            Edit::Replace(from, to) => {
                assert!(text.contains(from), "`{from}` is not in the reference pipeline");
                text = text.replacen(from, &fill(to), 1);
            }
            Edit::Env(k, v) => overrides.env.push((k.to_string(), v.to_string())),
            Edit::Base(_) => {}
        }
    }
    let diagnostics = match lora_validate::compose_text(&base, text, &overrides) {
        Ok(composed) => lora_cli::validate::check_composed(composed, &ASSETS).diagnostics,
        Err(d) => d,
    };
    diagnostics.0.into_iter().map(|d| d.code).collect()
}

/// Warnings the real corpus earns (13% of tweets carry non-UTF-8 bytes; 7% of the
/// validation split repeats a training tweet): true findings, so the reference keeps them.
const REFERENCE_WARNINGS: [&str; 2] = ["data::encoding-errors", "data::train-validation-overlap"];

/// A variant of the reference on a clean fixture, for the rules the reference trips.
const CLEAN: [Edit; 1] = [Edit::Set("data.path=\"{fixtures}/data/three-classes.csv\"")];

#[test]
fn the_reference_pipeline_has_only_the_corpus_warnings() {
    let out = tempfile::tempdir().unwrap();
    let found = codes(&[], &out.path().join("run"));
    assert_eq!(found, REFERENCE_WARNINGS.iter().map(|s| s.to_string()).collect());
    let clean = codes(&CLEAN, &out.path().join("run"));
    for w in REFERENCE_WARNINGS {
        assert!(!clean.contains(w), "{w} fires on the clean variant: {clean:?}");
    }
}

#[test]
fn every_rule_trips_on_its_example_and_not_without_it() {
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let base = codes(&[], &run);
    let all = rules();
    assert!(all.len() >= 150, "{} rules", all.len());
    // Each check reads the real corpus; two threads halve the wall time.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(all.len().div_ceil(2))
            .map(|chunk| {
                let (run, base) = (&run, &base);
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for rule in chunk {
                        let found = codes(rule.trip, run);
                        if !found.contains(rule.id) {
                            failures.push(format!("{} does not fire on its example (found {found:?})", rule.id));
                        }
                        // The configuration without the rule's edits must not trip it.
                        let own_base: Vec<Edit> = rule
                            .trip
                            .iter()
                            .filter(|e| matches!(e, Edit::Base(_)))
                            .copied()
                            .collect();
                        let clean = if own_base.is_empty() {
                            base.clone()
                        } else {
                            codes(&own_base, run)
                        };
                        if clean.contains(rule.id) && !REFERENCE_WARNINGS.contains(&rule.id) {
                            failures.push(format!("{} fires without its edits", rule.id));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} rules:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// Rendered diagnostics with this machine's paths replaced, so snapshots travel.
fn render(d: &Diagnostics) -> String {
    let cache = lora_assets::cache_dir().unwrap().display().to_string();
    let text = d
        .to_string()
        .replace(&cache, "<cache>")
        .replace(&tests_dir().display().to_string(), "<tests>");
    format!("{text}\n")
}

#[test]
fn the_broken_pipeline_corpus_matches_its_snapshots() {
    let dir = tests_dir().join("validate/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{} broken pipelines", files.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut stale = Vec::new();
    for file in &files {
        // Paths as a user types them, relative to the folder `cargo test` runs in.
        let relative = file.strip_prefix(tests_dir()).unwrap();
        // `# env: NAME=value` lines stand for the environment the pipeline is validated in.
        let env = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("# env: ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let overrides = Overrides { env, sets: Vec::new() };
        let diagnostics = match lora_cli::validate::check_file(relative, &overrides, &ASSETS) {
            Ok(checked) => checked.diagnostics,
            Err(d) => d,
        };
        assert!(
            diagnostics.has_errors() || !diagnostics.is_empty(),
            "{} has no problem",
            relative.display()
        );
        let got = render(&diagnostics);
        let snapshot = file.with_extension("stderr");
        if bless {
            std::fs::write(&snapshot, &got).unwrap();
        } else if std::fs::read_to_string(&snapshot).ok().as_deref() != Some(got.as_str()) {
            stale.push(format!("--- {}\n{got}", snapshot.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "snapshots differ (BLESS=1 rewrites them):\n{}",
        stale.join("\n")
    );
}

#[test]
fn config_show_names_the_origin_of_every_value() {
    let out = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        env: vec![
            ("LORA__TRAIN__BATCH_SIZE".into(), "16".into()),
            ("OVERRIDE_LR".into(), "1e-3".into()),
            ("PATH".into(), "/usr/bin".into()),
        ],
        sets: vec![
            "eval.every-steps=50".into(),
            format!("run.output-dir={}", out.path().join("run").display()),
        ],
    };
    let checked = lora_cli::validate::check_file(&reference(), &overrides, &ASSETS).unwrap();
    let shown = lora_cli::show::render(checked.pipeline.as_ref().unwrap(), &checked.source);
    let lines: Vec<String> = shown
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for expected in [
        "batch-size = 16 # env LORA__TRAIN__BATCH_SIZE=16",
        "lr = 0.001 # env OVERRIDE_LR=1e-3",
        "every-steps = 50 # --set eval.every-steps=50",
        "use-rslora = false # default",
    ] {
        assert!(lines.iter().any(|l| l == expected), "missing `{expected}` in\n{shown}");
    }
    let r = lines.iter().find(|l| l.starts_with("r = 8")).unwrap();
    assert!(r.ends_with("configs/sentiment-minilm.toml:38"), "{r}");
}
