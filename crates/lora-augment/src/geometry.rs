//! Geometric operations: crops, resize, flips, rotation and random affine.
//!
//! Sampling maps each output pixel back to the input (index coordinates, the
//! centre of rotation at `((w - 1) / 2, (h - 1) / 2)`), reads it bilinearly,
//! and uses `fill` outside the input. Angles are in degrees, counter-clockwise
//! on screen, as in torchvision.

use lora_core::augment::{Image, ImageAugment};
use lora_core::init::SeededRng;
use rand::Rng;
use serde::Deserialize;

use crate::common::{default_half, default_one, fires, uniform};

/// Copies the `h x w` window whose top-left corner is at `(top, left)` (which
/// may be negative or reach past the edge: those pixels are `fill`).
pub fn crop(image: &Image, top: isize, left: isize, h: usize, w: usize, fill: f32) -> Image {
    let mut out = Image::zeros(image.channels, h, w);
    for c in 0..image.channels {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (top + y as isize, left + x as isize);
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < image.height && (sx as usize) < image.width;
                let v = if inside {
                    image.get(c, sy as usize, sx as usize)
                } else {
                    fill
                };
                out.set(c, y, x, v);
            }
        }
    }
    out
}

/// Bilinear read at `(sy, sx)`; neighbours outside the image read `fill`.
fn bilinear(image: &Image, c: usize, sy: f32, sx: f32, fill: f32) -> f32 {
    // Coordinates within 1e-4 of a whole pixel are snapped to it, so that
    // quarter turns and flips are exact despite cos(90 degrees) != 0 in f32.
    let snap = |v: f32| if (v - v.round()).abs() < 1e-4 { v.round() } else { v };
    let (sy, sx) = (snap(sy), snap(sx));
    let (y0, x0) = (sy.floor(), sx.floor());
    let (fy, fx) = (sy - y0, sx - x0);
    let read = |y: f32, x: f32| {
        if y < 0.0 || x < 0.0 || y >= image.height as f32 || x >= image.width as f32 {
            fill
        } else {
            image.get(c, y as usize, x as usize)
        }
    };
    let mut v = (1.0 - fy) * (1.0 - fx) * read(y0, x0);
    if fx > 0.0 {
        v += (1.0 - fy) * fx * read(y0, x0 + 1.0);
    }
    if fy > 0.0 {
        v += fy * (1.0 - fx) * read(y0 + 1.0, x0);
        if fx > 0.0 {
            v += fy * fx * read(y0 + 1.0, x0 + 1.0);
        }
    }
    v
}

/// Samples the input at `source(y, x)` for every output pixel (same size).
fn warp(image: &Image, fill: f32, source: impl Fn(f32, f32) -> (f32, f32)) -> Image {
    let mut out = Image::zeros(image.channels, image.height, image.width);
    for y in 0..image.height {
        for x in 0..image.width {
            let (sy, sx) = source(y as f32, x as f32);
            for c in 0..image.channels {
                out.set(c, y, x, bilinear(image, c, sy, sx, fill));
            }
        }
    }
    out
}

/// The affine map about the centre: output = centre + M (input - centre) + t,
/// with `M = rotation(angle) * shear_x(shear) * scale`. Sampling inverts it.
pub fn affine(image: &Image, angle_deg: f32, translate: (f32, f32), scale: f32, shear_deg: f32, fill: f32) -> Image {
    let (cy, cx) = ((image.height as f32 - 1.0) / 2.0, (image.width as f32 - 1.0) / 2.0);
    let (s, c) = angle_deg.to_radians().sin_cos();
    let k = shear_deg.to_radians().tan();
    // Screen rotation counter-clockwise with y pointing down: [[c, s], [-s, c]] on (x, y).
    let m = [[c * scale, (c * k + s) * scale], [-s * scale, (-s * k + c) * scale]];
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]];
    let (ty, tx) = translate;
    warp(image, fill, |y, x| {
        let (dx, dy) = (x - cx - tx, y - cy - ty);
        (
            cy + inv[1][0] * dx + inv[1][1] * dy,
            cx + inv[0][0] * dx + inv[0][1] * dy,
        )
    })
}

/// Bilinear resize with half-pixel centres (PyTorch's `align_corners=False`), edges clamped.
pub fn resize(image: &Image, h: usize, w: usize) -> Image {
    let mut out = Image::zeros(image.channels, h, w);
    let (ry, rx) = (image.height as f32 / h as f32, image.width as f32 / w as f32);
    let clamp = |v: f32, n: usize| v.clamp(0.0, (n - 1) as f32);
    for y in 0..h {
        let sy = clamp((y as f32 + 0.5) * ry - 0.5, image.height);
        for x in 0..w {
            let sx = clamp((x as f32 + 0.5) * rx - 0.5, image.width);
            for c in 0..image.channels {
                out.set(c, y, x, bilinear(image, c, sy, sx, 0.0));
            }
        }
    }
    out
}

pub fn flip_horizontal(image: &mut Image) {
    for c in 0..image.channels {
        for y in 0..image.height {
            let start = image.index(c, y, 0);
            image.pixels[start..start + image.width].reverse();
        }
    }
}

pub fn flip_vertical(image: &mut Image) {
    let w = image.width;
    for c in 0..image.channels {
        for y in 0..image.height / 2 {
            let (a, b) = (image.index(c, y, 0), image.index(c, image.height - 1 - y, 0));
            for x in 0..w {
                image.pixels.swap(a + x, b + x);
            }
        }
    }
}

