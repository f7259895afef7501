//! Unpacks one folder of a zip archive (a wheel is a zip). Done with the
//! `zip` crate rather than a shell `unzip`, so it works wherever Rust does
//! and entry paths can be checked before anything is written.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Component, Path};

use zip::ZipArchive;

/// Copies every entry under `root/` in `archive` to the same relative path
/// under `dest` (which must exist), and returns how many files were written.
///
/// Entries outside `root/` are skipped; an entry under it whose path would
/// escape `dest` (`..`, absolute) is an error, as is a `root` with no files.
pub(crate) fn unpack_folder(archive: &Path, root: &str, dest: &Path) -> Result<usize, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("{} is not a zip archive: {e}", archive.display()))?;
    let root = root.trim_end_matches('/');
    let prefix = format!("{root}/");
    let mut written = 0;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("cannot read entry {i} of {}: {e}", archive.display()))?;
        if !entry.name().starts_with(&prefix) {
            continue;
        }
        let name = entry.name().to_string();
        let rel = relative_to(&name, &prefix).ok_or_else(|| format!("archive entry `{name}` has an unsafe path"))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            continue;
        }
        if entry.is_symlink() {
            return Err(format!(
                "archive entry `{name}` is a symlink, which assets may not contain"
            ));
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let out = File::create(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        // Reading an entry to its end also checks its CRC-32.
        io::copy(&mut entry, &mut out)
            .and_then(|_| out.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()))
            .map_err(|e| format!("cannot unpack `{name}` to {}: {e}", target.display()))?;
        written += 1;
    }
    if written == 0 {
        return Err(format!("{} has no files under `{prefix}`", archive.display()));
    }
    Ok(written)
}

/// The part of entry `name` after `prefix`, if it can only name something
/// inside the destination: plain components, no `..`, no root, no NUL.
fn relative_to<'a>(name: &'a str, prefix: &str) -> Option<&'a Path> {
    let rest = Path::new(name.strip_prefix(prefix)?);
    let plain = rest
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (plain && !name.contains('\0')).then_some(rest)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use zip::ZipWriter;
    use zip::write::SimpleFileOptions;

    use super::*;

    /// Writes a zip with the given `(name, contents)` entries; a name ending in `/` is a folder.
    pub(crate) fn make_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = ZipWriter::new(File::create(path).unwrap());
        for (name, data) in entries {
            if name.ends_with('/') {
                zip.add_directory(*name, SimpleFileOptions::default()).unwrap();
            } else {
                zip.start_file(*name, SimpleFileOptions::default()).unwrap();
                zip.write_all(data).unwrap();
            }
        }
        zip.finish().unwrap();
    }

    #[test]
    fn unpacks_only_the_root_folder() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.whl");
        make_zip(
            &archive,
            &[
                ("pkg/__init__.py", b""),
                ("pkg/model/", b""),
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/sub/vocab.txt", b"a\nb\n"),
                ("pkg/modelx/other.txt", b"not me"),
                ("pkg-0.1.dist-info/METADATA", b"x"),
            ],
        );
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        assert_eq!(unpack_folder(&archive, "pkg/model", &dest).unwrap(), 2);
        assert_eq!(fs::read(dest.join("config.json")).unwrap(), b"{}");
        assert_eq!(fs::read(dest.join("sub/vocab.txt")).unwrap(), b"a\nb\n");
        assert!(!dest.join("other.txt").exists() && !dest.join("__init__.py").exists());
    }

    #[test]
    fn missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.whl");
        make_zip(&archive, &[("pkg/__init__.py", b"")]);
        let err = unpack_folder(&archive, "pkg/model", dir.path()).unwrap_err();
        assert!(err.contains("no files under `pkg/model/`"), "{err}");
    }

    #[test]
    fn escaping_entry_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.whl");
        make_zip(&archive, &[("pkg/model/../../evil.txt", b"x")]);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let err = unpack_folder(&archive, "pkg/model", &dest).unwrap_err();
        assert!(err.contains("unsafe path"), "{err}");
        assert!(!dir.path().join("evil.txt").exists());
    }

    #[test]
    fn not_a_zip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.whl");
        fs::write(&archive, b"definitely not a zip").unwrap();
        assert!(
            unpack_folder(&archive, "pkg", dir.path())
                .unwrap_err()
                .contains("not a zip archive")
        );
    }
}
