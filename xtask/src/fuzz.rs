//! `cargo xtask fuzz [--seconds N] [TARGET]`: runs the fuzz harness of
//! `tests/fuzz.rs` (stable Rust, `arbitrary`) for N seconds per target (default
//! 60), or on one target, and prints the inputs each target tried. A finding is
//! saved with the command that replays it, and the exit code is non-zero.
//!
//! The normal test run (`cargo xtask test`) runs the same harness for a couple of
//! seconds per target.

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str =
    "fuzz [--seconds N] [TARGET]  fuzz each target (config, csv, jsonl, safetensors, handshake, idx, data) N seconds";

/// The targets of `tests/fuzz.rs`, for the usage message and an early typo check.
const TARGETS: [&str; 7] = ["config", "csv", "jsonl", "safetensors", "handshake", "idx", "data"];

pub fn run(args: &[String]) -> ExitCode {
    let mut seconds = 60.0_f64;
    let mut target: Option<String> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => match args.next().and_then(|s| s.parse::<f64>().ok()) {
                Some(s) if s > 0.0 && s.is_finite() => seconds = s,
                _ => return usage_error("--seconds takes a positive number"),
            },
            t if TARGETS.contains(&t) && target.is_none() => target = Some(t.to_string()),
            other => {
                return usage_error(&format!("unexpected `{other}`; targets: {}", TARGETS.join(", ")));
            }
        }
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--release",
        "--package",
        "lora-tests",
        "--test",
        "fuzz",
        "--",
        "--nocapture",
    ])
    .env("LORA_FUZZ_SECONDS", seconds.to_string())
    .env("LORA_FUZZ_TARGET", target.unwrap_or_default());
    cargo::status(cmd)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\nusage: cargo xtask {USAGE}");
    ExitCode::from(2)
}
