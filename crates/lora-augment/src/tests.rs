//! Hand-computed pixels for every operation, and the properties they promise:
//! shapes kept (or as declared), flips are involutions, values stay in range,
//! the same stream gives the same result.

use lora_core::ImageBatch;
use lora_core::augment::{Augmentation, BatchAugment, Image, ImageAugment};
use lora_core::config::{Component, PipelineConfig};
use lora_core::init::{SeededRng, rng};
use lora_core::registry::{AugmentationEntry, entries, lookup};

use crate::color::*;
use crate::common::fires;
use crate::geometry::*;
use crate::mix::*;
use crate::noise::*;

fn img(c: usize, h: usize, w: usize, px: &[f32]) -> Image {
    Image::new(c, h, w, px.to_vec())
}

fn grid(h: usize, w: usize) -> Image {
    img(1, h, w, &(0..h * w).map(|v| v as f32).collect::<Vec<_>>())
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

/// A random image in [0, 1].
fn noise_image(c: usize, h: usize, w: usize, seed: u64) -> Image {
    let mut r = rng(seed);
    img(
        c,
        h,
        w,
        &(0..c * h * w)
            .map(|_| rand::Rng::random::<f32>(&mut r))
            .collect::<Vec<_>>(),
    )
}

/// Builds the op named `ty` from a TOML body through the registry.
fn op(ty: &str, body: &str) -> Augmentation {
    let c = component(ty, body);
    let entry = lookup::<AugmentationEntry>(&c, |_| true).unwrap();
    (entry.build)(&c).unwrap_or_else(|d| panic!("{d}"))
}

fn component(ty: &str, body: &str) -> Component {
    let text = format!(
        "[run]\nname = \"t\"\noutput-dir = \"o\"\n[data]\ntype = \"idx\"\n[[data.augment]]\ntype = \"{ty}\"\n{body}\n[model]\ntype = \"m\"\n[lora]\nr = 1\nalpha = 1\ntarget-modules = []\n[train]\n[eval]\n"
    );
    let p = PipelineConfig::parse(std::path::Path::new("p.toml"), text).unwrap();
    p.data.array_components("augment").unwrap().remove(0)
}

fn sample(ty: &str, body: &str) -> Box<dyn ImageAugment> {
    match op(ty, body) {
        Augmentation::Sample(s) => s,
        _ => panic!("{ty} is not a per-image op"),
    }
}

fn batch_op(ty: &str, body: &str) -> Box<dyn BatchAugment> {
    match op(ty, body) {
        Augmentation::Batch(b) => b,
        _ => panic!("{ty} is not a batch op"),
    }
}

fn run(op: &dyn ImageAugment, image: &Image, seed: u64) -> Image {
    let mut out = image.clone();
    op.apply(&mut out, &mut rng(seed));
    out
}

#[test]
fn every_operation_is_registered() {
    let names: Vec<&str> = entries::<AugmentationEntry>().iter().map(|e| e.name).collect();
    for n in [
        "random-swap",
        "token-dropout",
        "token-mask",
        "center-crop",
        "color-jitter",
        "cutmix",
        "gaussian-blur",
        "gaussian-noise",
        "grayscale",
        "horizontal-flip",
        "mixup",
        "normalize",
        "random-affine",
        "random-crop",
        "random-erasing",
        "resize",
        "rotation",
        "vertical-flip",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
}

#[test]
fn bad_parameters_are_located_diagnostics() {
    let build = |ty: &str, body: &str| {
        let c = component(ty, body);
        let e = lookup::<AugmentationEntry>(&c, |_| true).unwrap();
        match (e.build)(&c) {
            Err(d) => d,
            Ok(_) => panic!("{ty} {body} accepted"),
        }
    };
    let d = build("horizontal-flip", "p = 1.5");
    assert_eq!(d.0[0].message, "p (1.5) is outside the valid range 0 <= p <= 1");
    assert_eq!(d.0[0].location.as_ref().unwrap().line_col(), (8, 5));
    let d = build("gaussian-blur", "kernel-size = 4\nsigma = [2.0, 1.0]");
    assert_eq!(d.0.len(), 2);
    let d = build("normalize", "mean = [0.5, 0.5]\nstd = [0.0]");
    assert_eq!(d.0.len(), 2);
    let d = build("random-crop", "paddin = 2");
    assert_eq!(d.0[0].code, "config::unknown-key");
    assert_eq!(d.0[0].help.as_deref(), Some("did you mean `padding`?"));
}

#[test]
fn random_crop_pads_with_fill_and_keeps_the_declared_shape() {
    let image = grid(3, 3);
    // A 5x5 crop of the image padded by 1 has a single place: the whole padded image.
    let padded = run(
        &*sample("random-crop", "size = [5, 5]\npadding = 1\nfill = -1.0"),
        &image,
        1,
    );
    #[rustfmt::skip]
    let expected = [
        -1., -1., -1., -1., -1.,
        -1.,  0.,  1.,  2., -1.,
        -1.,  3.,  4.,  5., -1.,
        -1.,  6.,  7.,  8., -1.,
        -1., -1., -1., -1., -1.,
    ];
    assert_eq!(padded.pixels, expected);
    let crop = sample("random-crop", "size = [2, 2]\npadding = 2");
    assert_eq!(crop.output_shape((1, 3, 3)), (1, 2, 2));
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let out = run(&*crop, &image, seed);
        assert_eq!((out.height, out.width), (2, 2));
        assert_eq!(out, run(&*crop, &image, seed), "same stream, same crop");
        // A window of the padded image: 0 outside, consecutive pixels inside.
        seen.insert(out.pixels.iter().map(|v| *v as i32).collect::<Vec<_>>());
    }
    assert!(seen.len() > 10, "crops vary with the stream: {}", seen.len());
    assert!(seen.contains(&vec![0, 0, 0, 0]) && seen.contains(&vec![4, 5, 7, 8]));
}

#[test]
fn center_crop_follows_torchvision_rounding() {
    let c = sample("center-crop", "size = [2, 2]");
    assert_eq!(run(&*c, &grid(4, 4), 0).pixels, [5., 6., 9., 10.]);
    // (4 - 3) / 2 = 0.5 rounds to 0, as Python's round does.
    let c = sample("center-crop", "size = [3, 3]");
    assert_eq!(run(&*c, &grid(4, 4), 0).pixels, [0., 1., 2., 4., 5., 6., 8., 9., 10.]);
    let c = sample("center-crop", "size = [3, 3]\nfill = 9.0");
    assert_eq!(run(&*c, &grid(1, 1), 0).pixels, [9., 9., 9., 9., 0., 9., 9., 9., 9.]);
}

#[test]
fn resize_matches_pytorch_bilinear_without_corner_alignment() {
    let r = sample("resize", "size = [4, 4]");
    // torch.nn.functional.interpolate([[0, 1], [2, 3]], size=4, mode="bilinear", align_corners=False)
    #[rustfmt::skip]
    let expected = [
        0.0, 0.25, 0.75, 1.0,
        0.5, 0.75, 1.25, 1.5,
        1.5, 1.75, 2.25, 2.5,
        2.0, 2.25, 2.75, 3.0,
    ];
    close(&run(&*r, &grid(2, 2), 0).pixels, &expected);
    let down = sample("resize", "size = [2, 2]");
    close(&run(&*down, &grid(4, 4), 0).pixels, &[2.5, 4.5, 10.5, 12.5]);
    assert_eq!(down.output_shape((3, 4, 4)), (3, 2, 2));
}

#[test]
fn flips_are_hand_checked_involutions() {
    let image = img(1, 2, 3, &[1., 2., 3., 4., 5., 6.]);
    let h = sample("horizontal-flip", "p = 1.0");
    let v = sample("vertical-flip", "p = 1.0");
    assert_eq!(run(&*h, &image, 0).pixels, [3., 2., 1., 6., 5., 4.]);
    assert_eq!(run(&*v, &image, 0).pixels, [4., 5., 6., 1., 2., 3.]);
    let rgb = noise_image(3, 5, 4, 3);
    assert_eq!(run(&*h, &run(&*h, &rgb, 0), 0), rgb);
    assert_eq!(run(&*v, &run(&*v, &rgb, 0), 0), rgb);
    let never = sample("horizontal-flip", "p = 0.0");
    assert_eq!(run(&*never, &rgb, 0), rgb);
    // p = 0.5 flips about half of the streams.
    let half = sample("horizontal-flip", "");
    let flipped = (0..400).filter(|&s| run(&*half, &image, s) != image).count();
    assert!((150..250).contains(&flipped), "{flipped}");
}

#[test]
fn rotation_and_affine_move_pixels_where_hand_computation_says() {
    let image = img(1, 3, 3, &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    // A quarter turn counter-clockwise: the top-right corner comes to the top-left.
    assert_eq!(
        affine(&image, 90.0, (0.0, 0.0), 1.0, 0.0, 0.0).pixels,
        [3., 6., 9., 2., 5., 8., 1., 4., 7.]
    );
    // One pixel to the right, the vacated column filled.
    assert_eq!(
        affine(&image, 0.0, (0.0, 1.0), 1.0, 0.0, -1.0).pixels,
        [-1., 1., 2., -1., 4., 5., -1., 7., 8.]
    );
    // Zoom x2 about the centre: the corner reads (0.5, 0.5), the mean of 1, 2, 4, 5.
    let zoom = affine(&image, 0.0, (0.0, 0.0), 2.0, 0.0, 0.0);
    close(&zoom.pixels[..1], &[3.0]);
    assert_eq!(zoom.pixels[4], 5.0);
    // Shear of 45 degrees: output (0, 0) reads input (0, 1); output (0, 2) falls outside.
    let sheared = affine(&image, 0.0, (0.0, 0.0), 1.0, 45.0, 0.0);
    close(
        &[sheared.pixels[0], sheared.pixels[2], sheared.pixels[4]],
        &[2.0, 0.0, 5.0],
    );
    // The ops: zero ranges are the identity; random ones keep the shape and the value range.
    assert_eq!(run(&*sample("rotation", "degrees = 0.0"), &image, 4), image);
    let still = sample("random-affine", "degrees = 0.0");
    assert_eq!(run(&*still, &image, 4), image);
    let wild = sample(
        "random-affine",
        "degrees = 30.0\ntranslate = [0.1, 0.1]\nscale = [0.8, 1.2]\nshear = 10.0",
    );
    let rgb = noise_image(3, 8, 8, 5);
    for seed in 0..20 {
        let out = run(&*wild, &rgb, seed);
        assert_eq!((out.channels, out.height, out.width), (3, 8, 8));
        assert!(out.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(out, run(&*wild, &rgb, seed));
    }
}

#[test]
fn colour_adjustments_match_hand_computation() {
    let mut a = img(1, 1, 2, &[0.5, 0.8]);
    adjust_brightness(&mut a, 1.5);
    close(&a.pixels, &[0.75, 1.0]);
    let mut b = img(1, 2, 2, &[0.2, 0.4, 0.6, 0.8]);
    adjust_contrast(&mut b, 0.5);
    close(&b.pixels, &[0.35, 0.45, 0.55, 0.65]);
    let mut red = img(3, 1, 1, &[1.0, 0.0, 0.0]);
    adjust_saturation(&mut red, 0.0);
    close(&red.pixels, &[0.299; 3]);
    let mut red = img(3, 1, 1, &[1.0, 0.0, 0.0]);
    adjust_hue(&mut red, 1.0 / 3.0);
    close(&red.pixels, &[0.0, 1.0, 0.0]);
    let mut grey = img(1, 1, 2, &[0.3, 0.6]);
    adjust_saturation(&mut grey, 0.0);
    adjust_hue(&mut grey, 0.25);
    assert_eq!(grey.pixels, [0.3, 0.6], "one channel has no saturation or hue");

    let g = sample("grayscale", "");
    close(&run(&*g, &img(3, 1, 1, &[0.5, 0.25, 1.0]), 0).pixels, &[0.41025; 3]);
    let n = sample("normalize", "mean = [0.5]\nstd = [0.25]");
    close(&run(&*n, &img(1, 1, 3, &[0.5, 1.0, 0.0]), 0).pixels, &[0.0, 2.0, -2.0]);
    let n3 = sample("normalize", "mean = [0.0, 0.5, 1.0]\nstd = [1.0, 0.5, 2.0]");
    close(&run(&*n3, &img(3, 1, 1, &[1.0, 1.0, 1.0]), 0).pixels, &[1.0, 1.0, 0.0]);

    let jitter = sample(
        "color-jitter",
        "brightness = 0.5\ncontrast = 0.5\nsaturation = 0.5\nhue = 0.2",
    );
    let rgb = noise_image(3, 6, 6, 8);
    for seed in 0..20 {
        let out = run(&*jitter, &rgb, seed);
        assert!(out.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(out, run(&*jitter, &rgb, seed));
    }
    assert_ne!(run(&*jitter, &rgb, 1), rgb);
    assert_eq!(run(&*sample("color-jitter", ""), &rgb, 1), rgb);
}

#[test]
fn blur_noise_and_erasing_match_hand_computation() {
    // sigma = 1 / sqrt(2 ln 2) makes the 3-tap kernel [0.25, 0.5, 0.25].
    let sigma = 1.0 / (2.0 * 2f32.ln()).sqrt();
    close(&gaussian_kernel(3, sigma), &[0.25, 0.5, 0.25]);
    let mut row = img(1, 1, 4, &[0., 4., 0., 0.]);
    blur(&mut row, &gaussian_kernel(3, sigma));
    // Reflect padding: x = -1 reads x = 1.
    close(&row.pixels, &[2.0, 2.0, 1.0, 0.0]);
    let op = sample("gaussian-blur", &format!("kernel-size = 3\nsigma = [{sigma}, {sigma}]"));
    let mut col = img(1, 4, 1, &[0., 4., 0., 0.]);
    col = run(&*op, &col, 0);
    close(&col.pixels, &[2.0, 2.0, 1.0, 0.0]);
    let flat = img(1, 3, 3, &[0.7; 9]);
    close(
        &run(&*sample("gaussian-blur", "kernel-size = 5"), &flat, 3).pixels,
        &[0.7; 9],
    );

    let shift = sample("gaussian-noise", "mean = 0.1\nstd = 0.0");
    close(&run(&*shift, &img(1, 1, 2, &[0.5, 0.95]), 0).pixels, &[0.6, 1.0]);
    let noisy = run(
        &*sample("gaussian-noise", "std = 0.1\nclip = false"),
        &img(1, 100, 100, &[0.5; 10_000]),
        2,
    );
    let mean = noisy.pixels.iter().sum::<f32>() / 10_000.0;
    let sd = (noisy.pixels.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 10_000.0).sqrt();
    assert!((mean - 0.5).abs() < 0.005 && (sd - 0.1).abs() < 0.005, "{mean} {sd}");

    // A quarter of a 4x4 image with aspect 1 is a 2x2 square, at the place the stream picks.
    let erase = sample(
        "random-erasing",
        "p = 1.0\nscale = [0.25, 0.25]\nratio = [1.0, 1.0]\nvalue = 0.0",
    );
    let out = run(&*erase, &img(2, 4, 4, &[1.0; 32]), 6);
    let mut r: SeededRng = rng(6);
    assert!(fires(1.0, &mut r));
    let (top, left, h, w) = erasing_box((4, 4), [0.25, 0.25], [1.0, 1.0], &mut r).unwrap();
    assert_eq!((h, w), (2, 2));
    for c in 0..2 {
        for y in 0..4 {
            for x in 0..4 {
                let inside = (top..top + 2).contains(&y) && (left..left + 2).contains(&x);
                assert_eq!(out.get(c, y, x), if inside { 0.0 } else { 1.0 });
            }
        }
    }
}

fn two_images(a: f32, b: f32, side: usize) -> ImageBatch {
    let n = side * side;
    ImageBatch {
        batch_size: 2,
        channels: 1,
        height: side,
        width: side,
        pixels: [vec![a; n], vec![b; n]].concat(),
        labels: vec![0, 1],
        soft_labels: None,
    }
}

#[test]
fn mixup_and_cutmix_blend_images_and_labels_by_hand() {
    let mut b = two_images(1.0, 0.0, 1);
    mixup(&mut b, 2, 0.25);
    close(&b.pixels, &[0.25, 0.75]);
    close(b.soft_labels.as_ref().unwrap(), &[0.25, 0.75, 0.75, 0.25]);

    let mut b = two_images(1.0, 0.0, 2);
    cutmix(&mut b, 2, (0, 0, 1, 2));
    assert_eq!(b.pixels, [0., 0., 1., 1., 1., 1., 0., 0.]);
    close(b.soft_labels.as_ref().unwrap(), &[0.5, 0.5, 0.5, 0.5]);

    // The registered ops: targets stay distributions, shapes stay put, streams repeat.
    for (ty, body) in [("mixup", "alpha = 0.4"), ("cutmix", "alpha = 1.0")] {
        let op = batch_op(ty, body);
        let mut batch = ImageBatch {
            batch_size: 4,
            channels: 3,
            height: 6,
            width: 6,
            pixels: noise_image(4 * 3, 6, 6, 1).pixels,
            labels: vec![0, 1, 2, 1],
            soft_labels: None,
        };
        let before = batch.clone();
        op.apply(&mut batch, 3, &mut rng(9));
        let soft = batch.soft_labels.clone().unwrap();
        assert_eq!(soft.len(), 12);
        for row in soft.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5 && row.iter().all(|v| *v >= 0.0));
        }
        assert_eq!(batch.pixels.len(), before.pixels.len());
        assert!(batch.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut again = before.clone();
        op.apply(&mut again, 3, &mut rng(9));
        assert_eq!(again, batch);
    }
}
