//! `cargo xtask bench --against-torch`: `lora bench` and a PyTorch + PEFT
//! baseline alternated case by case in one run, each in its own process, with
//! the ratio PyTorch time / ours and the peak RSS of both. The machine is
//! shared: only ratios from one alternating run compare, so the load average
//! is printed with each case. After the last round, each case's ratios are
//! summed up as their median and range: this machine's speed drifts by 10-30%
//! from one minute to the next, so a single round says little.
//!
//! The machinery ([`run`]) takes a [`Suite`]: MiniLM against
//! `../shared/bench/peft_minilm.py` ([`minilm`], the default) or SmolLM2
//! against `xtask/bench/peft_smollm2.py` (`crate::bench_causal`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::cargo;

/// One row of the comparison.
pub struct Case {
    pub name: &'static str,
    /// `lora bench` arguments (after the suite's own).
    pub ours: &'static [&'static str],
    /// The key of ours' figure, in seconds, in the last JSON line that has it.
    pub ours_key: &'static str,
    /// The baseline's `--only` case and the key of its figure, in seconds.
    pub torch: &'static str,
    pub torch_key: &'static str,
}

/// What to compare: the cases and how to run each side.
pub struct Suite {
    pub cases: &'static [Case],
    /// `lora bench` arguments before each case's own (e.g. `--causal`).
    pub ours_args: Vec<String>,
    /// The baseline script and its arguments before `--only CASE --warmup N --steps N`.
    pub script: PathBuf,
    pub torch_args: Vec<String>,
    /// Environment of the baseline.
    pub torch_env: Vec<(&'static str, PathBuf)>,
    /// Where to read how to set the baseline up.
    pub setup: &'static str,
}

const MINILM_CASES: [Case; 4] = [
    Case {
        name: "train b32 x 128, BERT's dropout 0.1",
        ours: &["--batch", "32", "--seq-len", "128", "--dropout"],
        ours_key: "median_step_s",
        torch: "train_b32_s128",
        torch_key: "step_s_median",
    },
    Case {
        name: "train b32 x 128, no dropout",
        ours: &["--batch", "32", "--seq-len", "128"],
        ours_key: "median_step_s",
        torch: "train_b32_s128_nodrop",
        torch_key: "step_s_median",
    },
    Case {
        name: "train b8 x 64, BERT's dropout 0.1",
        ours: &["--batch", "8", "--seq-len", "64", "--dropout"],
        ours_key: "median_step_s",
        torch: "train_b8_s64",
        torch_key: "step_s_median",
    },
    Case {
        name: "inference b32 x 128",
        ours: &["--batch", "32", "--seq-len", "128", "--inference"],
        ours_key: "median_step_s",
        torch: "infer_b32_s128",
        torch_key: "fwd_s_median",
    },
];

/// MiniLM-L6 against `../shared/bench/peft_minilm.py`.
pub fn minilm() -> Suite {
    Suite {
        cases: &MINILM_CASES,
        ours_args: vec![],
        script: cargo::workspace_root().join("../shared/bench/peft_minilm.py"),
        torch_args: ["--no-wait", "--retries", "0", "--peak-gflops", "250"]
            .map(String::from)
            .to_vec(),
        torch_env: vec![("MINILM_DIR", asset_cache().join("assets/all-minilm-l6-v2"))],
        setup: "../shared/bench/README.md",
    }
}

pub struct Options {
    pub backend: String,
    pub rounds: usize,
    pub warmup: usize,
    pub steps: usize,
    pub python: PathBuf,
}

impl Options {
    /// The defaults: the venv of `~/.cache/lora-scripts/venv-ref`.
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
        }
    }
}

/// The asset cache `cargo xtask fetch` fills (`LORA_CACHE_DIR`).
pub fn asset_cache() -> PathBuf {
    std::env::var_os("LORA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/lora-scripts")
        })
}

