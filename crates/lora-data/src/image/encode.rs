//! `lora predict` on image data: image files brought to the training images'
//! shape, then through the evaluation augmentations, as the validation split is.

use std::path::Path;
use std::sync::Arc;

use lora_core::stage::InputEncoder;
use lora_core::{Batch, Error, Result};

use super::dataset::make_batch;
use super::folder::decode;
use super::store::ImageSet;
use crate::augment::AugmentPipeline;

pub struct ImageFileEncoder {
    channels: usize,
    height: usize,
    width: usize,
    eval_ops: Arc<AugmentPipeline>,
}

impl ImageFileEncoder {
    /// `channels`, `height` and `width` are the training images' (before augmentation).
    pub fn new(channels: usize, height: usize, width: usize, eval_ops: Arc<AugmentPipeline>) -> Self {
        Self {
            channels,
            height,
            width,
            eval_ops,
        }
    }
}

impl InputEncoder for ImageFileEncoder {
    fn input_kind(&self) -> &'static str {
        "image"
    }

    /// Each input is the path of a PNG or JPEG file: decoded to the training
    /// channels (luma or RGB), resized to the training size, scaled to [0, 1].
    fn encode_inputs(&self, paths: &[String]) -> Result<Batch> {
        let mut set = ImageSet::new(self.channels, self.height, self.width);
        for path in paths {
            let (pixels, _, _) = decode(Path::new(path), self.channels, Some([self.height, self.width]))
                .map_err(|m| Error::Data(format!("{path}: cannot read this image: {m}")))?;
            set.push(&pixels, 0);
        }
        let order: Vec<usize> = (0..set.len()).collect();
        let mut batch = make_batch(&set, &order, 0, &self.eval_ops, 0, 0, 1)?;
        batch.labels.clear();
        Ok(Batch::Image(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_gray(path: &Path, w: u32, h: u32, value: u8) {
        image::GrayImage::from_pixel(w, h, image::Luma([value]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn files_are_resized_to_the_training_shape_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        save_gray(&a, 28, 28, 255);
        save_gray(&b, 56, 40, 51);
        let enc = ImageFileEncoder::new(1, 28, 28, Arc::new(AugmentPipeline::default()));
        let Batch::Image(batch) = enc
            .encode_inputs(&[a.display().to_string(), b.display().to_string()])
            .unwrap()
        else {
            panic!("an image batch")
        };
        assert_eq!(
            (batch.batch_size, batch.channels, batch.height, batch.width),
            (2, 1, 28, 28)
        );
        assert!(batch.labels.is_empty());
        // A uniform image stays uniform through the resize: 255 -> 1.0, 51 -> 0.2.
        assert!(batch.pixels[..784].iter().all(|&v| v == 1.0));
        assert!(batch.pixels[784..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let enc = ImageFileEncoder::new(1, 28, 28, Arc::new(AugmentPipeline::default()));
        let err = enc.encode_inputs(&[bad.display().to_string()]).unwrap_err().to_string();
        assert!(err.contains("bad.png"), "{err}");
        let missing = dir.path().join("missing.png").display().to_string();
        let err = enc.encode_inputs(&[missing]).unwrap_err().to_string();
        assert!(err.contains("missing.png"), "{err}");
    }
}
