//! `cargo xtask test [ARGS...]`: fetches the assets the integration tests use,
//! then runs every test in release mode (the real model is far too slow in
//! debug), one backend per build: first the workspace with candle, then burn's
//! crate, its suite and the cross-backend checks (which reuse candle's build),
//! and the kill-and-resume tests of `lora` on burn.
//! The example plugin is built first (`build-plugins`): the plugin tests load it.
//!
//! Where Open MPI's compiler wrapper (`mpicc`) is installed, every build turns
//! on `lora-cli/mpi`, so the MPI tests (`lora-cli/tests/mpi.rs`: `mpirun -np 2`
//! and `-np 4`) run in the same build trees instead of a third one.

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
    let mpi = mpi_available();
    if !mpi {
        eprintln!(
            "note: mpicc not found: the MPI tests are left out (install openmpi-bin, libopenmpi-dev, libclang-dev)"
        );
    }
    let with_mpi = |features: &str| -> Vec<String> {
        match (mpi, features.is_empty()) {
            (false, true) => vec![],
            (false, false) => vec!["--features".into(), features.into()],
            (true, true) => vec!["--features".into(), "lora-cli/mpi".into()],
            (true, false) => vec!["--features".into(), format!("{features},lora-cli/mpi")],
        }
    };
    let mut candle = Command::new(&cargo_bin);
    candle
        .args(["test", "--release", "--workspace", "--exclude", "lora-backend-burn"])
        .args(with_mpi(""))
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
    .args(with_mpi("lora-tests/burn"))
    .args(["--test", "burn", "--test", "cross_backend", "--test", "causal", "--lib"])
    .args(args);
    let code = cargo::status(burn);
    if code != ExitCode::SUCCESS {
        return code;
    }
    // Kill-and-resume on burn: the `lora` binary with both backends, its burn tests only.
    let mut resume = Command::new(&cargo_bin);
    resume
        .args(["test", "--release", "--package", "lora-cli"])
        .args(with_mpi("burn"))
        .args(["--test", "resume"])
        .args(args);
    if !args.iter().any(|a| a == "--") {
        resume.arg("--");
    }
    resume.arg("burn_");
    cargo::status(resume)
}

/// Whether Open MPI's development files are installed (its compiler wrapper is on the PATH).
fn mpi_available() -> bool {
    Command::new("mpicc")
        .arg("--showme:version")
        .output()
        .is_ok_and(|o| o.status.success())
}
