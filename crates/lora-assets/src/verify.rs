//! Content hashes. Files are streamed through the hasher, because assets
//! (model weights) are far too big to read into memory just to hash them.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Checks that `path` hashes to `expected`; the error says which file and both hashes.
pub(crate) fn check_sha256(path: &Path, expected: &str) -> Result<(), String> {
    let actual = sha256_file(path).map_err(|e| format!("cannot hash {}: {e}", path.display()))?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(format!(
            "sha256 mismatch for {}: expected {expected}, got {actual}",
            path.display()
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), from FIPS 180-2.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn hashes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), ABC);
        check_sha256(&path, ABC).unwrap();
        check_sha256(&path, &ABC.to_uppercase()).unwrap();
    }

    #[test]
    fn detects_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abd").unwrap();
        let err = check_sha256(&path, ABC).unwrap_err();
        assert!(err.contains("sha256 mismatch") && err.contains(ABC), "{err}");
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            check_sha256(&dir.path().join("absent"), ABC)
                .unwrap_err()
                .contains("cannot hash")
        );
    }
}
