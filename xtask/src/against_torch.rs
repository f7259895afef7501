//! `cargo xtask bench --against-torch`: `lora bench` and the PyTorch + PEFT
//! baseline (`../shared/bench/peft_minilm.py`) alternated case by case in one
//! run, each in its own process, with the ratio PyTorch time / ours and the
//! peak RSS of both. The machine is shared: only ratios from one alternating
//! run compare, so the load average is printed with each case.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::cargo;

/// One row of the comparison.
struct Case {
    name: &'static str,
    /// `lora bench` arguments.
    ours: &'static [&'static str],
    /// `peft_minilm.py --only` configuration and the JSON key of its median.
    torch: &'static str,
    torch_key: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        name: "train b32 x 128, BERT's dropout 0.1",
        ours: &["--batch", "32", "--seq-len", "128", "--dropout"],
        torch: "train_b32_s128",
        torch_key: "step_s_median",
    },
    Case {
        name: "train b32 x 128, no dropout",
        ours: &["--batch", "32", "--seq-len", "128"],
        torch: "train_b32_s128_nodrop",
        torch_key: "step_s_median",
    },
    Case {
        name: "train b8 x 64, BERT's dropout 0.1",
        ours: &["--batch", "8", "--seq-len", "64", "--dropout"],
        torch: "train_b8_s64",
        torch_key: "step_s_median",
    },
    Case {
        name: "inference b32 x 128",
        ours: &["--batch", "32", "--seq-len", "128", "--inference"],
        torch: "infer_b32_s128",
        torch_key: "fwd_s_median",
    },
];

pub struct Options {
    pub backend: String,
    pub rounds: usize,
    pub warmup: usize,
    pub steps: usize,
    pub python: PathBuf,
    pub script: PathBuf,
}

impl Options {
    /// The defaults: the venv of `~/.cache/lora-scripts/venv-ref`, the script beside the workspace.
    pub fn new(backend: String) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        Self {
            backend,
            rounds: 1,
            warmup: 2,
            steps: 5,
            python: std::env::var_os("LORA_BENCH_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/lora-scripts/venv-ref/bin/python")),
            script: cargo::workspace_root().join("../shared/bench/peft_minilm.py"),
        }
    }
}

/// The 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Runs `cmd` under GNU time: its stdout and its peak RSS in MiB.
fn run_measured(program: &Path, args: &[String], envs: &[(&str, PathBuf)]) -> Result<(String, Option<f64>), String> {
    let rss_file = std::env::temp_dir().join(format!("lora-bench-rss-{}", std::process::id()));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(program).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.current_dir(cargo::workspace_root());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse::<f64>().ok()))
        .map(|kb| kb / 1024.0);
    let _ = std::fs::remove_file(&rss_file);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed: {}",
            program.display(),
            err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), rss))
}

/// The last JSON object line of `stdout`.
fn last_json(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
}

pub fn run(opts: &Options) -> ExitCode {
    if !opts.script.exists() || !opts.python.exists() {
        eprintln!(
            "error: the PyTorch baseline needs {} and {} (see ../shared/bench/README.md; \
             LORA_BENCH_PYTHON names another interpreter)",
            opts.script.display(),
            opts.python.display()
        );
        return ExitCode::from(2);
    }
    let lora = match cargo::build_lora_for(&opts.backend) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let cache = std::env::var_os("LORA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/lora-scripts")
        });
    let model_dir = cache.join("assets/all-minilm-l6-v2");
    let (warmup, steps) = (opts.warmup.to_string(), opts.steps.to_string());
    let mut failed = false;
    println!(
        "{:<44} {:>10} {:>10} {:>7} {:>10} {:>10} {:>6}",
        "case", "torch s", "ours s", "ratio", "torch MiB", "ours MiB", "load"
    );
    for round in 0..opts.rounds {
        for case in &CASES {
            let mut ours_args: Vec<String> = [
                "bench",
                "--backend",
                &opts.backend,
                "--warmup",
                &warmup,
                "--steps",
                &steps,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            ours_args.extend(case.ours.iter().map(|s| s.to_string()));
            let torch_args: Vec<String> = [
                opts.script.to_string_lossy().as_ref(),
                "--no-wait",
                "--retries",
                "0",
                "--peak-gflops",
                "250",
                "--only",
                case.torch,
                "--warmup",
                &warmup,
                "--steps",
                &steps,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let load_before = load();
            // Alternate which goes first, so that neither always follows the other.
            let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
            let (mut ours, mut torch) = (None, None);
            for is_ours in order {
                if is_ours {
                    ours = Some(run_measured(&lora, &ours_args, &[]));
                } else {
                    torch = Some(run_measured(
                        &opts.python,
                        &torch_args,
                        &[("MINILM_DIR", model_dir.clone())],
                    ));
                }
            }
            let ours = ours.expect("ran").and_then(|(out, rss)| {
                let t = last_json(&out)
                    .and_then(|v| v["median_step_s"].as_f64())
                    .ok_or_else(|| "no median in `lora bench`'s output".to_string())?;
                Ok((t, rss))
            });
            let torch = torch.expect("ran").and_then(|(out, rss)| {
                let t = last_json(&out)
                    .and_then(|v| v[case.torch][case.torch_key].as_f64())
                    .ok_or_else(|| format!("no {} in the baseline's output", case.torch_key))?;
                Ok((t, rss))
            });
            match (ours, torch) {
                (Ok((o, orss)), Ok((t, trss))) => {
                    let mib = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.0}"));
                    println!(
                        "{:<44} {:>10.3} {:>10.3} {:>6.2}x {:>10} {:>10} {:>6}",
                        case.name,
                        t,
                        o,
                        t / o,
                        mib(trss),
                        mib(orss),
                        format!("{load_before}-{}", load())
                    );
                }
                (o, t) => {
                    failed = true;
                    for e in [o.err(), t.err()].into_iter().flatten() {
                        eprintln!("error: {}: {e}", case.name);
                    }
                }
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
