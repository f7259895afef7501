//! Host kernels for the fused operations, written once for every backend.
//!
//! A backend wraps each pair (forward, backward) in its own custom-operation
//! API (candle's `CustomOp1`, burn's `Backward`) and hands it contiguous f32
//! slices. Keeping the arithmetic here means both backends compute GELU,
//! softmax and layer norm bit for bit alike, and both run them in parallel,
//! in row blocks on the one rayon pool that the matrix products also use.

use lora_core::init::CounterMask;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

/// Whole rows of `n` elements per parallel task.
fn task_len(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1) * n.max(1)
}

/// `e^x` in plain arithmetic, for loops that must vectorise (libm's `expf` is
/// a call per element: a profile showed it at 9% of a training step, from
/// GELU's erf and derivative). Cephes' `expf`: `n = round(x log2 e)`, `r = x -
/// n ln 2` in two parts (Cody and Waite), `e^r` by its degree-7 polynomial,
/// times `2^n` written into the exponent bits. Within 2 ulp of the true value
/// on [-87, 88]; 0 below (a masked score's weight is exactly 0, and subnormals
/// are not worth their cost here); clamped above.
/// The integer parts use the bits of `x log2 e + 1.5 * 2^23`, whose low bits
/// hold `n`: no float-to-int conversion, so nothing stops the vectoriser.
/// Products and sums are fused (`mul_add`, see [`vectorised!`]).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add(LOG2E, SHIFT);
    let n = shifted - SHIFT;
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
    let p = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5]
        .into_iter()
        .fold(1.987_569_1e-4_f32, |p, c| p.mul_add(r, c));
    let er = p.mul_add(r * r, r + 1.0);
    // `shifted`'s bits are 0x4B40_0000 + n; 2^n's are (n + 127) << 23.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    if underflow { 0.0 } else { er * two_n }
}

/// `erf` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, 5e-7
/// after f32 rounding): one [`exp`] and a polynomial, several times cheaper than
/// libm's `erff`, and no call, so loops over it vectorise.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_and_gaussian(x).0
}

/// `erf(x)` and the `e^(-x^2)` it is built from, which GELU's derivative needs
/// too: its density term `phi(v) = e^(-v^2 / 2) / sqrt(2 pi)` is the same
/// exponential at `x = v / sqrt 2`, so the backward pass pays for one, not two.
#[inline(always)]
fn erf_and_gaussian(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / a.mul_add(0.327_591_1, 1.0);
    let poly = t * [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6]
        .into_iter()
        .fold(1.061_405_4_f32, |p, c| p.mul_add(t, c));
    let gaussian = gaussian(a);
    let y = (-poly).mul_add(gaussian, 1.0);
    (y.copysign(x), gaussian)
}

/// `e^(-x^2)`.
#[inline(always)]
fn gaussian(x: f32) -> f32 {
    let a = x.abs();
    exp(-a * a)
}

/// Defines `fn $name(args)` that runs `$block(args)` (an `#[inline(always)]`
/// function) inside a copy compiled for the widest vector unit this CPU has,
/// so that its loops vectorise for that unit rather than for the baseline's
/// SSE2. Every copy computes the same IEEE operations, so results do not
/// depend on the CPU: Rust never contracts `a * b + c` into one operation, and
/// the kernels' explicit `mul_add`s are one rounding on every path (an FMA
/// instruction in both vector copies, the AVX2 one requiring FMA, which every
/// AVX2 CPU has; a call to libm's exactly rounded `fmaf` in the baseline
/// copy). Fused, GELU's erf and the exponential take about a third fewer
/// instructions: 1.42 -> 0.88 ns a value for GELU, 0.76 -> 0.51 for `exp`,
/// measured in cache on this machine.
macro_rules! vectorised {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $block:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512($($arg: $ty),*) {
                    $block($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $block($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been found to support AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has just been found to support AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $block($($arg),*)
        }
    };
}

/// `Phi(x) = (1 + erf(x / sqrt 2)) / 2`.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    erf(x * std::f32::consts::FRAC_1_SQRT_2).mul_add(0.5, 0.5)
}

