//! Image pipelines: `[[data.augment]]` and `[[data.eval-augment]]` operations,
//! the shapes they produce against the ViT's input, and the ViT's own geometry.

use lora_core::doc::Node;
use lora_core::rules::Edit::{Base, Set};
use lora_core::rules::{Finding, RuleContext};

use super::{one, text_data, written};

/// The image pipeline most image rules start from.
const FASHION: lora_core::rules::Edit = Base("configs/pretrain-vit-fashion.toml");

/// The operations of one list: (type, table).
fn ops<'a>(ctx: &RuleContext<'a>, list: &str) -> Vec<(&'a str, &'a Node)> {
    let Some(items) = ctx.node(&format!("data.{list}")).and_then(Node::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|n| Some((n.get("type")?.as_str()?, n)))
        .collect()
}

fn all_ops<'a>(ctx: &RuleContext<'a>) -> Vec<(&'a str, &'a Node)> {
    let mut v = ops(ctx, "augment");
    v.extend(ops(ctx, "eval-augment"));
    v
}

fn pair<'a>(n: &'a Node, key: &str) -> Option<(f64, f64, &'a Node)> {
    let v = n.get(key)?;
    let a = v.as_array()?;
    Some((a.first()?.as_float()?, a.get(1)?.as_float()?, v))
}

fn at(n: &Node, key: &str) -> Option<lora_core::diag::Location> {
    Some(n.get(key).unwrap_or(n).location.clone())
}

/// Findings for every op of the given types whose `key` is bad.
fn each(
    ctx: &RuleContext,
    types: &[&str],
    key: &str,
    bad: impl Fn(f64) -> bool,
    message: impl Fn(&str, &str) -> String,
) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| types.contains(t))
        .filter_map(|(t, n)| {
            let v = n.get(key)?;
            v.as_float()
                .filter(|x| bad(*x))
                .map(|_| Finding::new(message(t, &written(v)), Some(v.location.clone())))
        })
        .collect()
}

/// Channels, height and width of the images a data source yields, when its format fixes them.
fn source_shape(ctx: &RuleContext) -> Option<(usize, usize, usize)> {
    match ctx.type_of("data")? {
        "idx" | "mnist-json" => Some((1, 28, 28)),
        "digits-csv" => Some((1, 8, 8)),
        _ => None,
    }
}

fn is_vit(ctx: &RuleContext) -> bool {
    ctx.type_of("model") == Some("vit-classifier")
}

const IMAGE_OPS: [&str; 15] = [
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
];

fn probability_range(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &IMAGE_OPS,
        "p",
        |p| !(0.0..=1.0).contains(&p),
        |t, v| format!("{t} p ({v}) is a probability. Valid range: 0 <= p <= 1"),
    )
}
lora_core::rule! {
    id: "augment::probability-range", category: Range, severity: Error,
    summary: "An augmentation's probability is outside [0, 1].",
    doc: "`p` is the chance that the operation applies to a sample (or a batch, for mixup and cutmix).",
    trip: [FASHION, Set("data.augment=[{type = \"horizontal-flip\", p = 1.5}]")], check: probability_range,
}

fn probability_zero(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &IMAGE_OPS,
        "p",
        |p| p == 0.0,
        |t, _| format!("{t} has p = 0: it never applies"),
    )
}
lora_core::rule! {
    id: "augment::probability-zero", category: Range, severity: Warning,
    summary: "An augmentation never applies (p = 0).",
    doc: "Remove it, or give it a probability; a zero usually means a percentage was meant (p = 0.5 for 50%).",
    trip: [FASHION, Set("data.augment=[{type = \"horizontal-flip\", p = 0.0}]")], check: probability_zero,
}

