//! Atomic writing of the exported files: a GGUF file streamed into a temporary
//! name beside its destination and renamed into place; a folder written whole
//! under a temporary name and renamed. A failure leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use lora_core::gguf::{TensorBytes, Value, write_to};
use lora_core::{Error, Result};

/// A tensor owned by the exporter, in ggml order (`dims[0]` varies fastest).
pub struct OwnedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub bytes: Vec<u8>,
}

fn temp_beside(path: &Path) -> (PathBuf, PathBuf) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    (dir, tmp)
}

/// A GGUF file to write: its metadata in order and its tensors.
pub type GgufParts = (Vec<(String, Value)>, Vec<OwnedTensor>);

/// Writes a GGUF file atomically.
pub fn gguf(path: &Path, metadata: &[(String, Value)], tensors: &[OwnedTensor]) -> Result<()> {
    let (dir, tmp) = temp_beside(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create folder", &dir, e))?;
    let meta: Vec<(&str, Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let views: Vec<TensorBytes<'_>> = tensors
        .iter()
        .map(|t| TensorBytes {
            name: &t.name,
            dims: t.dims.clone(),
            type_id: t.type_id,
            bytes: &t.bytes,
        })
        .collect();
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        write_to(&mut w, &meta, &views)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("cannot write", path, e));
    }
    Ok(())
}

/// Writes the files of a folder under a temporary name, then renames the
/// folder into place. `out` must not exist yet.
pub fn folder(out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    let (dir, tmp) = temp_beside(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create folder", &dir, e))?;
    let result = (|| {
        std::fs::create_dir_all(&tmp)?;
        for (name, bytes) in files {
            let mut f = std::fs::File::create(tmp.join(name))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, out)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io("cannot write", out, e));
    }
    Ok(())
}
