//! `cargo xtask bench --vit [--rounds N] [--steps N]`: training speed of
//! `configs/pretrain-vit-fashion.toml` (a small ViT trained from scratch on
//! Fashion-MNIST) in images per second, candle against burn, alternated in one
//! run: the pipeline itself (data, augmentation, step, optimizer) for `--steps`
//! steps on each backend, the median of each run's per-step rate over its last
//! three quarters (the first steps warm the caches and the allocator).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::against_torch::load;
use crate::cargo;

const CONFIG: &str = "configs/pretrain-vit-fashion.toml";
const BACKENDS: [&str; 2] = ["candle", "burn"];

struct Options {
    rounds: usize,
    steps: usize,
}

pub fn run(args: &[String]) -> ExitCode {
    let mut opts = Options { rounds: 2, steps: 40 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (slot, least) = match a.as_str() {
            "--rounds" => (&mut opts.rounds, 1),
            "--steps" => (&mut opts.steps, 4),
            _ => {
                eprintln!("usage: cargo xtask bench --vit [--rounds N] [--steps N]");
                return ExitCode::from(2);
            }
        };
        match it.next().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n >= least) {
            Some(n) => *slot = n,
            None => {
                eprintln!("error: {a} takes a number of at least {least}");
                return ExitCode::from(2);
            }
        }
    }
    let binaries = match build_each() {
        Ok(b) => b,
        Err(code) => return code,
    };
    let work = cargo::target_dir().join("bench-vit");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); BACKENDS.len()];
    for round in 1..=opts.rounds {
        for (i, (backend, lora)) in BACKENDS.iter().zip(&binaries).enumerate() {
            match images_per_s(lora, backend, opts.steps, &work) {
                Ok(r) => {
                    println!("round {round}: {backend} {r:.0} images/s (load {})", load());
                    rates[i].push(r);
                }
                Err(e) => {
                    eprintln!("error: {backend}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (candle, burn) = (best(&rates[0]), best(&rates[1]));
    println!(
        "{CONFIG}, {} steps of 128 images: candle {candle:.0} images/s, burn {burn:.0}: candle / burn {:.2}x (best of {} rounds each)",
        opts.steps,
        candle / burn,
        opts.rounds
    );
    ExitCode::SUCCESS
}

/// One `lora` per backend (each build overwrites `target/release/lora`, so each is copied aside).
fn build_each() -> Result<Vec<PathBuf>, ExitCode> {
    let mut out = Vec::new();
    for backend in BACKENDS {
        let built = cargo::build_lora_for(backend)?;
        out.push(cargo::keep_copy(
            &built,
            &built.with_file_name(format!("lora-bench-vit-{backend}")),
        )?);
    }
    Ok(out)
}

/// The median per-step images/s of one short run of the shipped config.
fn images_per_s(lora: &Path, backend: &str, steps: usize, work: &Path) -> Result<f64, String> {
    let out = work.join(backend);
    let _ = std::fs::remove_dir_all(&out);
    let sets = [
        format!("run.backend=\"{backend}\""),
        format!("run.output-dir=\"{}\"", out.display()),
        format!("train.max-steps={steps}"),
        "eval.every-steps=1000000".into(),
        "data.max-validation-samples=200".into(),
    ];
    let mut cmd = Command::new(lora);
    cmd.current_dir(cargo::workspace_root())
        .args(["run", CONFIG, "--quiet"]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let status = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", lora.display()))?;
    if !status.success() {
        return Err(format!("`lora run {CONFIG}` failed ({status})"));
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).map_err(|e| e.to_string())?;
    let mut rates: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .filter_map(|v| v["samples_per_s"].as_f64())
        .collect();
    let rates = rates.split_off(rates.len() / 4);
    median(rates).ok_or_else(|| "no step events in metrics.jsonl".into())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}