/// The 1-minute load average.
pub fn load() -> String {
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

/// The number at `path` in the last JSON object line of `stdout` that has one
/// (`lora bench --causal` prints a training line, then a generation line).
fn last_number(stdout: &str, path: &[&str]) -> Option<f64> {
    stdout.lines().rev().find_map(|l| {
        let v = serde_json::from_str::<serde_json::Value>(l.trim()).ok()?;
        path.iter().try_fold(&v, |v, k| v.get(k))?.as_f64()
    })
}

pub fn run(opts: &Options, suite: &Suite) -> ExitCode {
    if !suite.script.exists() || !opts.python.exists() {
        eprintln!(
            "error: the PyTorch baseline needs {} and {} (see {}; \
             LORA_BENCH_PYTHON names another interpreter)",
            suite.script.display(),
            opts.python.display(),
            suite.setup
        );
        return ExitCode::from(2);
    }
    let lora = match cargo::build_lora_for(&opts.backend) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (warmup, steps) = (opts.warmup.to_string(), opts.steps.to_string());
    let mut failed = false;
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); suite.cases.len()];
    println!(
        "{:<44} {:>10} {:>10} {:>7} {:>10} {:>10} {:>6}",
        "case", "torch s", "ours s", "ratio", "torch MiB", "ours MiB", "load"
    );
    for round in 0..opts.rounds {
        for (case, ratios) in suite.cases.iter().zip(&mut ratios) {
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
            ours_args.extend(suite.ours_args.iter().cloned());
            ours_args.extend(case.ours.iter().map(|s| s.to_string()));
            let mut torch_args = vec![suite.script.to_string_lossy().into_owned()];
            torch_args.extend(suite.torch_args.iter().cloned());
            torch_args.extend(["--only", case.torch, "--warmup", &warmup, "--steps", &steps].map(String::from));
            let load_before = load();
            // Alternate which goes first, so that neither always follows the other.
            let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
            let (mut ours, mut torch) = (None, None);
            for is_ours in order {
                if is_ours {
                    ours = Some(run_measured(&lora, &ours_args, &[]));
                } else {
                    torch = Some(run_measured(&opts.python, &torch_args, &suite.torch_env));
                }
            }
            let ours = ours.expect("ran").and_then(|(out, rss)| {
                let t = last_number(&out, &[case.ours_key])
                    .ok_or_else(|| format!("no {} in `lora bench`'s output", case.ours_key))?;
                Ok((t, rss))
            });
            let torch = torch.expect("ran").and_then(|(out, rss)| {
                let t = last_number(&out, &[case.torch, case.torch_key])
                    .ok_or_else(|| format!("no {} in the baseline's output", case.torch_key))?;
                Ok((t, rss))
            });
            match (ours, torch) {
                (Ok((o, orss)), Ok((t, trss))) => {
                    let mib = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.0}"));
                    ratios.push(t / o);
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
    println!("\n{:<44} {:>7} {:>15} {:>7}", "case", "median", "range", "rounds");
    for (case, ratios) in suite.cases.iter().zip(&ratios) {
        if let Some(s) = Summary::of(ratios) {
            let range = format!("{:.2}x-{:.2}x", s.min, s.max);
            println!("{:<44} {:>6.2}x {range:>15} {:>7}", case.name, s.median, ratios.len());
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// A case's ratios over the rounds.
#[derive(Debug, PartialEq)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    /// `None` for no ratios; the mean of the middle two for an even count.
    fn of(ratios: &[f64]) -> Option<Self> {
        let mut v = ratios.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Summary, last_number};

    #[test]
    fn a_summary_is_the_median_and_range_of_the_rounds() {
        let s = |median, min, max| Some(Summary { median, min, max });
        assert_eq!(Summary::of(&[1.2, 0.9, 1.5]), s(1.2, 0.9, 1.5));
        assert_eq!(Summary::of(&[1.0, 2.0, 0.5, 1.5]), s(1.25, 0.5, 2.0));
        assert_eq!(Summary::of(&[0.8]), s(0.8, 0.8, 0.8));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn last_number_reads_the_last_line_that_has_the_key() {
        // `lora bench --causal`: a training line, then a generation line, around other output.
        let ours = "loading\n{\"median_step_s\": 2.5}\n{\"s_per_token\": 0.25, \"tokens_per_s\": 4.0}\n";
        assert_eq!(last_number(ours, &["median_step_s"]), Some(2.5));
        assert_eq!(last_number(ours, &["s_per_token"]), Some(0.25));
        // The baseline: one line, the figure under its case.
        let torch = "{\"generate\": {\"s_per_token\": 0.5}, \"load_s\": 3}\nwarning: ...\n";
        assert_eq!(last_number(torch, &["generate", "s_per_token"]), Some(0.5));
        assert_eq!(last_number(torch, &["train_b1_s256", "step_s_median"]), None);
        assert_eq!(last_number("{\"median_step_s\": \"fast\"}", &["median_step_s"]), None);
    }
}
