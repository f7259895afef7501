//! `cargo xtask bench --strategies [--steps N] [--nproc N]`: each strategy on
//! the sentiment pipeline (shortened) with N processes (default 2) against one
//! process: bytes each process sends per optimizer step, seconds in
//! collectives, and the step time, from the runs' `metrics.jsonl`. One JSON
//! line per strategy, then a Markdown table.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::cargo;

/// Each strategy with its options (the defaults, or a setting the table names).
const STRATEGIES: [(&str, &[&str]); 12] = [
    ("ddp", &[]),
    ("ddp-no-sync", &[]),
    ("ddp-overlap", &[]),
    ("zero1", &[]),
    ("zero2", &[]),
    ("hierarchical", &[]),
    ("local-sgd", &["strategy.sync-every=4"]),
    ("diloco", &["strategy.sync-every=4"]),
    ("fp16-compress", &[]),
    ("bf16-compress", &[]),
    ("topk", &["strategy.ratio=0.01"]),
    ("powersgd", &["strategy.rank=2"]),
];

/// Per-step means over the steps after the first (warm-up): step seconds of
/// the slowest rank, and each rank's bytes and communication seconds averaged.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    step_s: f64,
    bytes: f64,
    comm_s: f64,
}

fn figures(log: &Path) -> Result<Figures, String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut steps = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", log.display()))?;
        if v["event"] != "step" {
            continue;
        }
        let f = match v["ranks"].as_array() {
            Some(ranks) if !ranks.is_empty() => {
                let n = ranks.len() as f64;
                let get = |k: &'static str| ranks.iter().map(move |r| r[k].as_f64().unwrap_or(0.0));
                Figures {
                    step_s: get("step_s").fold(0.0, f64::max),
                    bytes: get("bytes_sent").sum::<f64>() / n,
                    comm_s: get("comm_s").sum::<f64>() / n,
                }
            }
            // One process without a strategy: the step's own figures.
            _ => Figures {
                step_s: v["data_s"].as_f64().unwrap_or(0.0)
                    + v["forward_backward_s"].as_f64().unwrap_or(0.0)
                    + v["optimizer_s"].as_f64().unwrap_or(0.0),
                ..Figures::default()
            },
        };
        steps.push(f);
    }
    let measured = &steps[1.min(steps.len())..];
    if measured.is_empty() {
        return Err(format!("{}: no step after the first", log.display()));
    }
    let n = measured.len() as f64;
    Ok(Figures {
        step_s: measured.iter().map(|f| f.step_s).sum::<f64>() / n,
        bytes: measured.iter().map(|f| f.bytes).sum::<f64>() / n,
        comm_s: measured.iter().map(|f| f.comm_s).sum::<f64>() / n,
    })
}

fn run_one(lora: &Path, nproc: usize, out: &Path, steps: usize, sets: &[String]) -> Result<Figures, String> {
    let mut cmd = if nproc > 1 {
        let mut c = Command::new("mpirun");
        c.args(["-np", &nproc.to_string(), "--oversubscribe", "--allow-run-as-root"])
            .args(["-x", "RAYON_NUM_THREADS=1"])
            .arg(lora);
        c
    } else {
        let mut c = Command::new(lora);
        c.env("RAYON_NUM_THREADS", "1");
        c
    };
    cmd.arg("run")
        .arg(cargo::workspace_root().join("configs/sentiment-minilm.toml"))
        .arg("--quiet")
        .args(["--set", &format!("run.output-dir={}", out.display())])
        .args(["--set", &format!("train.max-steps={steps}")])
        .args(["--set", "train.gradient-accumulation-steps=2"])
        .args(["--set", "train.batch-size=16"])
        .args(["--set", "data.max-validation-samples=64"])
        .args(["--set", "monitor.report=false"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let output = cmd.output().map_err(|e| format!("cannot start the run: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the run failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        ));
    }
    figures(&out.join("metrics.jsonl"))
}

pub fn run(args: &[String]) -> ExitCode {
    let mut steps = 8;
    let mut nproc = 2;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = |v: Option<&String>| v.and_then(|v| v.parse::<usize>().ok());
        match a.as_str() {
            "--steps" => steps = value(it.next()).unwrap_or(0),
            "--nproc" => nproc = value(it.next()).unwrap_or(0),
            other => {
                eprintln!("unknown argument `{other}`; usage: cargo xtask bench --strategies [--steps N] [--nproc N]");
                return ExitCode::from(2);
            }
        }
    }
    if steps < 2 || nproc < 2 {
        eprintln!("--steps must be at least 2 (the first is warm-up) and --nproc at least 2");
        return ExitCode::from(2);
    }
    let lora = match cargo::build_lora(&["mpi".into()]) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let dir: PathBuf = std::env::temp_dir().join(format!("lora-bench-strategies-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let one = match run_one(&lora, 1, &dir.join("one"), steps, &[]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: one process: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({"strategy": "one process", "processes": 1, "step_s": one.step_s})
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for (name, options) in STRATEGIES {
        let mut sets = vec![format!("strategy.type=\"{name}\"")];
        sets.extend(options.iter().map(|s| s.to_string()));
        match run_one(&lora, nproc, &dir.join(name), steps, &sets) {
            Ok(f) => {
                println!(
                    "{}",
                    serde_json::json!({
                        "strategy": name, "processes": nproc, "options": options,
                        "bytes_per_step": f.bytes, "comm_s_per_step": f.comm_s,
                        "step_s": f.step_s, "step_s_one_process": one.step_s,
                        "ratio": f.step_s / one.step_s,
                    })
                );
                rows.push((name, options, f));
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    println!(
        "\n| strategy | bytes sent per step per process | s in collectives per step | step s ({nproc} procs) | step s (1 proc) | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, options, f) in rows {
        let label = if options.is_empty() {
            name.to_string()
        } else {
            format!("{name} ({})", options.join(", "))
        };
        println!(
            "| {label} | {:.0} | {:.4} | {:.3} | {:.3} | {:.2} |",
            f.bytes,
            f.comm_s,
            f.step_s,
            one.step_s,
            f.step_s / one.step_s
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
