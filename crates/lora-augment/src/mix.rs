//! Batch-level augmentations: mixup and cutmix. Each image is blended with its
//! neighbour in the batch (the batch rolled by one, as torchvision v2 does),
//! and the targets become the same blend of the two label distributions.

use lora_core::ImageBatch;
use lora_core::augment::BatchAugment;
use lora_core::init::SeededRng;
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::Deserialize;

use crate::common::{default_one, fires};

/// The batch's current targets: its soft labels, or one-hot rows of its labels.
fn targets(batch: &ImageBatch, classes: usize) -> Vec<f32> {
    match &batch.soft_labels {
        Some(s) => s.clone(),
        None => {
            let mut t = vec![0.0; batch.batch_size * classes];
            for (i, &l) in batch.labels.iter().enumerate() {
                if (l as usize) < classes {
                    t[i * classes + l as usize] = 1.0;
                }
            }
            t
        }
    }
}

/// Index of image `i`'s partner: the previous image (the batch rolled by one).
fn partner(i: usize, n: usize) -> usize {
    (i + n - 1) % n
}

/// Sets the targets to `lam * own + (1 - lam) * partner's`.
fn blend_targets(batch: &mut ImageBatch, classes: usize, lam: f32) {
    let t = targets(batch, classes);
    let n = batch.batch_size;
    let mut out = vec![0.0; n * classes];
    for i in 0..n {
        let j = partner(i, n);
        for k in 0..classes {
            out[i * classes + k] = lam * t[i * classes + k] + (1.0 - lam) * t[j * classes + k];
        }
    }
    batch.soft_labels = Some(out);
}

fn beta(alpha: f32, rng: &mut SeededRng) -> f32 {
    Beta::new(alpha, alpha).map(|d| d.sample(rng)).unwrap_or(0.5)
}

/// Mixes the whole images: `lam * x_i + (1 - lam) * x_partner`.
pub fn mixup(batch: &mut ImageBatch, classes: usize, lam: f32) {
    let n = batch.batch_size;
    if n < 2 {
        return;
    }
    let len = batch.image_len();
    let src = batch.pixels.clone();
    for i in 0..n {
        let j = partner(i, n);
        for k in 0..len {
            batch.pixels[i * len + k] = lam * src[i * len + k] + (1.0 - lam) * src[j * len + k];
        }
    }
    blend_targets(batch, classes, lam);
}

/// Pastes the partner's `(top, left, h, w)` box; the targets follow the area kept.
pub fn cutmix(batch: &mut ImageBatch, classes: usize, (top, left, h, w): (usize, usize, usize, usize)) {
    let n = batch.batch_size;
    if n < 2 {
        return;
    }
    let src = batch.pixels.clone();
    let (hh, ww, len) = (batch.height, batch.width, batch.image_len());
    for i in 0..n {
        let j = partner(i, n);
        for c in 0..batch.channels {
            for y in top..top + h {
                let row = c * hh * ww + y * ww;
                for x in left..left + w {
                    batch.pixels[i * len + row + x] = src[j * len + row + x];
                }
            }
        }
    }
    let lam = 1.0 - (h * w) as f32 / (hh * ww) as f32;
    blend_targets(batch, classes, lam);
}

/// `mixup` (Zhang et al.): `lam ~ Beta(alpha, alpha)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mixup {
    #[serde(default = "default_one")]
    pub alpha: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl BatchAugment for Mixup {
    fn name(&self) -> &'static str {
        "mixup"
    }
    fn apply(&self, batch: &mut ImageBatch, classes: usize, rng: &mut SeededRng) {
        let lam = beta(self.alpha, rng);
        if fires(self.p, rng) {
            mixup(batch, classes, lam);
        }
    }
}

/// `cutmix` (Yun et al.): a box of area `1 - lam` of the partner, `lam ~ Beta(alpha, alpha)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cutmix {
    #[serde(default = "default_one")]
    pub alpha: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl BatchAugment for Cutmix {
    fn name(&self) -> &'static str {
        "cutmix"
    }
    fn apply(&self, batch: &mut ImageBatch, classes: usize, rng: &mut SeededRng) {
        let lam = beta(self.alpha, rng);
        let (h, w) = (batch.height, batch.width);
        let r = (1.0 - lam).sqrt();
        let (ch, cw) = ((h as f32 * r) as usize, (w as f32 * r) as usize);
        let cy = rng.random_range(0..h);
        let cx = rng.random_range(0..w);
        let (top, bottom) = (cy.saturating_sub(ch / 2), (cy + ch / 2).min(h));
        let (left, right) = (cx.saturating_sub(cw / 2), (cx + cw / 2).min(w));
        if fires(self.p, rng) {
            cutmix(batch, classes, (top, left, bottom - top, right - left));
        }
    }
}
