//! `cargo xtask run FILE [ARGS...]`: builds `lora` in release mode and runs the pipeline.

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "run FILE [ARGS...]   build `lora` (release) and run the pipeline FILE (--backend B)";

pub fn run(args: &[String]) -> ExitCode {
    let Some(file) = args.first().filter(|a| !a.starts_with('-')) else {
        eprintln!("usage: cargo xtask {USAGE}");
        return ExitCode::from(2);
    };
    // `--backend NAME` is passed on to `lora run`, and decides which backend gets compiled in.
    let backend = args
        .windows(2)
        .find(|w| w[0] == "--backend")
        .map(|w| w[1].as_str())
        .unwrap_or("candle");
    let lora = match cargo::build_lora_for(backend) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut cmd = Command::new(lora);
    cmd.arg("run").arg(file).args(&args[1..]);
    // Relative paths in FILE and the output folder are relative to where the user stands.
    match cmd.status() {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot start lora: {e}");
            ExitCode::from(1)
        }
    }
}
