//! An image folder: one subfolder per class (sorted names are the classes),
//! PNG and JPEG files decoded with the `image` crate, converted to `channels`
//! (1: luma, 3: RGB) and resized to `image-size` when given.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use lora_core::{Error, Result};

use super::store::ImageSet;
use crate::image::config::OnCorrupt;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Class names (sorted subfolder names) and each class's image files (sorted).
pub fn list_folder(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io("cannot list image folder", dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let mut classes = Vec::new();
    for dir in read(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files: Vec<PathBuf> = read(&dir)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
            })
            .collect();
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(Error::Data(format!(
            "{}: no class subfolders (expected one folder of images per class)",
            root.display()
        )));
    }
    Ok(classes)
}

/// Decodes one file into `channels` x height x width values in [0, 1].
pub(crate) fn decode(
    path: &Path,
    channels: usize,
    size: Option<[usize; 2]>,
) -> std::result::Result<(Vec<f32>, usize, usize), String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let img = match size {
        Some([h, w]) if (img.height() as usize, img.width() as usize) != (h, w) => {
            img.resize_exact(w as u32, h as u32, FilterType::Triangle)
        }
        _ => img,
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let pixels = if channels == 1 {
        img.to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| f32::from(v) / 255.0)
            .collect()
    } else {
        // Interleaved RGB to channels-first.
        let rgb = img.to_rgb8().into_raw();
        let n = w * h;
        let mut out = vec![0.0; 3 * n];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = f32::from(px[c]) / 255.0;
            }
        }
        out
    };
    Ok((pixels, h, w))
}

/// Reads every image. Without `size`, every image must have the first one's size.
/// Returns the images, the class names and how many files were skipped.
pub fn read_folder(
    root: &Path,
    channels: usize,
    size: Option<[usize; 2]>,
    on_corrupt: OnCorrupt,
) -> Result<(ImageSet, Vec<String>, usize)> {
    let classes = list_folder(root)?;
    let mut set: Option<ImageSet> = None;
    let mut skipped = 0;
    for (class, (_, files)) in classes.iter().enumerate() {
        for file in files {
            let decoded = decode(file, channels, size).and_then(|(px, h, w)| match &set {
                Some(s) if (s.height, s.width) != (h, w) => Err(format!(
                    "{h}x{w} pixels, unlike the {}x{} of the first image; set `image-size` to resize",
                    s.height, s.width
                )),
                _ => Ok((px, h, w)),
            });
            match decoded {
                Ok((px, h, w)) => set
                    .get_or_insert_with(|| ImageSet::new(channels, h, w))
                    .push(&px, class as u32),
                Err(m) if on_corrupt == OnCorrupt::Skip => {
                    eprintln!("warning: skipping {}: {m}", file.display());
                    skipped += 1;
                }
                Err(m) => {
                    return Err(Error::Data(format!(
                        "{}: cannot use this image: {m} (set on-corrupt = \"skip\" to leave such files out)",
                        file.display()
                    )));
                }
            }
        }
    }
    let set = set.ok_or_else(|| Error::Data(format!("{}: no readable PNG or JPEG images", root.display())))?;
    Ok((set, classes.into_iter().map(|(n, _)| n).collect(), skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
    }

    #[test]
    fn classes_are_sorted_folders_and_pixels_are_channels_first() {
        let dir = tempfile::tempdir().unwrap();
        save(&dir.path().join("cat/a.png"), 2, 3, [255, 0, 51]);
        save(&dir.path().join("ant/b.jpg"), 2, 3, [0, 0, 0]);
        std::fs::write(dir.path().join("ant/notes.txt"), "not an image").unwrap();
        let (set, names, skipped) = read_folder(dir.path(), 3, None, OnCorrupt::Error).unwrap();
        assert_eq!(names, ["ant", "cat"]);
        assert_eq!(
            (set.len(), set.channels, set.height, set.width, skipped),
            (2, 3, 3, 2, 0)
        );
        assert_eq!(set.labels, [0, 1]);
        // PNG is lossless: red plane all 1, green 0, blue 0.2.
        assert_eq!(
            set.pixels_of(1),
            [
                1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0.2, 0.2, 0.2, 0.2, 0.2, 0.2
            ]
        );
        let (grey, _, _) = read_folder(dir.path(), 1, Some([4, 4]), OnCorrupt::Error).unwrap();
        assert_eq!((grey.channels, grey.height, grey.width), (1, 4, 4));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_or_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        save(&dir.path().join("a/ok.png"), 2, 2, [9, 9, 9]);
        std::fs::write(dir.path().join("a/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        save(&dir.path().join("b/big.png"), 3, 3, [1, 2, 3]);
        let e = read_folder(dir.path(), 1, None, OnCorrupt::Error)
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.png: cannot use this image"), "{e}");
        let (set, _, skipped) = read_folder(dir.path(), 1, None, OnCorrupt::Skip).unwrap();
        assert_eq!((set.len(), skipped), (1, 2), "the broken file and the odd-sized one");
        let (set, _, skipped) = read_folder(dir.path(), 1, Some([2, 2]), OnCorrupt::Skip).unwrap();
        assert_eq!((set.len(), skipped), (2, 1));
        let empty = tempfile::tempdir().unwrap();
        assert!(read_folder(empty.path(), 1, None, OnCorrupt::Error).is_err());
    }
}
