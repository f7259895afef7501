//! Blur, noise and erasing.

use lora_core::augment::{Image, ImageAugment};
use lora_core::init::SeededRng;
use rand::Rng;
use serde::Deserialize;

use crate::common::{default_half, default_one, fires, uniform};

/// A normalised 1-D Gaussian of odd length `k`.
pub fn gaussian_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let r = (k / 2) as f32;
    let w: Vec<f32> = (0..k)
        .map(|i| (-((i as f32 - r).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Reflect padding without repeating the edge (`dcb|abcd|cba`), as torchvision's blur.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Separable convolution with `kernel` along rows, then along columns.
pub fn blur(image: &mut Image, kernel: &[f32]) {
    let r = (kernel.len() / 2) as isize;
    let (h, w) = (image.height, image.width);
    let mut tmp = vec![0.0; h * w];
    for c in 0..image.channels {
        let base = c * h * w;
        for y in 0..h {
            for x in 0..w {
                tmp[y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, kv)| kv * image.pixels[base + y * w + reflect(x as isize + k as isize - r, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                image.pixels[base + y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, kv)| kv * tmp[reflect(y as isize + k as isize - r, h) * w + x])
                    .sum();
            }
        }
    }
}

/// `gaussian-blur`: an odd `kernel-size`, sigma uniform in `sigma = [lo, hi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GaussianBlur {
    pub kernel_size: usize,
    #[serde(default = "default_sigma")]
    pub sigma: [f32; 2],
    #[serde(default = "default_one")]
    pub p: f32,
}

fn default_sigma() -> [f32; 2] {
    [0.1, 2.0]
}

impl ImageAugment for GaussianBlur {
    fn name(&self) -> &'static str {
        "gaussian-blur"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let sigma = uniform(self.sigma[0], self.sigma[1], rng);
        if fires(self.p, rng) {
            blur(image, &gaussian_kernel(self.kernel_size, sigma));
        }
    }
}

/// Standard normal by Box-Muller.
fn standard_normal(rng: &mut SeededRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `gaussian-noise`: adds N(mean, std) to every value; `clip` keeps [0, 1].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GaussianNoise {
    #[serde(default)]
    pub mean: f32,
    #[serde(default = "default_noise_std")]
    pub std: f32,
    #[serde(default = "yes")]
    pub clip: bool,
    #[serde(default = "default_one")]
    pub p: f32,
}

fn default_noise_std() -> f32 {
    0.1
}
fn yes() -> bool {
    true
}

impl ImageAugment for GaussianNoise {
    fn name(&self) -> &'static str {
        "gaussian-noise"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        if !fires(self.p, rng) {
            return;
        }
        for v in &mut image.pixels {
            *v += self.mean + self.std * standard_normal(rng);
            if self.clip {
                *v = v.clamp(0.0, 1.0);
            }
        }
    }
}

/// `random-erasing` (Zhong et al.; torchvision's `RandomErasing`): a rectangle
/// of area `scale` of the image and aspect ratio `ratio` set to `value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RandomErasing {
    #[serde(default = "default_half")]
    pub p: f32,
    #[serde(default = "default_erase_scale")]
    pub scale: [f32; 2],
    #[serde(default = "default_erase_ratio")]
    pub ratio: [f32; 2],
    #[serde(default)]
    pub value: f32,
}

fn default_erase_scale() -> [f32; 2] {
    [0.02, 0.33]
}
fn default_erase_ratio() -> [f32; 2] {
    [0.3, 3.3]
}

/// Where a random-erasing rectangle goes: `(top, left, h, w)`, or none after 10 tries.
pub fn erasing_box(
    (height, width): (usize, usize),
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut SeededRng,
) -> Option<(usize, usize, usize, usize)> {
    let area = (height * width) as f32;
    let (lo, hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(scale[0], scale[1], rng);
        let aspect = uniform(lo, hi, rng).exp();
        let h = (target * aspect).sqrt().round() as usize;
        let w = (target / aspect).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= height || w >= width {
            continue;
        }
        let top = rng.random_range(0..=height - h);
        let left = rng.random_range(0..=width - w);
        return Some((top, left, h, w));
    }
    None
}

impl ImageAugment for RandomErasing {
    fn name(&self) -> &'static str {
        "random-erasing"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        if !fires(self.p, rng) {
            return;
        }
        if let Some((top, left, h, w)) = erasing_box((image.height, image.width), self.scale, self.ratio, rng) {
            for c in 0..image.channels {
                for y in top..top + h {
                    let start = image.index(c, y, left);
                    image.pixels[start..start + w].fill(self.value);
                }
            }
        }
    }
}