/// Exact (erf) GELU, `x * Phi(x)`, Hugging Face's `"gelu"`, into `y`; `Phi(x)`
/// into `cdf` when given, for the backward pass.
pub fn gelu_forward(x: &[f32], y: &mut [f32], cdf: Option<&mut [f32]>) {
    match cdf {
        Some(cdf) => y
            .par_chunks_mut(CHUNK)
            .zip(cdf.par_chunks_mut(CHUNK))
            .zip(x.par_chunks(CHUNK))
            .for_each(|((y, c), x)| gelu_forward_task(x, y, Some(c))),
        None => y
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| gelu_forward_task(x, y, None)),
    }
}

vectorised! {
    /// One task's part of [`gelu_forward`].
    fn gelu_forward_task = gelu_forward_block(x: &[f32], y: &mut [f32], cdf: Option<&mut [f32]>)
}

#[inline(always)]
fn gelu_forward_block(x: &[f32], y: &mut [f32], cdf: Option<&mut [f32]>) {
    match cdf {
        Some(cdf) => {
            for ((y, c), &v) in y.iter_mut().zip(cdf).zip(x) {
                *c = normal_cdf(v);
                *y = v * *c;
            }
        }
        None => {
            for (y, &v) in y.iter_mut().zip(x) {
                *y = v * normal_cdf(v);
            }
        }
    }
}

/// `x[r] += b` on every row `r` of `x` (rows of `b.len()`), then `y = GELU(x)`:
/// a linear's bias and its activation in one pass, `x` keeping the pre-activation
/// for the backward pass. The same operations as `matmul::add_rows` then
/// [`gelu_forward`], so the values are bit for bit theirs.
pub fn bias_gelu_forward(x: &mut [f32], b: &[f32], y: &mut [f32]) {
    let task = task_len(b.len());
    y.par_chunks_mut(task)
        .zip(x.par_chunks_mut(task))
        .for_each(|(y, x)| bias_gelu_task(x, b, y));
}

vectorised! {
    /// One task's part of [`bias_gelu_forward`].
    fn bias_gelu_task = bias_gelu_block(x: &mut [f32], b: &[f32], y: &mut [f32])
}

#[inline(always)]
fn bias_gelu_block(x: &mut [f32], b: &[f32], y: &mut [f32]) {
    for (x, y) in x.chunks_exact_mut(b.len()).zip(y.chunks_exact_mut(b.len())) {
        for ((x, y), b) in x.iter_mut().zip(y).zip(b) {
            *x += b;
            *y = *x * normal_cdf(*x);
        }
    }
}

/// `x = GELU(x + b)` in place (each row of `b.len()` values gets `b` first;
/// no bias: `x = GELU(x)`), where the pre-activation is not kept: the same
/// operations as [`bias_gelu_forward`], so the same values.
pub fn bias_gelu_in_place(x: &mut [f32], b: Option<&[f32]>) {
    let task = task_len(b.map_or(1, <[f32]>::len));
    x.par_chunks_mut(task).for_each(|x| bias_gelu_in_place_task(x, b));
}

vectorised! {
    /// One task's part of [`bias_gelu_in_place`].
    fn bias_gelu_in_place_task = bias_gelu_in_place_block(x: &mut [f32], b: Option<&[f32]>)
}

#[inline(always)]
fn bias_gelu_in_place_block(x: &mut [f32], b: Option<&[f32]>) {
    match b {
        Some(b) => {
            for row in x.chunks_exact_mut(b.len()) {
                for (x, b) in row.iter_mut().zip(b) {
                    let v = *x + b;
                    *x = v * normal_cdf(v);
                }
            }
        }
        None => {
            for x in x.iter_mut() {
                *x *= normal_cdf(*x);
            }
        }
    }
}

