//! `cargo xtask test [ARGS...]`: fetches the assets the integration tests use,
//! then runs every test of the workspace in release mode (one build tree; the
//! real model is far too slow in debug).

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "test [ARGS...]       fetch assets, then cargo test --release --workspace [ARGS]";

pub fn run(args: &[String]) -> ExitCode {
    for asset in lora_assets::assets() {
        if let Err(e) = lora_assets::ensure(asset.name) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--release", "--workspace"]).args(args);
    cargo::status(cmd)
}
