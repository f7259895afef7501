//! Augmentation contracts: what the data stage runs and what `lora-augment`
//! (or a plugin) implements. Host-side only, so augmentations compile once for
//! every backend and run on loader threads.

use crate::batch::ImageBatch;
use crate::init::SeededRng;

/// One image, channels first (`[channels, height, width]`, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<f32>,
}

impl Image {
    pub fn new(channels: usize, height: usize, width: usize, pixels: Vec<f32>) -> Self {
        debug_assert_eq!(channels * height * width, pixels.len());
        Self {
            channels,
            height,
            width,
            pixels,
        }
    }

    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self::new(channels, height, width, vec![0.0; channels * height * width])
    }

    /// Index of pixel `(c, y, x)` in `pixels`.
    pub fn index(&self, c: usize, y: usize, x: usize) -> usize {
        (c * self.height + y) * self.width + x
    }

    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.pixels[self.index(c, y, x)]
    }

    pub fn set(&mut self, c: usize, y: usize, x: usize, v: f32) {
        let i = self.index(c, y, x);
        self.pixels[i] = v;
    }
}

/// A per-sample image transformation. `rng` is the sample's own stream (seeded
/// from the run seed, the epoch and the sample's position), so the result does
/// not depend on which loader thread runs it. An operation decides with its own
/// probability whether it applies.
pub trait ImageAugment: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, image: &mut Image, rng: &mut SeededRng);
    /// The output `(channels, height, width)` for an input of this shape
    /// (for ops that change the shape, such as crops and resizes).
    fn output_shape(&self, shape: (usize, usize, usize)) -> (usize, usize, usize) {
        shape
    }
}

/// A batch-level augmentation (mixup, cutmix): it blends images and sets soft labels.
pub trait BatchAugment: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, batch: &mut ImageBatch, num_classes: usize, rng: &mut SeededRng);
}

/// A token-level text augmentation. It sees the body of one tokenised text
/// (special tokens such as `[CLS]` and `[SEP]` already removed, so they are never
/// dropped or moved) and the tokenizer's mask id, when it has one.
pub trait TextAugment: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, body: &mut Vec<u32>, mask_id: Option<u32>, rng: &mut SeededRng);
}

/// What an augmentation registry entry builds.
pub enum Augmentation {
    Sample(Box<dyn ImageAugment>),
    Batch(Box<dyn BatchAugment>),
    Text(Box<dyn TextAugment>),
}

impl Augmentation {
    pub fn name(&self) -> &'static str {
        match self {
            Augmentation::Sample(a) => a.name(),
            Augmentation::Batch(a) => a.name(),
            Augmentation::Text(a) => a.name(),
        }
    }
}