/// The size entering a resizing op, the op's kind, and where its `size` is written.
type SizeStep = ((usize, usize), &'static str, Option<lora_core::diag::Location>);

/// The (height, width) after each op of a list, starting from the source's size.
fn chain(ctx: &RuleContext, list: &str) -> Option<Vec<SizeStep>> {
    let (_, mut h, mut w) = source_shape(ctx)?;
    let mut out = Vec::new();
    for (t, n) in ops(ctx, list) {
        let size = n
            .get("size")
            .and_then(Node::as_array)
            .and_then(|a| Some((a.first()?.as_int()? as usize, a.get(1)?.as_int()? as usize)));
        if let ("random-crop" | "center-crop" | "resize", Some(s)) = (t, size) {
            let kind = if t == "resize" { "resize" } else { "crop" };
            out.push(((h, w), kind, at(n, "size")));
            (h, w) = s;
        }
    }
    out.push(((h, w), "end", None));
    Some(out)
}

fn output_size(ctx: &RuleContext) -> Vec<Finding> {
    let Some(size) = ctx.int("model.image-size").filter(|_| is_vit(ctx)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for list in ["augment", "eval-augment"] {
        let Some(steps) = chain(ctx, list) else { continue };
        let (h, w) = steps.last().expect("the chain ends with the output").0;
        if (h, w) != (size.value as usize, size.value as usize) {
            let place = steps
                .iter()
                .rev()
                .find_map(|s| s.2.clone())
                .or_else(|| Some(size.location.clone()));
            found.push(
                Finding::new(
                    format!(
                        "[data] {list} produces {h}x{w} images but the model takes {0}x{0} (image-size)",
                        size.value
                    ),
                    place,
                )
                .help("crop or resize to the model's image-size, in both augment and eval-augment"),
            );
        }
    }
    found
}
lora_core::rule! {
    id: "augment::output-size-mismatch", category: Cross, severity: Error,
    summary: "The augmented images do not have the model's input size.",
    doc: "Crops and resizes change the image size; the ViT's patch grid is fixed by image-size. The sizes are followed through the list from the source's (28x28 for IDX and mnist-json, 8x8 for the scikit-learn digits).",
    trip: [FASHION, Set("data.augment=[{type = \"center-crop\", size = [24, 24]}]")], check: output_size,
}

fn crop_exceeds(ctx: &RuleContext) -> Vec<Finding> {
    let mut found = Vec::new();
    for list in ["augment", "eval-augment"] {
        let Some((_, h0, w0)) = source_shape(ctx) else {
            return Vec::new();
        };
        let (mut h, mut w) = (h0, w0);
        for (t, n) in ops(ctx, list) {
            let size = n
                .get("size")
                .and_then(Node::as_array)
                .and_then(|a| Some((a.first()?.as_int()? as usize, a.get(1)?.as_int()? as usize)));
            if t == "random-crop"
                && let Some((ch, cw)) = size
            {
                let pad = n.get("padding").and_then(Node::as_int).unwrap_or(0).max(0) as usize;
                if ch > h + 2 * pad || cw > w + 2 * pad {
                    found.push(Finding::new(
                        format!(
                            "random-crop of {ch}x{cw} from {h}x{w} images padded by {pad}: larger than the padded image ({}x{})",
                            h + 2 * pad,
                            w + 2 * pad
                        ),
                        at(n, "size"),
                    ));
                }
            }
            if let (Some(s), true) = (size, matches!(t, "random-crop" | "center-crop" | "resize")) {
                (h, w) = s;
            }
        }
    }
    found
}
lora_core::rule! {
    id: "augment::crop-exceeds-input", category: Cross, severity: Error,
    summary: "A random crop is larger than the padded image.",
    doc: "random-crop pads every side by `padding`, then cuts `size`; a crop larger than that has no valid position.",
    trip: [FASHION, Set("data.augment=[{type = \"random-crop\", size = [32, 32], padding = 1}]")], check: crop_exceeds,
}

fn rotation_negative(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["rotation", "random-affine"],
        "degrees",
        |d| d < 0.0,
        |t, v| {
            format!(
                "{t} degrees ({v}) is negative: it is the half-width of a symmetric range. Valid range: 0 <= degrees <= 180"
            )
        },
    )
}
lora_core::rule! {
    id: "augment::rotation-degrees-negative", category: Range, severity: Error,
    summary: "A rotation range is negative.",
    doc: "Angles are drawn from [-degrees, degrees]; write the positive half-width.",
    trip: [FASHION, Set("data.augment=[{type = \"rotation\", degrees = -10.0}]")], check: rotation_negative,
}

fn rotation_large(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["rotation", "random-affine"],
        "degrees",
        |d| d > 180.0,
        |t, v| {
            format!(
                "{t} degrees ({v}) is above 180: the range already covers every angle. Valid range: 0 <= degrees <= 180"
            )
        },
    )
}
lora_core::rule! {
    id: "augment::rotation-degrees-large", category: Range, severity: Error,
    summary: "A rotation range above 180 degrees.",
    doc: "Angles above 180 repeat smaller ones, and the augmentation rejects them; perhaps radians were meant as degrees, or the reverse.",
    trip: [FASHION, Set("data.augment=[{type = \"rotation\", degrees = 360.0}]")], check: rotation_large,
}

