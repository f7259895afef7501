//! `cargo xtask bench [--backend NAME] [ARGS...]`: training-step speed and peak
//! memory, one JSON line per case (see `lora bench --help`).

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "bench [--backend B]  training-step speed and peak RSS on MiniLM-L6, JSON lines";

pub fn run(args: &[String]) -> ExitCode {
    let mut backend = "candle".to_string();
    let mut rest = Vec::new();
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
            _ => rest.push(a.clone()),
        }
    }
    let lora = match cargo::build_lora_for(&backend) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut cmd = Command::new(lora);
    cmd.args(["bench", "--backend", &backend]).args(rest);
    cargo::status(cmd)
}
