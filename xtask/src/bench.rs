//! `cargo xtask bench [--backend NAME] [ARGS...]`: training-step speed and peak
//! memory, one JSON line per case (see `lora bench --help`).

use std::process::{Command, ExitCode};

use crate::{against_torch, cargo};

pub const USAGE: &str = "bench [--backend B] [--memory | --vit [--rounds N] [--steps N] | --strategies [--accuracy [--seeds S] [--only NAME,...]] | [--causal] --against-torch [--rounds N] [--warmup N] [--steps N]]  training-step speed and peak RSS on MiniLM-L6 (--causal: SmolLM2), JSON lines; --strategies: bytes and step time per distributed strategy, N processes against 1 (--accuracy: the inexact strategies' sentiment accuracy against ddp); --against-torch: the ratios to PyTorch + PEFT; --vit: configs/pretrain-vit-fashion.toml's images/s, candle against burn";

/// `--memory`: each variant in its own process (a process's peak RSS cannot be
/// reset below what its allocator keeps): gradient checkpointing off and on at
/// 8 x 512 and 32 x 512, then f32 and bf16 base weights at 32 x 128. candle
/// without checkpointing at 32 x 512 needs about 21 GiB (the planner's figure):
/// it runs last, and a case that fails is reported without stopping the others.
const MEMORY_CASES: [&[&str]; 6] = [
    &["--batch", "8", "--seq-len", "512", "--warmup", "1", "--steps", "1"],
    &[
        "--batch",
        "8",
        "--seq-len",
        "512",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--checkpointing",
    ],
    &["--batch", "32", "--seq-len", "128", "--warmup", "1", "--steps", "3"],
    &[
        "--batch",
        "32",
        "--seq-len",
        "128",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--dtype",
        "bf16",
    ],
    &[
        "--batch",
        "32",
        "--seq-len",
        "512",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--checkpointing",
    ],
    &["--batch", "32", "--seq-len", "512", "--warmup", "1", "--steps", "1"],
];

pub fn run(args: &[String]) -> ExitCode {
    if let Some(i) = args.iter().position(|a| a == "--vit") {
        let mut rest = args.to_vec();
        rest.remove(i);
        return crate::bench_vit::run(&rest);
    }
    if let Some(i) = args.iter().position(|a| a == "--strategies") {
        let mut rest = args.to_vec();
        rest.remove(i);
        if let Some(j) = rest.iter().position(|a| a == "--accuracy") {
            rest.remove(j);
            return crate::bench_accuracy::run(&rest);
        }
        return crate::bench_strategies::run(&rest);
    }
    let mut backend = "candle".to_string();
    let mut rest = Vec::new();
    let mut memory = false;
    let mut against = false;
    let mut torch = against_torch::Options::new(backend.clone());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => match it.next() {
                Some(b) => backend = b.clone(),
                None => {
                    eprintln!("usage: cargo xtask {USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--memory" => memory = true,
            "--against-torch" => against = true,
            "--rounds" | "--warmup" | "--steps" if against => {
                let Some(n) = it.next().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0) else {
                    eprintln!("error: {a} takes a positive number");
                    return ExitCode::from(2);
                };
                match a.as_str() {
                    "--rounds" => torch.rounds = n,
                    "--warmup" => torch.warmup = n,
                    _ => torch.steps = n,
                }
            }
            _ => rest.push(a.clone()),
        }
    }
    if against {
        let suite = match rest.as_slice() {
            [] => against_torch::minilm(),
            [c] if c == "--causal" => crate::bench_causal::suite(),
            _ => {
                eprintln!("usage: cargo xtask {USAGE}");
                return ExitCode::from(2);
            }
        };
        if memory {
            eprintln!("usage: cargo xtask {USAGE}");
            return ExitCode::from(2);
        }
        torch.backend = backend;
        return against_torch::run(&torch, &suite);
    }
    let lora = match cargo::build_lora_for(&backend) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if memory {
        let mut failed = 0;
        for case in MEMORY_CASES {
            let mut cmd = Command::new(&lora);
            cmd.args(["bench", "--backend", &backend]).args(case).args(&rest);
            if cargo::status(cmd) != ExitCode::SUCCESS {
                eprintln!("error: `lora bench {}` failed (killed for memory?)", case.join(" "));
                failed += 1;
            }
        }
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let mut cmd = Command::new(lora);
    cmd.args(["bench", "--backend", &backend]).args(rest);
    cargo::status(cmd)
}