/// `dx = g * (Phi(x) + x phi(x))`, with `Phi(x)` from the forward pass when kept.
pub fn gelu_backward(x: &[f32], cdf: Option<&[f32]>, g: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, ((d, x), g))| {
            let cdf = cdf.map(|c| &c[i * CHUNK..][..x.len()]);
            gelu_backward_task(x, cdf, g, d)
        });
}

vectorised! {
    /// One task's part of [`gelu_backward`].
    fn gelu_backward_task = gelu_backward_block(x: &[f32], cdf: Option<&[f32]>, g: &[f32], d: &mut [f32])
}

#[inline(always)]
fn gelu_backward_block(x: &[f32], cdf: Option<&[f32]>, g: &[f32], d: &mut [f32]) {
    match cdf {
        Some(cdf) => {
            for (((d, &v), &g), &c) in d.iter_mut().zip(x).zip(g).zip(cdf) {
                *d = g * (c + x_normal_density(v, gaussian(v * std::f32::consts::FRAC_1_SQRT_2)));
            }
        }
        None => {
            for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
                *d = g * gelu_derivative(v);
            }
        }
    }
}

/// [`gelu_backward`] without a second buffer: `g` becomes `dx` in place (the
/// same operations, so the same values).
pub fn gelu_backward_in_place(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| gelu_backward_in_place_task(x, g));
}

vectorised! {
    /// One task's part of [`gelu_backward_in_place`].
    fn gelu_backward_in_place_task = gelu_backward_in_place_block(x: &[f32], g: &mut [f32])
}

#[inline(always)]
fn gelu_backward_in_place_block(x: &[f32], g: &mut [f32]) {
    for (g, &v) in g.iter_mut().zip(x) {
        *g *= gelu_derivative(v);
    }
}

/// `1 / sqrt(2 pi)`, the standard normal density's factor.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU's derivative `Phi(v) + v phi(v)`, with one exponential for both terms
/// ([`erf_and_gaussian`]); `Phi(v)` bit for bit the forward pass's.
#[inline(always)]
fn gelu_derivative(v: f32) -> f32 {
    let (erf, gaussian) = erf_and_gaussian(v * std::f32::consts::FRAC_1_SQRT_2);
    erf.mul_add(0.5, 0.5) + x_normal_density(v, gaussian)
}

/// `v phi(v)`, given `e^(-v^2 / 2)`.
#[inline(always)]
fn x_normal_density(v: f32, gaussian: f32) -> f32 {
    v * (INV_SQRT_2PI * gaussian)
}

/// The additive bias of [`softmax_forward`]'s scores.
#[derive(Debug, Clone, Copy)]
pub enum ScoreBias<'a> {
    None,
    /// `[batch * keys]`, one row of keys per sequence (0, or -1e9 for padding); the
    /// scores' rows are grouped by sequence (`[batch, heads, queries, keys]`).
    Keys(&'a [f32]),
    /// -1e9 where key `j` lies after query `i` of `queries` (`j + queries > i + keys`:
    /// the last query sees every key), computed on the fly instead of stored.
    Causal {
        queries: usize,
    },
}

/// `softmax(x * scale + bias)` over rows of `k`: attention's scores with their
/// mask in one pass (and plain softmax with no bias and unit scale).
///
/// Panics when a `Keys` bias does not tile the rows: callers build it from the
/// same batch as the scores.
pub fn softmax_forward(x: &[f32], k: usize, scale: f32, bias: ScoreBias<'_>, y: &mut [f32]) {
    let k = k.max(1);
    let rows_per_sequence = match bias {
        ScoreBias::Keys(b) => {
            let sequences = b.len() / k;
            let rows = x.len() / k;
            assert!(
                b.len() == sequences * k && sequences > 0 && rows.is_multiple_of(sequences),
                "attention bias must be [batch * keys]"
            );
            rows / sequences
        }
        _ => 1,
    };
    let task = task_len(k);
    y.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .enumerate()
        .for_each(|(chunk, (y, x))| {
            for (r, (dst, src)) in y.chunks_exact_mut(k).zip(x.chunks_exact(k)).enumerate() {
                let row = chunk * task / k + r;
                match bias {
                    ScoreBias::None => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s * scale),
                    ScoreBias::Keys(b) => {
                        let b = &b[row / rows_per_sequence * k..][..k];
                        dst.iter_mut()
                            .zip(src)
                            .zip(b)
                            .for_each(|((d, &s), &b)| *d = s * scale + b);
                    }
                    ScoreBias::Causal { queries } => {
                        let i = row % queries.max(1);
                        for (j, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                            *d = s * scale + if j + queries <= i + k { 0.0 } else { -1e9 };
                        }
                    }
                }
            }
            normalise_exp_rows(y, k);
        });
}