/// `random-crop`: pad every side by `padding` with `fill`, then crop `size` at a random place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RandomCrop {
    /// `[height, width]`; absent: the input size.
    pub size: Option<[usize; 2]>,
    #[serde(default)]
    pub padding: usize,
    #[serde(default)]
    pub fill: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl ImageAugment for RandomCrop {
    fn name(&self) -> &'static str {
        "random-crop"
    }
    fn output_shape(&self, (c, h, w): (usize, usize, usize)) -> (usize, usize, usize) {
        let [oh, ow] = self.size.unwrap_or([h, w]);
        (c, oh, ow)
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let [h, w] = self.size.unwrap_or([image.height, image.width]);
        let pad = self.padding as isize;
        // Offsets into the padded image, then shifted back to input coordinates.
        let span_y = (image.height + 2 * self.padding).saturating_sub(h);
        let span_x = (image.width + 2 * self.padding).saturating_sub(w);
        let top = rng.random_range(0..=span_y) as isize - pad;
        let left = rng.random_range(0..=span_x) as isize - pad;
        if fires(self.p, rng) {
            *image = crop(image, top, left, h, w, self.fill);
        } else if (h, w) != (image.height, image.width) {
            // The output shape is fixed; a skipped crop still takes the centre.
            *image = center(image, h, w, self.fill);
        }
    }
}

fn center(image: &Image, h: usize, w: usize, fill: f32) -> Image {
    // torchvision: int(round((H - h) / 2)), rounding half to even.
    let off = |big: usize, small: usize| ((big as f64 - small as f64) / 2.0).round_ties_even() as isize;
    crop(image, off(image.height, h), off(image.width, w), h, w, fill)
}

/// `center-crop`: the central `size` window (padded with `fill` if larger than the image).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CenterCrop {
    pub size: [usize; 2],
    #[serde(default)]
    pub fill: f32,
}

impl ImageAugment for CenterCrop {
    fn name(&self) -> &'static str {
        "center-crop"
    }
    fn output_shape(&self, (c, _, _): (usize, usize, usize)) -> (usize, usize, usize) {
        (c, self.size[0], self.size[1])
    }
    fn apply(&self, image: &mut Image, _rng: &mut SeededRng) {
        *image = center(image, self.size[0], self.size[1], self.fill);
    }
}

/// `resize`: bilinear to `size`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resize {
    pub size: [usize; 2],
}

impl ImageAugment for Resize {
    fn name(&self) -> &'static str {
        "resize"
    }
    fn output_shape(&self, (c, _, _): (usize, usize, usize)) -> (usize, usize, usize) {
        (c, self.size[0], self.size[1])
    }
    fn apply(&self, image: &mut Image, _rng: &mut SeededRng) {
        if (image.height, image.width) != (self.size[0], self.size[1]) {
            *image = resize(image, self.size[0], self.size[1]);
        }
    }
}

/// `horizontal-flip` (mirror left-right) with probability `p` (default 0.5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HorizontalFlip {
    #[serde(default = "default_half")]
    pub p: f32,
}

impl ImageAugment for HorizontalFlip {
    fn name(&self) -> &'static str {
        "horizontal-flip"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        if fires(self.p, rng) {
            flip_horizontal(image);
        }
    }
}

/// `vertical-flip` (upside down) with probability `p` (default 0.5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerticalFlip {
    #[serde(default = "default_half")]
    pub p: f32,
}

impl ImageAugment for VerticalFlip {
    fn name(&self) -> &'static str {
        "vertical-flip"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        if fires(self.p, rng) {
            flip_vertical(image);
        }
    }
}

/// `rotation`: a uniform angle in `[-degrees, degrees]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rotation {
    pub degrees: f32,
    #[serde(default)]
    pub fill: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl ImageAugment for Rotation {
    fn name(&self) -> &'static str {
        "rotation"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let angle = uniform(-self.degrees, self.degrees, rng);
        if fires(self.p, rng) {
            *image = affine(image, angle, (0.0, 0.0), 1.0, 0.0, self.fill);
        }
    }
}

/// `random-affine`: rotation in `[-degrees, degrees]`, translation up to
/// `translate = [fy, fx]` of the height and width, scale in `scale = [lo, hi]`,
/// horizontal shear in `[-shear, shear]` degrees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RandomAffine {
    #[serde(default)]
    pub degrees: f32,
    #[serde(default)]
    pub translate: [f32; 2],
    #[serde(default = "unit_scale")]
    pub scale: [f32; 2],
    #[serde(default)]
    pub shear: f32,
    #[serde(default)]
    pub fill: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

fn unit_scale() -> [f32; 2] {
    [1.0, 1.0]
}

impl ImageAugment for RandomAffine {
    fn name(&self) -> &'static str {
        "random-affine"
    }
    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let angle = uniform(-self.degrees, self.degrees, rng);
        let max_dy = self.translate[0] * image.height as f32;
        let max_dx = self.translate[1] * image.width as f32;
        // torchvision rounds translations to whole pixels.
        let ty = uniform(-max_dy, max_dy, rng).round();
        let tx = uniform(-max_dx, max_dx, rng).round();
        let scale = uniform(self.scale[0], self.scale[1], rng);
        let shear = uniform(-self.shear, self.shear, rng);
        if fires(self.p, rng) {
            *image = affine(image, angle, (ty, tx), scale, shear, self.fill);
        }
    }
}
