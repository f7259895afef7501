//! Running cargo and the built `lora` binary from xtask.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Cargo features of `lora-cli` for a backend name.
pub fn backend_features(backend: &str) -> Result<Vec<String>, String> {
    match backend {
        "candle" => Ok(vec![]),
        "burn" => Ok(vec!["burn".into()]),
        other => Err(format!("unknown backend `{other}` (available: candle, burn)")),
    }
}

/// Runs a command in the workspace root, mapping its status to an exit code.
pub fn status(mut cmd: Command) -> ExitCode {
    cmd.current_dir(workspace_root());
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot start {:?}: {e}", cmd.get_program());
            ExitCode::from(1)
        }
    }
}

/// Builds `lora` with the features of a backend; an unknown backend is a usage error (exit 2).
pub fn build_lora_for(backend: &str) -> Result<PathBuf, ExitCode> {
    match backend_features(backend) {
        Ok(features) => build_lora(&features),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Builds the `lora` binary in release mode (tensor math in debug is about 100x slower).
pub fn build_lora(features: &[String]) -> Result<PathBuf, ExitCode> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--release", "--package", "lora-cli", "--bin", "lora"]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let code = status(cmd);
    if code != ExitCode::SUCCESS {
        return Err(code);
    }
    Ok(target_dir().join("release").join("lora"))
}

/// Copies a built binary to `to` (its folder created), so that a rebuild of the
/// workspace while it runs cannot change the program under a measurement.
pub fn keep_copy(built: &Path, to: &Path) -> Result<PathBuf, ExitCode> {
    let copied = to
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::copy(built, to));
    match copied {
        Ok(_) => Ok(to.to_path_buf()),
        Err(e) => {
            eprintln!("error: cannot copy {} to {}: {e}", built.display(), to.display());
            Err(ExitCode::from(1))
        }
    }
}
