//! `cargo xtask build-plugins`: builds the example plugin as a shared library,
//! three times: as it is (`target/plugins/`), against a future plugin interface
//! (`target/plugins/incompatible/`) for the test of the version handshake, and
//! a build whose registration panics (`target/plugins/panicking/`); and the
//! test plugin whose components panic on request (`target/plugins/test-panicky/`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::cargo;

pub const USAGE: &str = "build-plugins        build plugins/example-salt-pepper into target/plugins/ (and test builds)";

/// A plugin crate's library file name on this platform.
pub fn library_name(package: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

pub fn run(_args: &[String]) -> ExitCode {
    let out = cargo::target_dir().join("plugins");
    let example = "example-salt-pepper";
    let builds = [
        (cargo::target_dir(), example, Vec::new(), out.clone()),
        (
            cargo::target_dir().join("plugins-incompatible-build"),
            example,
            vec!["--features", "lora-plugin-api/__test-future-major"],
            out.join("incompatible"),
        ),
        (
            cargo::target_dir().join("plugins-panicking-build"),
            example,
            vec!["--features", "example-salt-pepper/__test-panic"],
            out.join("panicking"),
        ),
        (
            cargo::target_dir(),
            "test-panicky",
            Vec::new(),
            out.join("test-panicky"),
        ),
    ];
    for (target, package, features, destination) in builds {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "--package", package, "--lib"])
            .args(&features)
            .arg("--target-dir")
            .arg(&target);
        let code = cargo::status(cmd);
        if code != ExitCode::SUCCESS {
            return code;
        }
        let name = library_name(package);
        if let Err(e) = install(&target.join("release").join(&name), &destination, &name) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    println!("plugins in {}", out.display());
    ExitCode::SUCCESS
}

/// Copies the library into `dir` under a temporary name, then renames it.
fn install(library: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let to = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(library, &tmp).map_err(|e| format!("cannot copy {}: {e}", library.display()))?;
    std::fs::rename(&tmp, &to).map_err(|e| format!("cannot install {}: {e}", to.display()))?;
    Ok(to)
}
