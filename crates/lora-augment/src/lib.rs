//! Augmentations of lora-scripts (image, batch and text), registered by name in
//! [`lora_core::registry::AugmentationEntry`] and configured as
//! `[[data.augment]]` tables:
//!
//! ```toml
//! [[data.augment]]
//! type = "random-crop"
//! size = [28, 28]
//! padding = 2
//! ```
//!
//! Every operation has a probability `p`; randomness comes from the stream the
//! data stage gives each sample (seeded by run, epoch and position), so runs
//! are reproducible whatever the loader's thread count. Each operation draws
//! its random numbers before deciding whether it fires, so changing one `p`
//! does not shift the draws of the others.

pub mod color;
pub mod common;
pub mod geometry;
pub mod mix;
pub mod noise;
pub mod text;

use lora_core::augment::Augmentation;
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::inventory;
use lora_core::registry::AugmentationEntry;
use serde::de::DeserializeOwned;

use crate::common::Checks;

/// An operation's configuration: its range checks and what it builds.
trait Op: DeserializeOwned {
    fn check(&self, c: &mut Checks);
    fn into_augmentation(self) -> Augmentation;
}

fn build<T: Op>(component: &Component) -> Result<Augmentation, Diagnostics> {
    let op: T = component.deserialize()?;
    let mut checks = Checks::new(component);
    op.check(&mut checks);
    checks.finish(op.into_augmentation())
}

macro_rules! sample_op {
    ($t:ty, |$s:ident, $c:ident| $body:expr) => {
        impl Op for $t {
            fn check(&self, $c: &mut Checks) {
                let $s = self;
                $body
            }
            fn into_augmentation(self) -> Augmentation {
                Augmentation::Sample(Box::new(self))
            }
        }
    };
}

macro_rules! batch_op {
    ($t:ty) => {
        impl Op for $t {
            fn check(&self, c: &mut Checks) {
                c.probability(self.p);
                c.require(
                    self.alpha > 0.0,
                    "alpha",
                    format!("alpha ({}) must be above 0", self.alpha),
                );
            }
            fn into_augmentation(self) -> Augmentation {
                Augmentation::Batch(Box::new(self))
            }
        }
    };
}

sample_op!(geometry::RandomCrop, |s, c| {
    c.probability(s.p);
    if let Some(size) = s.size {
        c.positive_size("size", size);
    }
});
sample_op!(geometry::CenterCrop, |s, c| c.positive_size("size", s.size));
sample_op!(geometry::Resize, |s, c| c.positive_size("size", s.size));
sample_op!(geometry::HorizontalFlip, |s, c| c.probability(s.p));
sample_op!(geometry::VerticalFlip, |s, c| c.probability(s.p));
sample_op!(geometry::Rotation, |s, c| {
    c.probability(s.p);
    c.range("degrees", [0.0, s.degrees], 0.0, 180.0);
});
sample_op!(geometry::RandomAffine, |s, c| {
    c.probability(s.p);
    c.range("degrees", [0.0, s.degrees], 0.0, 180.0);
    c.require(
        s.translate.iter().all(|t| (0.0..=1.0).contains(t)),
        "translate",
        format!("translate ({:?}) fractions must be within [0, 1]", s.translate),
    );
    c.range("scale", s.scale, 0.01, 100.0);
    c.range("shear", [0.0, s.shear], 0.0, 80.0);
});
sample_op!(color::ColorJitter, |s, c| {
    c.probability(s.p);
    for (key, v) in [
        ("brightness", s.brightness),
        ("contrast", s.contrast),
        ("saturation", s.saturation),
    ] {
        c.require(v >= 0.0, key, format!("{key} ({v}) must be at least 0"));
    }
    c.range("hue", [0.0, s.hue], 0.0, 0.5);
});
sample_op!(color::Grayscale, |s, c| c.probability(s.p));
sample_op!(color::Normalize, |s, c| {
    c.require(
        !s.mean.is_empty() && s.mean.len() == s.std.len(),
        "mean",
        format!(
            "mean ({} values) and std ({} values) need the same, non-zero length",
            s.mean.len(),
            s.std.len()
        ),
    );
    c.require(
        s.std.iter().all(|v| *v > 0.0),
        "std",
        format!("std ({:?}) values must be above 0", s.std),
    );
});
sample_op!(noise::GaussianBlur, |s, c| {
    c.probability(s.p);
    c.require(
        s.kernel_size % 2 == 1,
        "kernel-size",
        format!("kernel-size ({}) must be odd and at least 1", s.kernel_size),
    );
    c.range("sigma", s.sigma, 1e-3, 100.0);
});
sample_op!(noise::GaussianNoise, |s, c| {
    c.probability(s.p);
    c.require(s.std >= 0.0, "std", format!("std ({}) must be at least 0", s.std));
});
sample_op!(noise::RandomErasing, |s, c| {
    c.probability(s.p);
    c.range("scale", s.scale, 0.0, 1.0);
    c.range("ratio", s.ratio, 1e-3, 1e3);
});
macro_rules! text_op {
    ($t:ty) => {
        impl Op for $t {
            fn check(&self, c: &mut Checks) {
                c.probability(self.p);
            }
            fn into_augmentation(self) -> Augmentation {
                Augmentation::Text(Box::new(self))
            }
        }
    };
}