vectorised! {
    /// `row = exp(row - max(row)) / sum` on each row of `k` values of `rows`: a
    /// softmax's last passes once its scores are in, in one call per task
    /// (rows as short as a small ViT's 17 keys paid a dispatch each).
    pub fn normalise_exp_rows = normalise_exp_rows_block(rows: &mut [f32], k: usize)
}

#[inline(always)]
fn normalise_exp_rows_block(rows: &mut [f32], k: usize) {
    // Plain loops, not `for_each` with a function: std's `for_each` was
    // compiled as a function of its own, outside this copy's vector unit, and
    // ran every row on the baseline's 4-wide vectors (a profile had the whole
    // softmax at 2.5 ns a value).
    for row in rows.chunks_exact_mut(k.max(1)) {
        normalise_exp_block(row);
    }
}

/// Partial sums and maxima run in this many lanes: one AVX-512 register, and
/// the same order on every vector unit (the lanes are written out, not left to
/// the vectoriser), so results do not depend on the CPU.
const LANES: usize = 16;

#[inline(always)]
fn normalise_exp_block(row: &mut [f32]) {
    // The maximum is exact in any order; a running sum in one chain waited four
    // cycles per value (3% of an inference pass), sixteen chains do not. Rows
    // shorter than two lane blocks (a small ViT's 17 keys) fold in one chain:
    // there the lanes' set-up and final fold cost more than they save.
    let short = row.len() < 2 * LANES;
    let max = if short {
        row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    } else {
        lane_fold(row, f32::NEG_INFINITY, f32::max)
    };
    for d in row.iter_mut() {
        *d = exp(*d - max);
    }
    let sum = row_sum(row, row, |d, _| d);
    let inv = 1.0 / sum;
    for d in row.iter_mut() {
        *d *= inv;
    }
}

/// `f` over `x` in [`LANES`] interleaved chains, then over the chains in order.
#[inline(always)]
fn lane_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let blocks = x.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (l, &v) in lanes.iter_mut().zip(block) {
            *l = f(*l, v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(tail) {
        *l = f(*l, v);
    }
    lanes.into_iter().fold(init, f)
}

/// `dx = scale * y * (g - sum(g * y))` over rows of `k`, from the output `y`.
pub fn softmax_backward(y: &[f32], g: &[f32], k: usize, scale: f32, dx: &mut [f32]) {
    let k = k.max(1);
    let task = task_len(k);
    dx.par_chunks_mut(task)
        .zip(y.par_chunks(task))
        .zip(g.par_chunks(task))
        .for_each(|((d, y), g)| {
            d.copy_from_slice(g);
            softmax_backward_rows(y, d, k, scale);
        });
}

vectorised! {
    /// [`softmax_backward`] in place on one task's rows of `k`: `g` (the
    /// output's gradient) becomes the input's, `scale * y * (g - sum(g * y))`.
    pub fn softmax_backward_rows = softmax_backward_block(y: &[f32], g: &mut [f32], k: usize, scale: f32)
}

#[inline(always)]
fn softmax_backward_block(y: &[f32], g: &mut [f32], k: usize, scale: f32) {
    let k = k.max(1);
    for (g, y) in g.chunks_exact_mut(k).zip(y.chunks_exact(k)) {
        // The dot product in lanes, as the forward pass's sum (one chain for short rows).
        let dot = row_sum(y, g, |y, g| y * g);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = scale * y * (*g - dot);
        }
    }
}

