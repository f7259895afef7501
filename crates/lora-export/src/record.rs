//! The base model a run trained on, recorded beside its adapter
//! (`base-model.json`: each base file's name and sha256), so that an export
//! onto another base is refused before anything is written.

use std::io::Read;
use std::path::Path;

use lora_core::fsutil::write_atomic;
use lora_core::{Error, Result};
use sha2::{Digest, Sha256};

use crate::invalid;

pub const RECORD_FILE: &str = "base-model.json";

/// sha256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the record of `files` (the model stage's base files) into `dir`.
pub fn write(dir: &Path, files: &[std::path::PathBuf]) -> Result<()> {
    let entries = files
        .iter()
        .map(|f| Ok(serde_json::json!({ "name": name(f), "sha256": sha256_file(f)? })))
        .collect::<Result<Vec<_>>>()?;
    let doc = serde_json::json!({ "files": entries });
    write_atomic(
        &dir.join(RECORD_FILE),
        &serde_json::to_vec_pretty(&doc).expect("JSON serialises"),
    )
}

/// Checks `files` against the record in `dir`. `Ok(false)` when there is no
/// record (a run from before records were written): shapes are still checked.
pub fn check(dir: &Path, files: &[std::path::PathBuf]) -> Result<bool> {
    let path = dir.join(RECORD_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid("export::adapter-invalid", format!("{}: not JSON: {e}", path.display())))?;
    let recorded = doc.get("files").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    for f in files {
        let want = recorded
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(&name(f)))
            .and_then(|e| e.get("sha256").and_then(|s| s.as_str()));
        let got = sha256_file(f)?;
        if want != Some(got.as_str()) {
            return Err(invalid(
                "export::base-mismatch",
                format!(
                    "{}: sha256 {got} is not the base the adapter was trained on ({} records {})",
                    f.display(),
                    path.display(),
                    want.unwrap_or("another file")
                ),
            ));
        }
    }
    Ok(true)
}
