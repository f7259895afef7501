//! ggml's block formats, written: each quantizer is the port of ggml's
//! reference (`quantize_row_*_ref` in `ggml-quants.c`), the function that
//! `llama-quantize` runs without an importance matrix, so that a row quantized
//! here has the bytes llama.cpp would write. The reader side (decoding) is
//! `lora_nn::gguf::decode`; the tests check one against the other, and the
//! Python `gguf` package checks both (`tests/reference/check_gguf.py`).

use lora_core::gguf::GgmlType;

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

fn f16_value(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// ggml's `nearest_int`: round half to even (the 1.5 * 2^23 trick), for |x| < 2^22.
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Quantizes `x` (a whole number of `ty`'s blocks) into `ty`'s bytes.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let (block, size) = ty.block();
    assert!(
        x.len().is_multiple_of(block),
        "{} values are not whole {ty:?} blocks",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len() / block * size);
    for b in x.chunks_exact(block) {
        match ty {
            GgmlType::F32 => out.extend(b[0].to_le_bytes()),
            GgmlType::F16 => out.extend(f16_bytes(b[0])),
            GgmlType::Q8_0 => q8_0(b, &mut out),
            GgmlType::Q4_0 => q4_0(b, &mut out),
            GgmlType::Q4_1 => q4_1(b, &mut out),
            GgmlType::Q5_0 => q5_0(b, &mut out),
            GgmlType::Q4_K => q4_k(b, &mut out),
            GgmlType::Q6_K => q6_k(b, &mut out),
        }
    }
    out
}

/// The value of largest magnitude, with its sign (the first one on ties).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16_bytes(d));
    // C's roundf: half away from zero.
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Q4_0 and Q5_0: `d = max / -2^(bits-1)`, values `trunc(x / d + 2^(bits-1) + 0.5)`.
fn symmetric(x: &[f32], levels: f32) -> (f32, impl Iterator<Item = u8> + '_) {
    let d = signed_absmax(x) / -levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let top = (2.0 * levels - 1.0) as i32;
    // `(int8_t)(v + levels + 0.5)`: truncation toward zero.
    let q = x
        .iter()
        .map(move |&v| ((v * id + levels + 0.5) as i8 as i32).min(top) as u8);
    (d, q)
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = symmetric(x, 8.0);
    pack_q4_0(d, &q.collect::<Vec<u8>>(), out);
}

/// A Q4_0 block: f16 `d`, then levels `0..16` two to a byte (`j` low, `j + 16` high).
pub(crate) fn pack_q4_0(d: f32, q: &[u8], out: &mut Vec<u8>) {
    out.extend(f16_bytes(d));
    out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
}

/// The f16 value a block's scale is stored as.
pub(crate) fn stored_scale(d: f32) -> f32 {
    f16_value(d)
}

fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let (d, q) = symmetric(x, 16.0);
    pack_q5_0(d, &q.collect::<Vec<u8>>(), out);
}

/// A Q5_0 block: f16 `d`, the fifth bits, then the low nibbles as Q4_0's.
pub(crate) fn pack_q5_0(d: f32, q: &[u8], out: &mut Vec<u8>) {
    let mut qh = 0u32;
    for j in 0..16 {
        qh |= u32::from((q[j] & 0x10) >> 4) << j;
        qh |= u32::from((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    out.extend(f16_bytes(d));
    out.extend(qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4)));
}

fn q4_1(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
    let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: Vec<u8> = x
        .iter()
        .map(|&v| (((v - min) * id + 0.5) as i8 as i32).min(15) as u8)
        .collect();
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(min));
    out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
}

/// splitmix64: a well-mixed 64-bit hash, so that each element's rounding draw
/// is independent of its neighbours' and the same on every run.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` for element `index` of the stream `seed`.
fn uniform(seed: u64, index: u64) -> f32 {
    (splitmix64(seed ^ splitmix64(index)) >> 40) as f32 / (1u64 << 24) as f32
}

