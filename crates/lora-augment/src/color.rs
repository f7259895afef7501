//! Colour operations: color-jitter, grayscale, normalize. Pixels are expected
//! in [0, 1] before normalize (jitter clamps to it, as torchvision does on floats).

use lora_core::augment::{Image, ImageAugment};
use lora_core::init::SeededRng;
use serde::Deserialize;

use crate::common::{default_one, fires, uniform};

/// ITU-R 601 luma, torchvision's grayscale weights.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// The grayscale value of every pixel (the pixel itself for one channel).
fn gray(image: &Image) -> Vec<f32> {
    let n = image.height * image.width;
    if image.channels == 3 {
        (0..n)
            .map(|i| luma(image.pixels[i], image.pixels[n + i], image.pixels[2 * n + i]))
            .collect()
    } else {
        image.pixels[..n].to_vec()
    }
}

/// `x * f`, clamped to [0, 1].
pub fn adjust_brightness(image: &mut Image, f: f32) {
    image.pixels.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
}

/// Blends with the mean grayscale value: `(x - m) f + m`, clamped.
pub fn adjust_contrast(image: &mut Image, f: f32) {
    let g = gray(image);
    let m = g.iter().sum::<f32>() / g.len() as f32;
    image
        .pixels
        .iter_mut()
        .for_each(|v| *v = ((*v - m) * f + m).clamp(0.0, 1.0));
}

/// Blends each pixel with its own grayscale value (RGB only).
pub fn adjust_saturation(image: &mut Image, f: f32) {
    if image.channels != 3 {
        return;
    }
    let g = gray(image);
    let n = g.len();
    for c in 0..3 {
        for (i, gi) in g.iter().enumerate() {
            let v = &mut image.pixels[c * n + i];
            *v = ((*v - gi) * f + gi).clamp(0.0, 1.0);
        }
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Shifts the hue by `shift` turns (RGB only).
pub fn adjust_hue(image: &mut Image, shift: f32) {
    if image.channels != 3 {
        return;
    }
    let n = image.height * image.width;
    for i in 0..n {
        let (h, s, v) = rgb_to_hsv(image.pixels[i], image.pixels[n + i], image.pixels[2 * n + i]);
        let (r, g, b) = hsv_to_rgb(h + shift, s, v);
        image.pixels[i] = r;
        image.pixels[n + i] = g;
        image.pixels[2 * n + i] = b;
    }
}

/// `color-jitter`: factors drawn from `[max(0, 1 - x), 1 + x]` for brightness,
/// contrast and saturation, a hue shift from `[-hue, hue]` (at most 0.5 turn);
/// applied in that fixed order (torchvision draws a random order).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ColorJitter {
    #[serde(default)]
    pub brightness: f32,
    #[serde(default)]
    pub contrast: f32,
    #[serde(default)]
    pub saturation: f32,
    #[serde(default)]
    pub hue: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl ImageAugment for ColorJitter {
    fn name(&self) -> &'static str {
        "color-jitter"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let factor = |x: f32, rng: &mut SeededRng| uniform((1.0 - x).max(0.0), 1.0 + x, rng);
        let b = factor(self.brightness, rng);
        let c = factor(self.contrast, rng);
        let s = factor(self.saturation, rng);
        let h = uniform(-self.hue, self.hue, rng);
        if !fires(self.p, rng) {
            return;
        }
        if self.brightness > 0.0 {
            adjust_brightness(image, b);
        }
        if self.contrast > 0.0 {
            adjust_contrast(image, c);
        }
        if self.saturation > 0.0 {
            adjust_saturation(image, s);
        }
        if self.hue > 0.0 {
            adjust_hue(image, h);
        }
    }
}

/// `grayscale`: RGB becomes its luma in all three channels (one channel is unchanged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grayscale {
    #[serde(default = "default_one")]
    pub p: f32,
}

impl ImageAugment for Grayscale {
    fn name(&self) -> &'static str {
        "grayscale"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        if fires(self.p, rng) && image.channels == 3 {
            let g = gray(image);
            let n = g.len();
            for c in 0..3 {
                image.pixels[c * n..(c + 1) * n].copy_from_slice(&g);
            }
        }
    }
}

/// `normalize`: `(x - mean[c]) / std[c]`; one value applies to every channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ImageAugment for Normalize {
    fn name(&self) -> &'static str {
        "normalize"
    }
    fn apply(&self, image: &mut Image, _rng: &mut SeededRng) {
        let n = image.height * image.width;
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c.min(v.len() - 1)] };
        for c in 0..image.channels {
            let (m, s) = (pick(&self.mean, c), pick(&self.std, c));
            image.pixels[c * n..(c + 1) * n]
                .iter_mut()
                .for_each(|v| *v = (*v - m) / s);
        }
    }
}
