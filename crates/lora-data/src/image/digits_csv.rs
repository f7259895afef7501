//! scikit-learn's digits (`sklearn/datasets/data/digits.csv.gz`): 1,797 rows of
//! 64 pixel values (0..16, an 8x8 image row by row) followed by the digit.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use lora_core::{Error, Result};

use super::store::ImageSet;
use crate::image::config::OnCorrupt;

const SIDE: usize = 8;
const MAX: f32 = 16.0;

/// Reads the CSV (gzipped or not). A row with the wrong number of fields, a
/// non-number, a pixel outside 0..16 or a label outside 0..9 is corrupt: an
/// error naming the file and line, or skipped and counted.
pub fn read_digits_csv(path: &Path, on_corrupt: OnCorrupt) -> Result<(ImageSet, usize)> {
    let raw = std::fs::read(path).map_err(|e| Error::io("cannot read digits CSV", path, e))?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        GzDecoder::new(raw.as_slice())
            .read_to_string(&mut s)
            .map_err(|e| Error::Data(format!("{}: corrupt gzip stream: {e}", path.display())))?;
        s
    } else {
        String::from_utf8(raw).map_err(|_| Error::Data(format!("{}: not UTF-8 text", path.display())))?
    };
    let mut set = ImageSet::new(1, SIDE, SIDE);
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match parse_row(line) {
            Ok((pixels, label)) => set.push(&pixels, label),
            Err(_) if on_corrupt == OnCorrupt::Skip => skipped += 1,
            Err(m) => return Err(Error::Data(format!("{}:{}: {m}", path.display(), i + 1))),
        }
    }
    Ok((set, skipped))
}

fn parse_row(line: &str) -> std::result::Result<(Vec<f32>, u32), String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.len() != SIDE * SIDE + 1 {
        return Err(format!(
            "{} fields, expected {} pixels and a label",
            fields.len(),
            SIDE * SIDE
        ));
    }
    let mut pixels = Vec::with_capacity(SIDE * SIDE);
    for f in &fields[..SIDE * SIDE] {
        let v: f32 = f.parse().map_err(|_| format!("pixel `{f}` is not a number"))?;
        if !(0.0..=MAX).contains(&v) {
            return Err(format!("pixel {v} is outside 0..16"));
        }
        pixels.push(v / MAX);
    }
    let label: f32 = fields[SIDE * SIDE]
        .parse()
        .map_err(|_| format!("label `{}` is not a number", fields[SIDE * SIDE]))?;
    if label.fract() != 0.0 || !(0.0..=9.0).contains(&label) {
        return Err(format!("label {label} is not a digit"));
    }
    Ok((pixels, label as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_scaled_8x8_images_and_bad_rows_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let good = |label: u32| {
            let mut f: Vec<String> = (0..64).map(|i| (i % 17).to_string()).collect();
            f.push(label.to_string());
            f.join(",")
        };
        let path = dir.path().join("digits.csv");
        std::fs::write(&path, format!("{}\n{}\n", good(3), good(7))).unwrap();
        let (set, skipped) = read_digits_csv(&path, OnCorrupt::Error).unwrap();
        assert_eq!((set.len(), set.height, set.width, skipped), (2, 8, 8, 0));
        assert_eq!(set.labels, [3, 7]);
        assert_eq!(&set.pixels_of(0)[..3], [0.0, 1.0 / 16.0, 2.0 / 16.0]);
        assert_eq!(set.pixels_of(0)[16], 16.0 / 16.0);

        let bad = good(1).replacen("0,", "17,", 1);
        std::fs::write(&path, format!("{}\n{bad}\n1,2\n", good(3))).unwrap();
        let e = read_digits_csv(&path, OnCorrupt::Error).unwrap_err().to_string();
        assert!(e.contains("digits.csv:2: pixel 17 is outside 0..16"), "{e}");
        let (set, skipped) = read_digits_csv(&path, OnCorrupt::Skip).unwrap();
        assert_eq!((set.len(), skipped), (1, 2));
    }
}
