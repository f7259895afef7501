//! An ordered list of augmentations built from `[[data.augment]]` tables
//! through the augmentation registry (`lora-augment` fills it; this crate does
//! not depend on it): image ops per sample then per batch, or text ops per text.

use lora_core::augment::{Augmentation, BatchAugment, Image, ImageAugment, TextAugment};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{derive_seed, rng};
use lora_core::registry::{AugmentationEntry, build};
use lora_core::{Error, ImageBatch, Result};

impl std::fmt::Debug for AugmentPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AugmentPipeline").field(&self.names).finish()
    }
}

#[derive(Default)]
pub struct AugmentPipeline {
    sample: Vec<Box<dyn ImageAugment>>,
    batch: Vec<Box<dyn BatchAugment>>,
    text: Vec<Box<dyn TextAugment>>,
    names: Vec<&'static str>,
}

impl AugmentPipeline {
    /// Builds every table's augmentation, reporting every problem at once. Batch
    /// augmentations run after all sample ones, whatever their place in the list.
    pub fn from_components(components: &[Component]) -> Result<Self, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut out = Self::default();
        for c in components {
            match build::<AugmentationEntry>(c) {
                Ok(a) => out.push(a),
                Err(d) => diags.0.extend(d.0),
            }
        }
        if diags.has_errors() { Err(diags) } else { Ok(out) }
    }

    pub fn push(&mut self, a: Augmentation) {
        self.names.push(a.name());
        match a {
            Augmentation::Sample(s) => self.sample.push(s),
            Augmentation::Batch(b) => self.batch.push(b),
            Augmentation::Text(t) => self.text.push(t),
        }
    }

    /// Whether any operation works on images (sample or batch level).
    pub fn has_image_ops(&self) -> bool {
        !self.sample.is_empty() || !self.batch.is_empty()
    }

    pub fn has_text_ops(&self) -> bool {
        !self.text.is_empty()
    }

    /// Runs the text augmentations on the body of the text at `position` of epoch `seed`.
    pub fn apply_text(&self, body: &mut Vec<u32>, mask_id: Option<u32>, seed: u64, position: u64) {
        let mut r = rng(derive_seed(seed, "augment", position));
        for op in &self.text {
            op.apply(body, mask_id, &mut r);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    pub fn has_batch_ops(&self) -> bool {
        !self.batch.is_empty()
    }

    /// The image shape after every sample augmentation.
    pub fn output_shape(&self, shape: (usize, usize, usize)) -> (usize, usize, usize) {
        self.sample.iter().fold(shape, |s, op| op.output_shape(s))
    }

    /// Runs the sample augmentations on the image at `position` of epoch `seed`:
    /// its stream depends on those two only, so the result is the same on any thread.
    pub fn apply_sample(&self, image: &mut Image, seed: u64, position: u64) {
        let mut r = rng(derive_seed(seed, "augment", position));
        for op in &self.sample {
            op.apply(image, &mut r);
        }
    }

    pub fn apply_batch(&self, batch: &mut ImageBatch, num_classes: usize, seed: u64, index: u64) -> Result<()> {
        let mut r = rng(derive_seed(seed, "augment-batch", index));
        for op in &self.batch {
            op.apply(batch, num_classes, &mut r);
            if batch.pixels.len() != batch.batch_size * batch.image_len() {
                return Err(Error::Other(format!(
                    "augmentation `{}` broke the batch shape",
                    op.name()
                )));
            }
        }
        Ok(())
    }
}
