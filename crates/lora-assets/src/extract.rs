//! Unpacks one folder of an npm tarball (`.tgz`) or a Debian package (`.deb`)
//! with the system's own tools (`tar`, `dpkg-deb -x`), which already refuse
//! entries that escape the destination; a zip (wheel) goes through `unpack`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::manifest::Source;

/// Extracts `archive` into a scratch folder inside `dest`, then moves the
/// entries of its `root` folder into `dest`. Returns how many entries moved.
pub(crate) fn unpack_with_tool(source: Source, archive: &Path, root: &str, dest: &Path) -> Result<usize, String> {
    let scratch = dest.join(".extract");
    fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let result = extract(source, archive, &scratch).and_then(|()| move_root(&scratch, root, dest));
    // The scratch copy is not needed whatever happened; a leftover is harmless
    // (the whole destination is a scratch folder until it is marked complete).
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn extract(source: Source, archive: &Path, into: &Path) -> Result<(), String> {
    let mut cmd = match source {
        Source::Npm { .. } => {
            let mut c = Command::new("tar");
            c.args(["--no-same-owner", "--no-same-permissions", "-xzf"])
                .arg(archive)
                .arg("-C")
                .arg(into);
            c
        }
        Source::Debian { .. } => {
            let mut c = Command::new("dpkg-deb");
            c.arg("-x").arg(archive).arg(into);
            c
        }
        Source::PyPi { .. } => return Err("a wheel is unpacked with the zip reader, not a tool".into()),
    };
    let tool = match source {
        Source::Debian { .. } => "dpkg-deb -x",
        _ => "tar -xzf",
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{tool}` ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "`{tool}` failed on {} ({}): {}",
            archive.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn move_root(scratch: &Path, root: &str, dest: &Path) -> Result<usize, String> {
    let from = scratch.join(root.trim_end_matches('/'));
    if !from.is_dir() {
        return Err(format!("the archive has no folder `{root}`"));
    }
    let mut moved = 0;
    for entry in fs::read_dir(&from).map_err(|e| format!("cannot list {}: {e}", from.display()))? {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
        let to = dest.join(entry.file_name());
        fs::rename(entry.path(), &to).map_err(|e| format!("cannot move {}: {e}", entry.path().display()))?;
        moved += 1;
    }
    if moved == 0 {
        return Err(format!("the archive's folder `{root}` is empty"));
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tarball_root_is_moved_into_place_and_a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src/package/data");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("0.json"), b"{\"data\": [0.5]}").unwrap();
        fs::write(dir.path().join("src/package/README.md"), b"x").unwrap();
        let tgz = dir.path().join("p.tgz");
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(dir.path().join("src"))
            .arg("package")
            .status()
            .unwrap();
        assert!(ok.success());
        let npm = Source::Npm {
            package: "p",
            version: "1.0.0",
        };
        let dest = dir.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        assert_eq!(unpack_with_tool(npm, &tgz, "package/data", &dest).unwrap(), 1);
        assert_eq!(fs::read(dest.join("0.json")).unwrap(), b"{\"data\": [0.5]}");
        assert!(!dest.join(".extract").exists());
        assert!(!dest.join("README.md").exists());

        let dest2 = dir.path().join("dest2");
        fs::create_dir_all(&dest2).unwrap();
        let e = unpack_with_tool(npm, &tgz, "package/nope", &dest2).unwrap_err();
        assert!(e.contains("no folder `package/nope`"), "{e}");
        let e = unpack_with_tool(npm, &dir.path().join("src/package/README.md"), "package", &dest2).unwrap_err();
        assert!(e.contains("`tar -xzf` failed"), "{e}");
    }
}
