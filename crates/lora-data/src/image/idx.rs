//! Gzipped IDX files, the format of MNIST and Fashion-MNIST: a big-endian
//! header (magic `0x0000_08NN`: unsigned bytes, NN dimensions), the sizes of
//! the dimensions, then the values.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use lora_core::{Error, Result};

use super::store::ImageSet;

/// An IDX array: its dimensions and its bytes.
#[derive(Debug, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gunzipping it when it starts with gzip's magic bytes.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io("cannot read IDX file", path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::Data(format!("{}: corrupt gzip stream: {e}", path.display())))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|m| Error::Data(format!("{}: {m}", path.display())))
}

pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "not an IDX file: {} bytes, shorter than the header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file: the magic number does not start with two zero bytes".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX value type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(format!("IDX header with {ndims} dimensions is truncated"));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let body = bytes.len() - header;
    match expected {
        Some(n) if n == body => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
        Some(n) => Err(format!(
            "IDX dimensions {dims:?} need {n} values but the file holds {body} (truncated or corrupt)"
        )),
        None => Err(format!("IDX dimensions {dims:?} overflow")),
    }
}

/// An images file (`[n, h, w]`) and its labels file (`[n]`) as an [`ImageSet`];
/// pixels are scaled from 0..255 to [0, 1].
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<ImageSet> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    let [n, h, w] = img.dims[..] else {
        return Err(Error::Data(format!(
            "{}: an images file has 3 dimensions [n, height, width], this one {:?}",
            images.display(),
            img.dims
        )));
    };
    if lab.dims != [n] {
        return Err(Error::Data(format!(
            "{}: labels of shape {:?} do not match the {n} images of {}",
            labels.display(),
            lab.dims,
            images.display()
        )));
    }
    let mut set = ImageSet::new(1, h, w);
    set.pixels = img.data.iter().map(|&b| f32::from(b) / 255.0).collect();
    set.labels = lab.data.iter().map(|&b| u32::from(b)).collect();
    Ok(set)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_gzipped_and_plain_pairs_and_scales_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("img.gz");
        let labels = dir.path().join("lab");
        std::fs::write(
            &images,
            gz(&idx_bytes(&[2, 2, 3], &[0, 255, 51, 0, 0, 0, 1, 2, 3, 4, 5, 6])),
        )
        .unwrap();
        std::fs::write(&labels, idx_bytes(&[2], &[7, 3])).unwrap();
        let set = read_idx_pair(&images, &labels).unwrap();
        assert_eq!((set.channels, set.height, set.width, set.len()), (1, 2, 3, 2));
        assert_eq!(set.labels, [7, 3]);
        assert_eq!(&set.pixels_of(0)[..3], [0.0, 1.0, 0.2]);
        assert_eq!(set.pixels_of(1)[5], 6.0 / 255.0);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = dir.path().join("t.gz");
        std::fs::write(&truncated, gz(&idx_bytes(&[2, 2, 2], &[1, 2, 3]))).unwrap();
        let e = read_idx(&truncated).unwrap_err().to_string();
        assert!(
            e.contains("t.gz") && e.contains("need 8 values but the file holds 3"),
            "{e}"
        );
        let bad_gz = dir.path().join("b.gz");
        let mut bytes = gz(&idx_bytes(&[1], &[1]));
        bytes.truncate(12);
        std::fs::write(&bad_gz, bytes).unwrap();
        let e = read_idx(&bad_gz).unwrap_err().to_string();
        assert!(e.contains("b.gz: corrupt gzip stream"), "{e}");
        assert!(
            parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("0x0d")
        );
        assert!(parse_idx(b"PK\x03\x04").unwrap_err().contains("magic"));
        let images = dir.path().join("i");
        let labels = dir.path().join("l");
        std::fs::write(&images, idx_bytes(&[2, 1, 1], &[1, 2])).unwrap();
        std::fs::write(&labels, idx_bytes(&[3], &[1, 2, 3])).unwrap();
        let e = read_idx_pair(&images, &labels).unwrap_err().to_string();
        assert!(e.contains("do not match the 2 images"), "{e}");
        let e = read_idx(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
