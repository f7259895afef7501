//! `cargo xtask build-plugins`: builds the example plugin as a shared library,
//! twice: as it is (`target/plugins/`), and against a future plugin interface
//! (`target/plugins/incompatible/`) for the test of the version handshake.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str =
    "build-plugins        build plugins/example-salt-pepper into target/plugins/ (and an incompatible build)";

/// The example plugin's library file name on this platform.
pub fn library_name() -> String {
    format!(
        "{}example_salt_pepper{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

pub fn run(_args: &[String]) -> ExitCode {
    let out = cargo::target_dir().join("plugins");
    let builds = [
        (cargo::target_dir(), Vec::new(), out.clone()),
        (
            cargo::target_dir().join("plugins-incompatible-build"),
            vec!["--features", "lora-plugin-api/__test-future-major"],
            out.join("incompatible"),
        ),
    ];
    for (target, features, destination) in builds {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "--package", "example-salt-pepper", "--lib"])
            .args(&features)
            .arg("--target-dir")
            .arg(&target);
        let code = cargo::status(cmd);
        if code != ExitCode::SUCCESS {
            return code;
        }
        if let Err(e) = install(&target.join("release").join(library_name()), &destination) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    println!("plugins in {}", out.display());
    ExitCode::SUCCESS
}

/// Copies the library into `dir` under a temporary name, then renames it.
fn install(library: &Path, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let to = dir.join(library_name());
    let tmp = dir.join(format!(".{}.tmp", library_name()));
    std::fs::copy(library, &tmp).map_err(|e| format!("cannot copy {}: {e}", library.display()))?;
    std::fs::rename(&tmp, &to).map_err(|e| format!("cannot install {}: {e}", to.display()))?;
    Ok(to)
}