fn affine_scale(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "random-affine")
        .filter_map(|(_, n)| pair(n, "scale"))
        .filter(|(lo, hi, _)| !(*lo > 0.0 && lo <= hi))
        .map(|(lo, hi, v)| {
            Finding::new(
                format!(
                    "random-affine scale [{lo}, {hi}] is not a range of positive factors. Valid range: 0 < min <= max"
                ),
                Some(v.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::affine-scale-range", category: Range, severity: Error,
    summary: "random-affine's scale is not [min, max] with 0 < min <= max.",
    doc: "The scale factor is drawn from [min, max]; [1.0, 1.0] keeps the size.",
    trip: [FASHION, Set("data.augment=[{type = \"random-affine\", scale = [1.2, 0.8]}]")], check: affine_scale,
}

fn affine_translate(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "random-affine")
        .filter_map(|(_, n)| pair(n, "translate"))
        .filter(|(x, y, _)| !((0.0..=1.0).contains(x) && (0.0..=1.0).contains(y)))
        .map(|(x, y, v)| {
            Finding::new(
                format!(
                    "random-affine translate [{x}, {y}] are fractions of the width and height. Valid range: 0 <= t <= 1"
                ),
                Some(v.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::affine-translate-range", category: Range, severity: Error,
    summary: "random-affine's translate is not a pair of fractions in [0, 1].",
    doc: "Shifts are fractions of the image's width and height (torchvision's convention), not pixels.",
    trip: [FASHION, Set("data.augment=[{type = \"random-affine\", translate = [4.0, 4.0]}]")], check: affine_translate,
}

fn affine_shear(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["random-affine"],
        "shear",
        |s| s.abs() > 45.0,
        |_, v| {
            format!(
                "random-affine shear ({v} degrees) folds the image almost flat. Valid range: 0 <= shear <= 45 is usual"
            )
        },
    )
}
lora_core::rule! {
    id: "augment::affine-shear-large", category: Range, severity: Warning,
    summary: "A shear above 45 degrees.",
    doc: "Shears near 90 degrees squash the image into a line.",
    trip: [FASHION, Set("data.augment=[{type = \"random-affine\", shear = 60.0}]")], check: affine_shear,
}

fn jitter_negative(ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    for key in ["brightness", "contrast", "saturation"] {
        out.extend(each(
            ctx,
            &["color-jitter"],
            key,
            |v| v < 0.0,
            |_, v| format!("color-jitter {key} ({v}) is negative. Valid range: 0 <= {key}"),
        ));
    }
    out
}
lora_core::rule! {
    id: "augment::jitter-negative", category: Range, severity: Error,
    summary: "A color-jitter strength is negative.",
    doc: "Brightness, contrast and saturation factors are drawn from [1 - s, 1 + s]; s is a non-negative strength.",
    trip: [FASHION, Set("data.augment=[{type = \"color-jitter\", brightness = -0.2}]")], check: jitter_negative,
}

fn jitter_hue(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["color-jitter"],
        "hue",
        |h| !(0.0..=0.5).contains(&h),
        |_, v| format!("color-jitter hue ({v}) is a fraction of the colour wheel. Valid range: 0 <= hue <= 0.5"),
    )
}
lora_core::rule! {
    id: "augment::jitter-hue-range", category: Range, severity: Error,
    summary: "color-jitter's hue is outside [0, 0.5].",
    doc: "The hue shift is drawn from [-hue, hue] turns; half a turn already reaches every colour.",
    trip: [FASHION, Set("data.augment=[{type = \"color-jitter\", hue = 0.9}]")], check: jitter_hue,
}

fn jitter_grayscale(ctx: &RuleContext) -> Vec<Finding> {
    if source_shape(ctx).map(|s| s.0) != Some(1) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for key in ["saturation", "hue"] {
        out.extend(each(
            ctx,
            &["color-jitter"],
            key,
            |v| v > 0.0,
            |_, _| format!("color-jitter {key} has no effect on single-channel images"),
        ));
    }
    out
}
lora_core::rule! {
    id: "augment::jitter-on-grayscale", category: Cross, severity: Warning,
    summary: "Saturation or hue jitter on grayscale images.",
    doc: "A single-channel image has no colour: only brightness and contrast change it.",
    trip: [FASHION, Set("data.augment=[{type = \"color-jitter\", saturation = 0.3}]")], check: jitter_grayscale,
}

fn blur_kernel(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["gaussian-blur"],
        "kernel-size",
        |k| k < 1.0 || (k as i64) % 2 == 0,
        |_, v| {
            format!(
                "gaussian-blur kernel-size ({v}) must be odd, so the kernel has a centre. Valid range: 1, 3, 5, ..."
            )
        },
    )
}
lora_core::rule! {
    id: "augment::blur-kernel-odd", category: Range, severity: Error,
    summary: "The blur kernel size is even or zero.",
    doc: "A Gaussian kernel is centred on the pixel, so its size is odd.",
    trip: [FASHION, Set("data.augment=[{type = \"gaussian-blur\", kernel-size = 4}]")], check: blur_kernel,
}

fn blur_sigma(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "gaussian-blur")
        .filter_map(|(_, n)| pair(n, "sigma"))
        .filter(|(lo, hi, _)| !(*lo > 0.0 && lo <= hi))
        .map(|(lo, hi, v)| {
            Finding::new(
                format!(
                    "gaussian-blur sigma [{lo}, {hi}] is not a range of positive widths. Valid range: 0 < min <= max"
                ),
                Some(v.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::blur-sigma-range", category: Range, severity: Error,
    summary: "gaussian-blur's sigma is not [min, max] with 0 < min <= max.",
    doc: "Sigma is drawn from [min, max] for each sample.",
    trip: [FASHION, Set("data.augment=[{type = \"gaussian-blur\", kernel-size = 3, sigma = [2.0, 0.5]}]")], check: blur_sigma,
}

fn noise_negative(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["gaussian-noise"],
        "std",
        |s| s < 0.0,
        |_, v| format!("gaussian-noise std ({v}) is negative. Valid range: 0 <= std"),
    )
}
lora_core::rule! {
    id: "augment::noise-std-negative", category: Range, severity: Error,
    summary: "A negative noise standard deviation.",
    doc: "A standard deviation is not negative.",
    trip: [FASHION, Set("data.augment=[{type = \"gaussian-noise\", std = -0.1}]")], check: noise_negative,
}

fn noise_large(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["gaussian-noise"],
        "std",
        |s| s > 0.5,
        |_, v| format!("gaussian-noise std ({v}) is larger than half the pixel range: the image is mostly noise"),
    )
}
lora_core::rule! {
    id: "augment::noise-std-large", category: Range, severity: Warning,
    summary: "Noise above half the pixel range.",
    doc: "Pixels are in [0, 1] before normalisation; a std above 0.5 drowns the image. 0.01-0.1 is usual; perhaps 0-255 units were meant.",
    trip: [FASHION, Set("data.augment=[{type = \"gaussian-noise\", std = 25.0}]")], check: noise_large,
}

fn erasing_scale(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "random-erasing")
        .filter_map(|(_, n)| pair(n, "scale"))
        .filter(|(lo, hi, _)| !(*lo > 0.0 && lo <= hi && *hi <= 1.0))
        .map(|(lo, hi, v)| {
            Finding::new(
                format!("random-erasing scale [{lo}, {hi}] is the erased share of the area. Valid range: 0 < min <= max <= 1"),
                Some(v.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::erasing-scale-range", category: Range, severity: Error,
    summary: "random-erasing's scale is not a range of area shares.",
    doc: "The erased rectangle's area is drawn from [min, max] of the image's area.",
    trip: [FASHION, Set("data.augment=[{type = \"random-erasing\", scale = [0.3, 1.5]}]")], check: erasing_scale,
}

fn erasing_ratio(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "random-erasing")
        .filter_map(|(_, n)| pair(n, "ratio"))
        .filter(|(lo, hi, _)| !(*lo > 0.0 && lo <= hi))
        .map(|(lo, hi, v)| {
            Finding::new(
                format!(
                    "random-erasing ratio [{lo}, {hi}] is not a range of aspect ratios. Valid range: 0 < min <= max"
                ),
                Some(v.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::erasing-ratio-range", category: Range, severity: Error,
    summary: "random-erasing's ratio is not [min, max] with 0 < min <= max.",
    doc: "The rectangle's aspect ratio is drawn log-uniformly from [min, max].",
    trip: [FASHION, Set("data.augment=[{type = \"random-erasing\", ratio = [3.3, 0.3]}]")], check: erasing_ratio,
}

fn normalize_lists(n: &Node) -> (Option<&[Node]>, Option<&[Node]>) {
    (
        n.get("mean").and_then(Node::as_array),
        n.get("std").and_then(Node::as_array),
    )
}

fn normalize_std(ctx: &RuleContext) -> Vec<Finding> {
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| *t == "normalize")
        .filter_map(|(_, n)| normalize_lists(n).1)
        .flatten()
        .filter(|s| s.as_float().is_some_and(|v| v <= 0.0))
        .map(|s| {
            Finding::new(
                format!(
                    "normalize std ({}) divides by zero or flips the sign. Valid range: 0 < std",
                    written(s)
                ),
                Some(s.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::normalize-std-nonpositive", category: Range, severity: Error,
    summary: "A normalize std of zero or less.",
    doc: "Normalize computes (x - mean) / std per channel.",
    trip: [FASHION, Set("data.augment=[{type = \"normalize\", mean = [0.5], std = [0.0]}]")], check: normalize_std,
}

fn normalize_channels(ctx: &RuleContext) -> Vec<Finding> {
    let Some((c, _, _)) = source_shape(ctx) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (t, n) in all_ops(ctx) {
        if t != "normalize" {
            continue;
        }
        let (mean, std) = normalize_lists(n);
        for (key, list) in [("mean", mean), ("std", std)] {
            if let Some(list) = list
                && list.len() != c
                && list.len() != 1
            {
                out.push(Finding::new(
                    format!("normalize {key} has {} values for {c}-channel images", list.len()),
                    at(n, key),
                ));
            }
        }
    }
    out
}
lora_core::rule! {
    id: "augment::normalize-channels", category: Cross, severity: Error,
    summary: "normalize's mean or std has the wrong number of channels.",
    doc: "One value per channel (or one for all); ImageNet's three-channel statistics on grayscale digits are the usual slip.",
    trip: [FASHION, Set("data.augment=[{type = \"normalize\", mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225]}]")],
    check: normalize_channels,
}

fn normalize_train_only(ctx: &RuleContext) -> Vec<Finding> {
    let train: Vec<&Node> = ops(ctx, "augment")
        .into_iter()
        .filter(|(t, _)| *t == "normalize")
        .map(|x| x.1)
        .collect();
    let eval: Vec<&Node> = ops(ctx, "eval-augment")
        .into_iter()
        .filter(|(t, _)| *t == "normalize")
        .map(|x| x.1)
        .collect();
    let text = |n: &Node| {
        format!(
            "{:?}",
            normalize_lists(n).0.map(|a| a.iter().map(written).collect::<Vec<_>>())
        )
    };
    match (train.first(), eval.first()) {
        (Some(t), None) => one(
            "training images are normalized but evaluation images are not",
            Some(t.location.clone()),
        )
        .into_iter()
        .map(|f| f.help("add the same normalize to [[data.eval-augment]]"))
        .collect(),
        (Some(t), Some(e)) if text(t) != text(e) => one(
            "normalize differs between augment and eval-augment",
            Some(e.location.clone()),
        ),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "augment::normalize-train-only", category: Cross, severity: Warning,
    summary: "Training and evaluation images are normalized differently.",
    doc: "The model sees differently scaled pixels at evaluation than in training; accuracy collapses for no visible reason.",
    trip: [FASHION, Set("data.augment=[{type = \"normalize\", mean = [0.286], std = [0.353]}]")], check: normalize_train_only,
}

fn normalize_not_last(ctx: &RuleContext) -> Vec<Finding> {
    let mut out = Vec::new();
    for list in ["augment", "eval-augment"] {
        let mut seen_normalize = false;
        for (t, n) in ops(ctx, list) {
            if t == "normalize" {
                seen_normalize = true;
            } else if seen_normalize && matches!(t, "color-jitter" | "gaussian-noise" | "random-erasing" | "grayscale")
            {
                out.push(Finding::new(
                    format!("{t} runs after normalize, on values that are no longer in [0, 1]"),
                    Some(n.location.clone()),
                ));
            }
        }
    }
    out
}
lora_core::rule! {
    id: "augment::normalize-not-last", category: Cross, severity: Warning,
    summary: "A pixel-value operation runs after normalize.",
    doc: "Colour jitter, noise (clipped to [0, 1]) and erasing assume pixels in [0, 1]; put normalize last.",
    trip: [FASHION, Set("data.augment=[{type = \"normalize\", mean = [0.5], std = [0.5]}, {type = \"gaussian-noise\", std = 0.05}]")],
    check: normalize_not_last,
}

fn mix_alpha(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["mixup", "cutmix"],
        "alpha",
        |a| !(a > 0.0),
        |t, v| {
            format!(
                "{t} alpha ({v}) must be positive: the mixing weight is drawn from Beta(alpha, alpha). Valid range: 0 < alpha"
            )
        },
    )
}
lora_core::rule! {
    id: "augment::mix-alpha-range", category: Range, severity: Error,
    summary: "mixup or cutmix alpha is not positive.",
    doc: "The blend weight is drawn from Beta(alpha, alpha), which needs alpha > 0; 0.2-1.0 is usual.",
    trip: [FASHION, Set("data.augment=[{type = \"mixup\", alpha = 0.0}]")], check: mix_alpha,
}

fn mixup_and_cutmix(ctx: &RuleContext) -> Vec<Finding> {
    let list = ops(ctx, "augment");
    let has = |t: &str| list.iter().find(|(x, _)| *x == t);
    match (has("mixup"), has("cutmix")) {
        (Some(_), Some((_, n))) => one("mixup and cutmix both apply to every batch", Some(n.location.clone()))
            .into_iter()
            .map(|f| f.help("use one, or lower their probabilities so that a batch gets at most one"))
            .collect(),
        _ => Vec::new(),
    }
}
lora_core::rule! {
    id: "augment::mixup-and-cutmix", category: Cross, severity: Warning,
    summary: "mixup and cutmix both in the training list.",
    doc: "Both blend the batch; together they blend twice and make the targets very soft.",
    trip: [FASHION, Set("data.augment=[{type = \"mixup\"}, {type = \"cutmix\"}]")], check: mixup_and_cutmix,
}

fn batch_op_in_eval(ctx: &RuleContext) -> Vec<Finding> {
    ops(ctx, "eval-augment")
        .into_iter()
        .filter(|(t, _)| matches!(*t, "mixup" | "cutmix"))
        .map(|(t, n)| {
            Finding::new(
                format!("{t} in eval-augment blends evaluation images and labels"),
                Some(n.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::batch-op-in-eval", category: Cross, severity: Error,
    summary: "mixup or cutmix in the evaluation list.",
    doc: "Evaluation scores hard labels; blended images and soft targets make the metrics meaningless.",
    trip: [FASHION, Set("data.eval-augment=[{type = \"cutmix\"}]")], check: batch_op_in_eval,
}

const RANDOM_OPS: [&str; 9] = [
    "random-crop",
    "horizontal-flip",
    "vertical-flip",
    "rotation",
    "random-affine",
    "color-jitter",
    "gaussian-noise",
    "random-erasing",
    "gaussian-blur",
];

fn random_op_in_eval(ctx: &RuleContext) -> Vec<Finding> {
    ops(ctx, "eval-augment")
        .into_iter()
        .filter(|(t, _)| RANDOM_OPS.contains(t))
        .map(|(t, n)| {
            Finding::new(
                format!("{t} in eval-augment makes evaluation random"),
                Some(n.location.clone()),
            )
            .help("evaluation should see fixed inputs: keep resize, center-crop and normalize there")
        })
        .collect()
}
lora_core::rule! {
    id: "augment::random-op-in-eval", category: Cross, severity: Warning,
    summary: "A random augmentation in the evaluation list.",
    doc: "Random operations at evaluation make scores vary between evaluations of the same weights.",
    trip: [FASHION, Set("data.eval-augment=[{type = \"rotation\", degrees = 10.0}]")], check: random_op_in_eval,
}

fn flip_on_digits(ctx: &RuleContext) -> Vec<Finding> {
    let digits = match ctx.type_of("data") {
        Some("mnist-json" | "digits-csv") => true,
        Some("idx") => ctx
            .string("data.path")
            .is_some_and(|p| p.value.to_lowercase().contains("mnist") && !p.value.to_lowercase().contains("fashion")),
        _ => false,
    };
    if !digits {
        return Vec::new();
    }
    ops(ctx, "augment")
        .into_iter()
        .filter(|(t, _)| matches!(*t, "horizontal-flip" | "vertical-flip"))
        .map(|(t, n)| {
            Finding::new(
                format!("{t} on handwritten digits turns some digits into others or into non-digits"),
                Some(n.location.clone()),
            )
            .help("small rotations and affine shifts keep digits readable")
        })
        .collect()
}
lora_core::rule! {
    id: "augment::flip-on-digits", category: Data, severity: Warning,
    summary: "Flipping handwritten digits.",
    doc: "A mirrored 2 or 7 is not a digit, and a flipped 6 looks like a 9: the labels stop being true.",
    trip: [Base("configs/lora-vit-mnist.toml"), Set("data.augment=[{type = \"horizontal-flip\"}]")], check: flip_on_digits,
}

fn image_op_on_text(ctx: &RuleContext) -> Vec<Finding> {
    if !text_data(ctx) {
        return Vec::new();
    }
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| IMAGE_OPS.contains(t))
        .map(|(t, n)| {
            Finding::new(
                format!("`{t}` is an image augmentation, but the data is text"),
                Some(n.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::image-op-on-text", category: Cross, severity: Error,
    summary: "An image augmentation on text data.",
    doc: "Image operations need pixels; text sources take the text augmentations.",
    trip: [Set("data.augment=[{type = \"horizontal-flip\"}]")], check: image_op_on_text,
}

fn vit_field(ctx: &RuleContext, key: &str) -> Option<lora_core::rules::At<i64>> {
    is_vit(ctx).then(|| ctx.int(&format!("model.{key}"))).flatten()
}

fn patch_divides(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(image), Some(patch)) = (vit_field(ctx, "image-size"), vit_field(ctx, "patch-size")) else {
        return Vec::new();
    };
    if patch.value > 0 && image.value % patch.value != 0 {
        return one(
            format!(
                "patch-size ({}) does not divide image-size ({}): the last {} pixels of each row would be dropped",
                patch.value,
                image.value,
                image.value % patch.value
            ),
            Some(patch.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "vit::patch-divides-image", category: Range, severity: Error,
    summary: "The patch size does not divide the image size.",
    doc: "The image is cut into a grid of patch x patch squares; for 28x28 images, 4, 7 and 14 work.",
    trip: [FASHION, Set("model.patch-size=5")], check: patch_divides,
}

fn patch_whole(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(image), Some(patch)) = (vit_field(ctx, "image-size"), vit_field(ctx, "patch-size")) else {
        return Vec::new();
    };
    if patch.value >= image.value && image.value > 0 {
        return one(
            format!(
                "patch-size ({}) covers the whole image: a single token, so attention has nothing to attend to",
                patch.value
            ),
            Some(patch.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "vit::single-patch", category: Range, severity: Warning,
    summary: "One patch covers the whole image.",
    doc: "A ViT needs several patches for attention to mix information; with one it is a plain MLP.",
    trip: [FASHION, Set("model.patch-size=28")], check: patch_whole,
}

fn heads_divide(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(hidden), Some(heads)) = (vit_field(ctx, "hidden-size"), vit_field(ctx, "heads")) else {
        return Vec::new();
    };
    if heads.value > 0 && hidden.value % heads.value != 0 {
        return one(
            format!(
                "hidden-size ({}) is not a multiple of heads ({})",
                hidden.value, heads.value
            ),
            Some(heads.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "vit::heads-divide-hidden", category: Range, severity: Error,
    summary: "The hidden size is not a multiple of the number of heads.",
    doc: "Each head takes hidden-size / heads features.",
    trip: [FASHION, Set("model.heads=3")], check: heads_divide,
}

fn channels_match(ctx: &RuleContext) -> Vec<Finding> {
    let (Some(channels), Some((c, _, _))) = (vit_field(ctx, "channels"), source_shape(ctx)) else {
        return Vec::new();
    };
    if channels.value as usize != c {
        return one(
            format!("the model takes {} channels but the data has {c}", channels.value),
            Some(channels.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "vit::channels-mismatch-data", category: Cross, severity: Error,
    summary: "The model's channel count differs from the data's.",
    doc: "IDX, mnist-json and the scikit-learn digits are grayscale (1 channel); RGB image folders have 3.",
    trip: [FASHION, Set("model.channels=3")], check: channels_match,
}

fn full_with_targets(ctx: &RuleContext) -> Vec<Finding> {
    let Some(t) = ctx.strings("lora.target-modules") else {
        return Vec::new();
    };
    if is_vit(ctx) && ctx.string("model.mode").is_some_and(|m| m.value == "full") && !t.value.is_empty() {
        return one(
            "mode = \"full\" trains every weight; LoRA target-modules would add adapters to weights that train anyway",
            Some(t.location),
        )
        .into_iter()
        .map(|f| f.help("set target-modules = [] for full training, or mode = \"lora\" on a saved base"))
        .collect();
    }
    Vec::new()
}
lora_core::rule! {
    id: "vit::full-mode-with-targets", category: Cross, severity: Error,
    summary: "Full training with LoRA target modules.",
    doc: "Full training (pretraining) saves a new base; LoRA is for adapting a frozen one.",
    trip: [FASHION, Set("lora.target-modules=[\"query\"]")], check: full_with_targets,
}

fn label_names(ctx: &RuleContext) -> Vec<Finding> {
    let Some(names) = ctx.strings("data.label-names") else {
        return Vec::new();
    };
    if matches!(ctx.type_of("data"), Some("idx" | "mnist-json")) && names.value.len() != 10 {
        return one(
            format!(
                "label-names has {} names; MNIST-format data has 10 classes",
                names.value.len()
            ),
            Some(names.location),
        );
    }
    Vec::new()
}
lora_core::rule! {
    id: "data::label-names-count", category: Data, severity: Error,
    summary: "label-names does not name the 10 MNIST-format classes.",
    doc: "IDX and mnist-json labels are 0-9; `label-names` gives them names in that order.",
    trip: [FASHION, Set("data.label-names=[\"top\", \"trouser\"]")], check: label_names,
}

const TEXT_OPS: [&str; 3] = ["token-dropout", "token-mask", "random-swap"];

fn text_rate(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["token-dropout", "token-mask"],
        "rate",
        |r| !(0.0..1.0).contains(&r),
        |t, v| format!("{t} rate ({v}) is a per-token probability. Valid range: 0 <= rate < 1"),
    )
}
lora_core::rule! {
    id: "augment::text-rate-range", category: Range, severity: Error,
    summary: "A token dropout or masking rate outside [0, 1).",
    doc: "Each token is dropped (or masked) with this probability; 1 removes the whole text.",
    trip: [Set("data.augment=[{type = \"token-dropout\", rate = 1.5}]")], check: text_rate,
}

fn text_rate_high(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["token-dropout", "token-mask"],
        "rate",
        |r| (0.3..1.0).contains(&r),
        |t, v| {
            format!("{t} rate ({v}) removes a third of the words or more: the label may no longer follow from the text")
        },
    )
}
lora_core::rule! {
    id: "augment::text-rate-high", category: Range, severity: Warning,
    summary: "A token dropout or masking rate of 0.3 or more.",
    doc: "Rates of 0.05-0.15 regularise; above 0.3 the sentiment words themselves are often gone.",
    trip: [Set("data.augment=[{type = \"token-mask\", rate = 0.5}]")], check: text_rate_high,
}

fn text_op_on_images(ctx: &RuleContext) -> Vec<Finding> {
    if source_shape(ctx).is_none() && !matches!(ctx.type_of("data"), Some("image-folder")) {
        return Vec::new();
    }
    all_ops(ctx)
        .into_iter()
        .filter(|(t, _)| TEXT_OPS.contains(t))
        .map(|(t, n)| {
            Finding::new(
                format!("`{t}` is a text augmentation, but the data is images"),
                Some(n.location.clone()),
            )
        })
        .collect()
}
lora_core::rule! {
    id: "augment::text-op-on-images", category: Cross, severity: Error,
    summary: "A text augmentation on image data.",
    doc: "Token operations need token ids; image sources take the image augmentations.",
    trip: [FASHION, Set("data.augment=[{type = \"random-swap\"}]")], check: text_op_on_images,
}

fn swaps_zero(ctx: &RuleContext) -> Vec<Finding> {
    each(
        ctx,
        &["random-swap"],
        "swaps",
        |s| s < 1.0,
        |_, v| format!("random-swap swaps ({v}) changes nothing. Valid range: 1 <= swaps"),
    )
}
lora_core::rule! {
    id: "augment::random-swap-zero", category: Range, severity: Warning,
    summary: "random-swap with zero swaps.",
    doc: "The operation swaps two random tokens `swaps` times; 0 leaves every text as it is.",
    trip: [Set("data.augment=[{type = \"random-swap\", swaps = 0}]")], check: swaps_zero,
}