vectorised! {
    /// `row = row * scale + bias` on each row of `bias.len()` values: the
    /// scores' scale and additive mask before the softmax, as one vector pass.
    pub fn scale_add_rows = scale_add_rows_block(rows: &mut [f32], scale: f32, bias: &[f32])
}

#[inline(always)]
fn scale_add_rows_block(rows: &mut [f32], scale: f32, bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len().max(1)) {
        for (d, b) in row.iter_mut().zip(bias) {
            *d = *d * scale + b;
        }
    }
}

/// `sum(f(a[i], b[i]))`: in [`LANES`] interleaved chains, then over the
/// chains in order, for rows of at least two lane blocks; in one chain for
/// shorter ones (a small ViT's rows), where the lanes cost more than they save.
#[inline(always)]
fn row_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    if a.len() < 2 * LANES {
        return a.iter().zip(b).fold(0.0, |s, (&a, &b)| s + f(a, b));
    }
    let mut lanes = [0f32; LANES];
    let (blocks_a, blocks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (tail_a, tail_b) = (blocks_a.remainder(), blocks_b.remainder());
    for (x, y) in blocks_a.zip(blocks_b) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += f(x, y);
        }
    }
    for ((l, &x), &y) in lanes.iter_mut().zip(tail_a).zip(tail_b) {
        *l += f(x, y);
    }
    lanes.into_iter().fold(0.0, |s, l| s + l)
}

/// Mean and `1 / sqrt(var + eps)` of one row. Its sums run in lanes
/// ([`row_sum`]): one chain waited four cycles a value, and the layer norms'
/// passes took 6% of a training step.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row_sum(row, row, |v, _| v) / n;
    let var = row_sum(row, row, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer norm over rows of `gamma.len()` with frozen `gamma` and `beta`.
pub fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    let task = task_len(gamma.len());
    y.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(y, x)| layer_norm_forward_task(x, gamma, beta, eps, y));
}

vectorised! {
    /// One task's rows of [`layer_norm_forward`].
    fn layer_norm_forward_task = layer_norm_forward_block(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32])
}

#[inline(always)]
fn layer_norm_forward_block(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    let n = gamma.len();
    for (dst, src) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let (mean, rstd) = row_stats(src, eps);
        for (((d, &s), &g), &b) in dst.iter_mut().zip(src).zip(gamma).zip(beta) {
            *d = (s - mean) * rstd * g + b;
        }
    }
}

/// A post-norm sublayer's end, `sum = dropout(y + bias) + residual` (written
/// over `y`, the backward pass's input) and `layer_norm(sum)` into `out`, one
/// task's rows at a time: the four passes run while those rows are in cache,
/// not each over the whole `[rows, n]` tensor in turn (at 32 x 128 the three
/// elementwise passes read and wrote 24 MiB a sublayer). Each value goes
/// through the same operations in the same order as the separate passes: the
/// bias add, the mask's factor (`CounterMask::apply` at the value's row-major
/// position), the residual add, then [`layer_norm_forward`]'s arithmetic.
pub fn bias_dropout_add_layer_norm(
    y: &mut [f32],
    bias: Option<&[f32]>,
    mask: Option<CounterMask>,
    residual: &[f32],
    norm: (&[f32], &[f32], f32),
    out: &mut [f32],
) {
    let (gamma, beta, eps) = norm;
    let task = task_len(gamma.len());
    y.par_chunks_mut(task)
        .zip(residual.par_chunks(task))
        .zip(out.par_chunks_mut(task))
        .enumerate()
        .for_each(|(i, ((y, residual), out))| {
            if let Some(bias) = bias {
                add_rows_task(y, bias);
            }
            if let Some(mask) = mask {
                mask.apply((i * task) as u64, y);
            }
            add_task(y, residual);
            layer_norm_forward_task(y, gamma, beta, eps, out);
        });
}

