//! Scratch folders that disappear unless explicitly kept, so that no error
//! path (early return, `?`) can leave a half-written folder behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates an empty folder at `path`, first removing whatever a crashed
    /// earlier run with the same name left there.
    pub(crate) fn create(path: PathBuf) -> io::Result<Self> {
        remove_if_present(&path)?;
        fs::create_dir_all(&path)?;
        Ok(ScratchDir { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The folder has been moved away (renamed into place): nothing to clean up.
    pub(crate) fn disarm(mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: failing to clean scratch space must not mask the real error.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes a file or folder tree; absent is fine.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_unless_disarmed() {
        let base = tempfile::tempdir().unwrap();
        let a = base.path().join("a");
        {
            let s = ScratchDir::create(a.clone()).unwrap();
            fs::write(s.path().join("x"), b"1").unwrap();
        }
        assert!(!a.exists());

        let b = base.path().join("b");
        ScratchDir::create(b.clone()).unwrap().disarm();
        assert!(b.is_dir());
    }

    #[test]
    fn create_clears_stale_contents() {
        let base = tempfile::tempdir().unwrap();
        let a = base.path().join("a");
        fs::create_dir_all(&a).unwrap();
        fs::write(a.join("stale"), b"1").unwrap();
        let s = ScratchDir::create(a.clone()).unwrap();
        assert_eq!(fs::read_dir(s.path()).unwrap().count(), 0);
    }
}