/// A stable seed for a tensor's rounding draws (FNV-1a of its name).
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One Q4_1 block of `x` on the grid of an existing Q4_1 block (`grid`, 20
/// bytes: its `d` and `m` are kept), each value rounded up with probability
/// equal to its distance above the lower level (unbiased rounding), or `None`
/// when a value lies more than half a step outside the grid's range or the
/// grid is degenerate (the caller then uses [`quantize`]).
///
/// Why: a merged model's base is often already Q4_1, and a LoRA update is a
/// small fraction of one step (1.2% on average for the chat-smollm2 run).
/// Nearest rounding, on the base's grid or on the min/max grid that lands on
/// it, returns the base's own levels and erases the update; rounding up with
/// probability `frac` keeps the update in expectation, at a noise of variance
/// `frac (1 - frac) d^2` per weight, which dot products over hundreds of
/// inputs average out. `seed` and `first` (the index of `x[0]` in its tensor)
/// make the draws reproducible.
pub fn q4_1_on_grid(grid: &[u8], x: &[f32], seed: u64, first: u64) -> Option<[u8; 20]> {
    debug_assert_eq!((grid.len(), x.len()), (20, 32));
    let d = half::f16::from_le_bytes([grid[0], grid[1]]).to_f32();
    let m = half::f16::from_le_bytes([grid[2], grid[3]]).to_f32();
    if !(d > 0.0 && d.is_finite() && m.is_finite()) {
        return None;
    }
    let mut q = [0u8; 32];
    for (i, (&v, q)) in x.iter().zip(q.iter_mut()).enumerate() {
        let level = (v - m) / d;
        if !(-0.5..=15.5).contains(&level) {
            return None;
        }
        let nearest = level.round();
        // A value on the grid (a weight the update did not reach) keeps its
        // level exactly, despite the rounding of `(d q + m - m) / d`.
        let l = if (level - nearest).abs() < 1e-4 {
            nearest
        } else {
            let low = level.floor();
            low + f32::from(uniform(seed, first + i as u64) < level - low)
        };
        *q = l.clamp(0.0, 15.0) as u8;
    }
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&grid[..4]);
    for j in 0..16 {
        out[4 + j] = q[j] | (q[j + 16] << 4);
    }
    Some(out)
}