/// `out = src * mask` over whole tensors (the mask's values in row-major
/// order), in parallel blocks: [`CounterMask::apply`] on a copy, without the
/// copy. Panics when the lengths differ.
pub fn masked_copy_into(mask: CounterMask, src: &[f32], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "a mask's source and output differ in length");
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, (out, src))| mask.scale_into((i * CHUNK) as u64, src, out));
}

/// `y[r] += b` for every row `r` of `y`, in parallel blocks of rows.
pub fn add_rows(y: &mut [f32], b: &[f32]) {
    y.par_chunks_mut(task_len(b.len()))
        .for_each(|rows| add_rows_task(rows, b));
}

vectorised! {
    /// `rows[r] += bias` for each row of `bias.len()` values.
    fn add_rows_task = add_rows_block(rows: &mut [f32], bias: &[f32])
}

#[inline(always)]
fn add_rows_block(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// `a += b` elementwise, in parallel blocks.
pub fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| add_task(a, b));
}

vectorised! {
    /// `a += b` elementwise.
    fn add_task = add_block(a: &mut [f32], b: &[f32])
}

#[inline(always)]
fn add_block(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// The input gradient of [`layer_norm_forward`] (its affine parameters are frozen):
/// `dx = rstd * (dyg - mean(dyg) - xhat * mean(dyg * xhat))`, `dyg = dy * gamma`.
pub fn layer_norm_backward(x: &[f32], gamma: &[f32], eps: f32, g: &[f32], dx: &mut [f32]) {
    let task = task_len(gamma.len());
    dx.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .zip(g.par_chunks(task))
        .for_each(|((d, x), g)| {
            let mut dyg = vec![0f32; gamma.len()];
            layer_norm_backward_task(x, gamma, eps, g, d, &mut dyg)
        });
}

vectorised! {
    /// One task's rows of [`layer_norm_backward`], with a row of scratch.
    fn layer_norm_backward_task = layer_norm_backward_block(x: &[f32], gamma: &[f32], eps: f32, g: &[f32], dx: &mut [f32], dyg: &mut [f32])
}

#[inline(always)]
fn layer_norm_backward_block(x: &[f32], gamma: &[f32], eps: f32, g: &[f32], dx: &mut [f32], dyg: &mut [f32]) {
    let n = gamma.len();
    for ((dst, src), gr) in dx.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(g.chunks_exact(n)) {
        let (mean, rstd) = row_stats(src, eps);
        for ((d, &g), &gm) in dyg.iter_mut().zip(gr).zip(gamma) {
            *d = g * gm;
        }
        let m1 = row_sum(dyg, dyg, |d, _| d) / n as f32;
        let m2 = row_sum(dyg, src, |d, s| d * (s - mean) * rstd) / n as f32;
        for ((d, &dy), &s) in dst.iter_mut().zip(dyg.iter()).zip(src) {
            let xhat = (s - mean) * rstd;
            *d = rstd * (dy - m1 - xhat * m2);
        }
    }
}

/// The gradients of a trained layer norm's `gamma` and `beta` over rows of `n`:
/// `sum over rows of dy * xhat` and `sum over rows of dy`. Each task sums its
/// rows, and the tasks' sums are added in task order: the same result on any
/// number of threads.
pub fn layer_norm_affine_grads(x: &[f32], g: &[f32], n: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let task = task_len(n);
    let (dgamma, dbeta): (Vec<Vec<f32>>, Vec<Vec<f32>>) = x
        .par_chunks(task)
        .zip(g.par_chunks(task))
        .map(|(x, g)| {
            let (mut dgamma, mut dbeta) = (vec![0f32; n], vec![0f32; n]);
            for (src, gr) in x.chunks_exact(n).zip(g.chunks_exact(n)) {
                let (mean, rstd) = row_stats(src, eps);
                for i in 0..n {
                    dgamma[i] += gr[i] * ((src[i] - mean) * rstd);
                    dbeta[i] += gr[i];
                }
            }
            (dgamma, dbeta)
        })
        .unzip();
    (sum_in_order(dgamma, n), sum_in_order(dbeta, n))
}

/// The sums of the columns of `g`, rows of `n` (a broadcast bias's gradient),
/// added in a fixed order as [`layer_norm_affine_grads`]' are.
pub fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let task = task_len(n);
    let parts: Vec<Vec<f32>> = g
        .par_chunks(task)
        .map(|g| {
            let mut sums = vec![0f32; n];
            for row in g.chunks_exact(n) {
                sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sums
        })
        .collect();
    sum_in_order(parts, n)
}

/// The tasks' partial sums of `n` values added in task order.
fn sum_in_order(parts: Vec<Vec<f32>>, n: usize) -> Vec<f32> {
    let mut total = vec![0f32; n];
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    total
}

/// Layer norm of `a + b` (a residual sum) over rows of `gamma.len()`, the sum kept
/// for one task's rows only: the same arithmetic as [`layer_norm_forward`] on the
/// added tensor.
pub fn add_layer_norm_forward(a: &[f32], b: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    let task = task_len(gamma.len());
    y.par_chunks_mut(task)
        .zip(a.par_chunks(task))
        .zip(b.par_chunks(task))
        .for_each(|((y, a), b)| {
            let sum: Vec<f32> = a.iter().zip(b).map(|(a, b)| a + b).collect();
            layer_norm_forward_task(&sum, gamma, beta, eps, y);
        });
}

/// The gradient of both inputs of [`add_layer_norm_forward`] (they are equal),
/// as [`layer_norm_backward`] on the recomputed sum.
pub fn add_layer_norm_backward(a: &[f32], b: &[f32], gamma: &[f32], eps: f32, g: &[f32], dx: &mut [f32]) {
    let task = task_len(gamma.len());
    dx.par_chunks_mut(task)
        .zip(a.par_chunks(task))
        .zip(b.par_chunks(task))
        .zip(g.par_chunks(task))
        .for_each(|(((d, a), b), g)| {
            let sum: Vec<f32> = a.iter().zip(b).map(|(a, b)| a + b).collect();
            let mut dyg = vec![0f32; gamma.len()];
            layer_norm_backward_task(&sum, gamma, eps, g, d, &mut dyg);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series, accurate to f64 rounding for |x| <= 4.
    fn series_erf(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_within_2_ulp_and_vanishes_far_below() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_is_the_same_on_every_vector_unit() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 61.0).collect();
        let mut y = vec![0f32; x.len()];
        gelu_forward(&x, &mut y, None);
        for (&v, &y) in x.iter().zip(&y) {
            assert_eq!(y.to_bits(), (v * normal_cdf(v)).to_bits(), "gelu({v})");
        }
    }

    /// The derivative with one shared exponential against `Phi(v) + v phi(v)` in f64.
    #[test]
    fn gelu_derivative_is_within_1e_6_of_the_exact_one() {
        for i in -600..=600 {
            let v = i as f32 / 100.0;
            let x = v as f64;
            let exact = 0.5 * (1.0 + series_erf(x / 2f64.sqrt()))
                + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((gelu_derivative(v) as f64 - exact).abs() < 1e-6, "gelu'({v})");
        }
    }

    #[test]
    fn fast_erf_is_within_5e_7_of_the_series() {
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            assert!((erf(x) as f64 - series_erf(x as f64)).abs() < 5e-7, "erf({x})");
        }
    }

    /// Central differences of `f` at `x` along `g`: the reference for each backward pass.
    fn numeric_vjp(f: impl Fn(&[f32]) -> Vec<f32>, x: &[f32], g: &[f32]) -> Vec<f32> {
        let h = 1e-3f32;
        (0..x.len())
            .map(|i| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += h;
                b[i] -= h;
                let (fa, fb) = (f(&a), f(&b));
                fa.iter()
                    .zip(&fb)
                    .zip(g)
                    .map(|((p, m), g)| g * (p - m) / (2.0 * h))
                    .sum()
            })
            .collect()
    }

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32 * 2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn residual_layer_norm_equals_layer_norm_of_the_sum_bit_for_bit() {
        let (a, b, g) = (sample(30, 21), sample(30, 22), sample(30, 23));
        let (gamma, beta) = (sample(6, 24), sample(6, 25));
        let sum: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        let (mut fused, mut plain) = (vec![0.0; 30], vec![0.0; 30]);
        add_layer_norm_forward(&a, &b, &gamma, &beta, 1e-12, &mut fused);
        layer_norm_forward(&sum, &gamma, &beta, 1e-12, &mut plain);
        assert_eq!(fused, plain);
        add_layer_norm_backward(&a, &b, &gamma, 1e-12, &g, &mut fused);
        layer_norm_backward(&sum, &gamma, 1e-12, &g, &mut plain);
        assert_eq!(fused, plain);
    }

    #[test]
    fn gelu_matches_its_definition_and_its_gradient_the_numeric_one() {
        let (x, g) = (sample(24, 1), sample(24, 7));
        let gelu = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            gelu_forward(x, &mut y, None);
            y
        };
        let y = gelu(&x);
        for (y, &x) in y.iter().zip(&x) {
            let exact = 0.5 * x as f64 * (1.0 + series_erf(x as f64 / 2f64.sqrt()));
            assert!((*y as f64 - exact).abs() < 1e-6);
        }
        let (mut kept, mut y2) = (vec![0.0; 24], vec![0.0; 24]);
        gelu_forward(&x, &mut y2, Some(&mut kept));
        assert_eq!(y, y2, "keeping Phi(x) changes nothing");
        let (mut with_cdf, mut without) = (vec![0.0; 24], vec![0.0; 24]);
        gelu_backward(&x, Some(&kept), &g, &mut with_cdf);
        gelu_backward(&x, None, &g, &mut without);
        assert_eq!(with_cdf, without);
        assert_close(&with_cdf, &numeric_vjp(gelu, &x, &g), 2e-3);
    }

    #[test]
    fn masked_softmax_rows_sum_to_one_and_masked_keys_get_nothing() {
        // Two sequences of one head and two queries over three keys; the second's last key is padding.
        let x = sample(12, 3);
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, -1e9];
        let mut y = vec![0.0; 12];
        softmax_forward(&x, 3, 0.5, ScoreBias::Keys(&bias), &mut y);
        for row in y.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!((y[8], y[11]), (0.0, 0.0));
        let mut causal = vec![0.0; 12];
        softmax_forward(&x, 3, 1.0, ScoreBias::Causal { queries: 3 }, &mut causal);
        assert_eq!(
            (causal[1], causal[2], causal[5]),
            (0.0, 0.0, 0.0),
            "row 0 sees key 0, row 1 keys 0 and 1"
        );
    }

    #[test]
    fn softmax_and_layer_norm_gradients_match_the_numeric_ones() {
        let (x, g) = (sample(20, 5), sample(20, 11));
        let softmax = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            softmax_forward(x, 5, 0.7, ScoreBias::None, &mut y);
            y
        };
        let mut dx = vec![0.0; 20];
        softmax_backward(&softmax(&x), &g, 5, 0.7, &mut dx);
        assert_close(&dx, &numeric_vjp(softmax, &x, &g), 2e-3);

        let (gamma, beta) = (sample(5, 13), sample(5, 17));
        let norm = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            layer_norm_forward(x, &gamma, &beta, 1e-5, &mut y);
            y
        };
        let mut unit = vec![0.0; 20];
        layer_norm_forward(&x, &[1.0; 5], &[0.0; 5], 0.0, &mut unit);
        for row in unit.chunks(5) {
            let mean = row.iter().sum::<f32>() / 5.0;
            let var = row.iter().map(|v| v * v).sum::<f32>() / 5.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
                "mean {mean}, variance {var}"
            );
        }
        let mut dx = vec![0.0; 20];
        layer_norm_backward(&x, &gamma, 1e-5, &g, &mut dx);
        assert_close(&dx, &numeric_vjp(norm, &x, &g), 5e-3);
    }
}
