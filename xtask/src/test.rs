//! `cargo xtask test [ARGS...]`: fetches the assets the integration tests use,
//! then runs every test in release mode (the real model is far too slow in
//! debug), one backend per build: first the workspace with candle, then burn's
//! crate, its suite and the cross-backend checks (which reuse candle's build),
//! and the kill-and-resume tests of `lora` on burn.
//! The example plugin is built first (`build-plugins`): the plugin tests load it.

use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "test [ARGS...]       fetch assets, test the candle build, then the burn build";

pub fn run(args: &[String]) -> ExitCode {
    for asset in lora_assets::assets() {
        if let Err(e) = lora_assets::ensure(asset.name) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    // The plugin tests load the example plugin's shared libraries.
    let code = crate::build_plugins::run(&[]);
    if code != ExitCode::SUCCESS {
        return code;
    }
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut candle = Command::new(&cargo_bin);
    candle
        .args(["test", "--release", "--workspace", "--exclude", "lora-backend-burn"])
        .args(args);
    let code = cargo::status(candle);
    if code != ExitCode::SUCCESS {
        return code;
    }
    let mut burn = Command::new(&cargo_bin);
    burn.args([
        "test",
        "--release",
        "--package",
        "lora-backend-burn",
        "--package",
        "lora-tests",
    ])
    .args([
        "--features",
        "lora-tests/burn",
        "--test",
        "burn",
        "--test",
        "cross_backend",
        "--test",
        "causal",
        "--lib",
    ])
    .args(args);
    let code = cargo::status(burn);
    if code != ExitCode::SUCCESS {
        return code;
    }
    // Kill-and-resume on burn: the `lora` binary with both backends, its burn tests only.
    let mut resume = Command::new(&cargo_bin);
    resume
        .args([
            "test",
            "--release",
            "--package",
            "lora-cli",
            "--features",
            "burn",
            "--test",
            "resume",
        ])
        .args(args);
    if !args.iter().any(|a| a == "--") {
        resume.arg("--");
    }
    resume.arg("burn_");
    cargo::status(resume)
}
