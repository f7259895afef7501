//! Decoded images of one split, held as f32 pixels in [0, 1], channels first.

use lora_core::augment::Image;

/// Images of one shape, with a class each.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `[len * channels * height * width]`, values in [0, 1].
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

impl ImageSet {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
            pixels: Vec::new(),
            labels: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn push(&mut self, pixels: &[f32], label: u32) {
        debug_assert_eq!(pixels.len(), self.image_len());
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
    }

    pub fn pixels_of(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as an owned [`Image`], for augmentation.
    pub fn image(&self, i: usize) -> Image {
        Image::new(self.channels, self.height, self.width, self.pixels_of(i).to_vec())
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut out = ImageSet::new(self.channels, self.height, self.width);
        out.pixels.reserve(indices.len() * self.image_len());
        for &i in indices {
            out.push(self.pixels_of(i), self.labels[i]);
        }
        out
    }
}