/// ggml's `make_qkx2_quants`: the scale and minimum of a sub-block of `x.len()`
/// values at levels `0..=nmax`, searched to minimise the weighted squared
/// error. Returns `(scale, -min)` and the levels in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One Q4_K super-block of 256 values (`quantize_row_q4_K_ref`).
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let sub = &x[32 * j..32 * (j + 1)];
        let sum_x2: f32 = sub.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(15, sub, &weights, &mut l[32 * j..32 * (j + 1)], -1.0, 0.1, 20);
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(..)` then MIN(63, ls).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_value(max_scale / 63.0);
    let dmin = f16_value(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = lora_nn::gguf::q4_k_scale_min(j, &packed);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    out.extend(f16_bytes(max_scale / 63.0));
    out.extend(f16_bytes(max_min / 63.0));
    out.extend(packed);
    for chunk in l.chunks_exact(64) {
        out.extend((0..32).map(|i| chunk[i] | (chunk[i + 32] << 4)));
    }
}

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants` with `rmse_type = 1`: the scale of a symmetric
/// group at levels `-nmax..nmax-1`, searched over 19 candidates around
/// `nmax / max` to maximise `sum(w x l)^2 / sum(w l^2)` (the least-squares fit
/// weighted by `w`: the importance `qw` when given, else `x^2`). The levels
/// (offset by `nmax`) go to `l`.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: Option<&[f32]>) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = level(iscale, v) as f32;
            let w = qw.map_or(v * v, |w| w[i]);
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (level(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// One Q6_K super-block of 256 values (`quantize_row_q6_K_ref`): sixteen
/// groups of 16 with an 8-bit signed scale each, under one f16 `d`; 6-bit
/// levels stored as `ql[128]` (low nibbles), `qh[64]` (high pairs),
/// `scales[16]`, then `d`.
fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * (ib + 1)], &mut l[16 * ib..16 * (ib + 1)], None);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_value(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (sc, &s) in sc.iter_mut().zip(&scales) {
        *sc = nearest_int(iscale * s).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d * f32::from(sc[j]);
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as u8;
        }
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (half, j) in [0usize, 128].into_iter().enumerate() {
        let (ql, qh) = (&mut ql[64 * half..64 * (half + 1)], &mut qh[32 * half..32 * (half + 1)]);
        for i in 0..32 {
            let q = [l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]];
            ql[i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            ql[i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            qh[i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.map(|s| s as u8));
    out.extend(f16_bytes(1.0 / iscale));
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_nn::gguf::decode;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn roundtrip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let bytes = quantize(ty, x);
        assert_eq!(bytes.len(), x.len() / ty.block().0 * ty.block().1);
        let mut y = vec![0.0; x.len()];
        decode(ty, &bytes, &mut y);
        y
    }

    #[test]
    fn q8_0_by_hand() {
        // amax 1.27: d = 0.01, so 0.5 -> 50, -1.27 -> -127; roundf(0.005/0.01 = 0.5) -> 1 (away from zero).
        let mut x = vec![0.0f32; 32];
        x[0] = 0.5;
        x[1] = -1.27;
        x[2] = 0.005;
        let b = quantize(GgmlType::Q8_0, &x);
        assert_eq!(&b[..2], &f16_bytes(0.01));
        assert_eq!((b[2] as i8, b[3] as i8, b[4] as i8), (50, -127, 1));
    }

    #[test]
    fn q4_0_by_hand() {
        // Largest magnitude -8: d = 1, values map to x + 8 (the top level 16 clamps to 15).
        let mut x: Vec<f32> = (0..32).map(|i| (i % 16) as f32 - 8.0).collect();
        x[31] = 8.0;
        let b = quantize(GgmlType::Q4_0, &x);
        assert_eq!(&b[..2], &f16_bytes(1.0));
        assert_eq!(b[2], 0);
        assert_eq!(b[17] >> 4, 15, "8 / 1 + 8 = 16 clamps to 15");
    }

    #[test]
    fn every_type_round_trips_within_its_step() {
        let x = values(1024, 3);
        for (ty, tol) in [
            (GgmlType::F16, 1e-4),
            (GgmlType::Q8_0, 0.1 / 127.0),
            (GgmlType::Q5_0, 0.1 / 16.0 + 1e-4),
            (GgmlType::Q4_0, 0.1 / 8.0 + 1e-4),
            (GgmlType::Q4_1, 0.2 / 15.0),
            (GgmlType::Q4_K, 0.2 / 15.0 + 0.01),
            (GgmlType::Q6_K, 0.1 / 32.0 + 1e-4),
        ] {
            let y = roundtrip(ty, &x);
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tol, "{ty:?}: worst error {worst} > {tol}");
        }
    }

    #[test]
    fn q4_k_beats_q4_0_on_average() {
        // The k-quant's searched scales and minimums fit better than Q4_0's single scale.
        let x = values(4096, 11);
        let mse = |ty| {
            let y = roundtrip(ty, &x);
            x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32
        };
        assert!(mse(GgmlType::Q4_K) < mse(GgmlType::Q4_0));
    }

    #[test]
    fn q4_1_on_grid_keeps_grid_values_and_is_unbiased() {
        // A block of the reference quantizer is its own grid: re-rounding its
        // decoded values gives the same bytes.
        let x = values(32, 5);
        let grid = quantize(GgmlType::Q4_1, &x);
        let mut on = vec![0.0; 32];
        decode(GgmlType::Q4_1, &grid, &mut on);
        assert_eq!(q4_1_on_grid(&grid, &on, 1, 0).unwrap().as_slice(), grid.as_slice());
        // An update of +-10% of a step (none on the block's extremes, so that
        // the min/max grid stays the base's): nearest rounding erases it,
        // unbiased rounding keeps it on average over many draws.
        let d = half::f16::from_le_bytes([grid[0], grid[1]]).to_f32();
        let (lo, hi) = on.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let update: Vec<f32> = on
            .iter()
            .enumerate()
            .map(|(i, &v)| match (v == lo || v == hi, i % 2) {
                (true, _) => 0.0,
                (false, 0) => 0.1 * d,
                (false, _) => -0.1 * d,
            })
            .collect();
        let target: Vec<f32> = on.iter().zip(&update).map(|(v, u)| v + u).collect();
        assert_eq!(
            quantize(GgmlType::Q4_1, &target),
            grid,
            "nearest rounding gives the base back"
        );
        let norm: f32 = update.iter().map(|u| u * u).sum();
        let (mut kept, trials) = (0.0, 400);
        let mut back = vec![0.0; 32];
        for t in 0..trials {
            let b = q4_1_on_grid(&grid, &target, 7, 32 * t).unwrap();
            decode(GgmlType::Q4_1, &b, &mut back);
            let dot: f32 = back.iter().zip(&on).zip(&update).map(|((b, o), u)| (b - o) * u).sum();
            kept += dot / norm / trials as f32;
        }
        assert!((kept - 1.0).abs() < 0.1, "unbiased rounding keeps {kept} of the update");
        // Out of the grid's range by more than half a step: not on this grid.
        let mut far = on.clone();
        far[3] += 20.0 * d;
        assert!(q4_1_on_grid(&grid, &far, 1, 0).is_none());
    }

    #[test]
    fn zeros_quantize_to_zeros() {
        for ty in GgmlType::ALL {
            let x = vec![0.0; 256];
            assert!(roundtrip(ty, &x).iter().all(|&v| v == 0.0), "{ty:?}");
        }
    }
}