text_op!(text::RandomSwap);
impl Op for text::TokenDropout {
    fn check(&self, c: &mut Checks) {
        c.probability(self.p);
        c.range("rate", [0.0, self.rate], 0.0, 1.0);
    }
    fn into_augmentation(self) -> Augmentation {
        Augmentation::Text(Box::new(self))
    }
}
impl Op for text::TokenMask {
    fn check(&self, c: &mut Checks) {
        c.probability(self.p);
        c.range("rate", [0.0, self.rate], 0.0, 1.0);
    }
    fn into_augmentation(self) -> Augmentation {
        Augmentation::Text(Box::new(self))
    }
}
batch_op!(mix::Mixup);
batch_op!(mix::Cutmix);

macro_rules! register {
    ($name:literal, $t:ty, $summary:literal) => {
        inventory::submit! {
            AugmentationEntry { name: $name, summary: $summary, build: build::<$t> }
        }
    };
}

register!(
    "random-crop",
    geometry::RandomCrop,
    "crop `size` at a random place after padding every side by `padding`"
);
register!("center-crop", geometry::CenterCrop, "crop the central `size` window");
register!(
    "resize",
    geometry::Resize,
    "bilinear resize to `size` (half-pixel centres)"
);
register!(
    "horizontal-flip",
    geometry::HorizontalFlip,
    "mirror left-right with probability p"
);
register!(
    "vertical-flip",
    geometry::VerticalFlip,
    "flip upside down with probability p"
);
register!(
    "rotation",
    geometry::Rotation,
    "rotate by a uniform angle in [-degrees, degrees]"
);
register!(
    "random-affine",
    geometry::RandomAffine,
    "random rotation, translation, scale and shear"
);
register!(
    "color-jitter",
    color::ColorJitter,
    "random brightness, contrast, saturation and hue"
);
register!(
    "grayscale",
    color::Grayscale,
    "RGB to luma in every channel with probability p"
);
register!("normalize", color::Normalize, "(x - mean) / std per channel");
register!(
    "gaussian-blur",
    noise::GaussianBlur,
    "Gaussian blur with an odd kernel and a random sigma"
);
register!(
    "gaussian-noise",
    noise::GaussianNoise,
    "add N(mean, std) noise, clipped to [0, 1]"
);
register!(
    "random-erasing",
    noise::RandomErasing,
    "set a random rectangle to `value` (Zhong et al.)"
);
register!(
    "token-dropout",
    text::TokenDropout,
    "text: drop each token with probability `rate`"
);
register!(
    "token-mask",
    text::TokenMask,
    "text: replace each token by [MASK] with probability `rate`"
);
register!(
    "random-swap",
    text::RandomSwap,
    "text: swap two random tokens, `swaps` times"
);
register!(
    "mixup",
    mix::Mixup,
    "blend images and labels with a neighbour in the batch (batch level)"
);
register!(
    "cutmix",
    mix::Cutmix,
    "paste a neighbour's box and blend labels by area (batch level)"
);

#[cfg(test)]
mod tests;
