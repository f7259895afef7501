//! Seeded, backend-independent random numbers for initialisation and dropout.
//!
//! Both backends draw from these helpers, so that the same seed gives the same
//! initial adapter and the same dropout masks everywhere (the conformance suite
//! relies on it), and so that no backend's global RNG is ever involved.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type SeededRng = ChaCha8Rng;

pub fn rng(seed: u64) -> SeededRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Derives an independent stream from a seed and a purpose (a parameter name, a step number).
pub fn derive_seed(seed: u64, purpose: &str, index: u64) -> u64 {
    // FNV-1a over the purpose, mixed with the seed and index by splitmix64.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in purpose.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut z = seed ^ h ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// PEFT's LoRA `A` initialisation: `kaiming_uniform_(a = sqrt(5))`, which is
/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn kaiming_uniform(fan_in: usize, len: usize, rng: &mut SeededRng) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..len).map(|_| rng.random_range(-bound..bound)).collect()
}

/// Normal values by Box-Muller (Hugging Face initialises new heads with N(0, 0.02)).
pub fn normal(std: f32, len: usize, rng: &mut SeededRng) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = std::f32::consts::TAU * u2;
        out.push(r * t.cos());
        if out.len() < len {
            out.push(r * t.sin());
        }
    }
    out
}

/// An inverted-dropout mask: `0` with probability `p`, else `1 / (1 - p)`.
pub fn dropout_mask(p: f32, len: usize, rng: &mut SeededRng) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    (0..len)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect()
}

/// An inverted-dropout mask that is a pure function of a key and each value's
/// index: value `i` is dropped when the 32 bits drawn for `i` fall below `p`'s
/// share of 2^32, else scaled by `1 / (1 - p)`. Counter-based, so a kernel can
/// draw any part of the mask, in any order and on any thread, without storing it,
/// and every backend draws the same mask. One splitmix64 draw gives two values
/// (the even index the low half, the odd index the high half).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterMask {
    key: u64,
    threshold: u64,
    keep: f32,
}

impl CounterMask {
    /// `None` where nothing is dropped (`p <= 0`); `p` must be below 1.
    pub fn new(key: u64, p: f32) -> Option<Self> {
        if p <= 0.0 || p >= 1.0 || p.is_nan() {
            return None;
        }
        Some(Self {
            key,
            threshold: (f64::from(p) * 4_294_967_296.0) as u64,
            keep: 1.0 / (1.0 - p),
        })
    }

    /// The factor a kept value is multiplied by, `1 / (1 - p)`.
    pub fn keep(&self) -> f32 {
        self.keep
    }

    #[inline]
    fn pair(&self, pair: u64) -> u64 {
        let mut z = self.key.wrapping_add(pair.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The factor of value `i`: 0 or `1 / (1 - p)`.
    #[inline]
    pub fn factor(&self, i: u64) -> f32 {
        let bits = self.pair(i >> 1) >> (32 * (i & 1)) & 0xffff_ffff;
        if bits < self.threshold { 0.0 } else { self.keep }
    }

    /// `f(offset, factor)` for the values `start..start + len`, one draw per pair.
    #[inline]
    pub fn for_each(&self, start: u64, len: usize, mut f: impl FnMut(usize, f32)) {
        let factor = |bits: u64| if bits < self.threshold { 0.0 } else { self.keep };
        let mut k = 0usize;
        if start & 1 == 1 && len > 0 {
            f(0, self.factor(start));
            k = 1;
        }
        while k + 1 < len {
            let h = self.pair((start + k as u64) >> 1);
            f(k, factor(h & 0xffff_ffff));
            f(k + 1, factor(h >> 32));
            k += 2;
        }
        if k < len {
            f(k, self.factor(start + k as u64));
        }
    }

    /// `x[j] *= factor(start + j)` for every value of `x`.
    pub fn apply(&self, start: u64, x: &mut [f32]) {
        self.vectorised(start, x, Write::Scale);
    }

    /// The factors of values `start..start + out.len()`.
    pub fn fill(&self, start: u64, out: &mut [f32]) {
        self.vectorised(start, out, Write::Factor);
    }

    /// `out[j] = src[j] * factor(start + j)`: [`Self::apply`] on a copy, without
    /// the copy. Panics when the lengths differ.
    pub fn scale_into(&self, start: u64, src: &[f32], out: &mut [f32]) {
        assert_eq!(src.len(), out.len(), "a mask's source and output differ in length");
        self.vectorised(start, out, Write::ScaleFrom(src));
    }

    /// [`Self::apply`] or [`Self::fill`]: sixteen values (eight draws) a step
    /// on AVX-512, where splitmix64's 64-bit products are one instruction for
    /// eight lanes (a profile of a training step with BERT's dropout had the
    /// scalar loop at 15% of the samples); the scalar loop elsewhere and for
    /// the ends. The same bits either way (tested).
    fn vectorised(&self, start: u64, x: &mut [f32], write: Write) {
        #[cfg(target_arch = "x86_64")]
        if x.len() >= 32 && std::arch::is_x86_feature_detected!("avx512dq") {
            // The vector loop starts on a pair boundary: an odd first value goes alone.
            let head = (start & 1) as usize;
            let body = (x.len() - head) / 16 * 16;
            let (first, rest) = x.split_at_mut(head);
            let (middle, tail) = rest.split_at_mut(body);
            let [w_first, w_middle, w_tail] = write.split(head, body);
            self.scalar(start, first, w_first);
            // SAFETY: the CPU has just been found to support AVX-512F and DQ.
            unsafe { avx512::draw(self, (start + head as u64) >> 1, middle, w_middle) };
            self.scalar(start + (head + body) as u64, tail, w_tail);
            return;
        }
        self.scalar(start, x, write);
    }

    fn scalar(&self, start: u64, x: &mut [f32], write: Write) {
        match write {
            Write::Scale => self.for_each(start, x.len(), |j, m| x[j] *= m),
            Write::Factor => self.for_each(start, x.len(), |j, m| x[j] = m),
            Write::ScaleFrom(src) => self.for_each(start, x.len(), |j, m| x[j] = src[j] * m),
        }
    }
}

/// What a mask pass does with each factor.
#[derive(Clone, Copy)]
enum Write<'a> {
    /// `x *= factor`.
    Scale,
    /// `x = factor`.
    Factor,
    /// `x = src * factor`, `src` as long as `x`.
    ScaleFrom(&'a [f32]),
}

impl<'a> Write<'a> {
    /// The same write for the three parts of an output cut at `head` and `head + body`.
    fn split(self, head: usize, body: usize) -> [Write<'a>; 3] {
        match self {
            Write::ScaleFrom(src) => {
                let (first, rest) = src.split_at(head);
                let (middle, tail) = rest.split_at(body);
                [
                    Write::ScaleFrom(first),
                    Write::ScaleFrom(middle),
                    Write::ScaleFrom(tail),
                ]
            }
            other => [other; 3],
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CounterMask, Write};
    use std::arch::x86_64::*;

    /// The mask over `x` (a multiple of 16 values) from draw `pair` on: each
    /// draw's 64 bits are two values' 32, the low half first, which is the
    /// order of the 16 u32 lanes over the 8 u64 lanes.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn draw(mask: &CounterMask, pair: u64, x: &mut [f32], write: Write<'_>) {
        let step = _mm512_set1_epi64(8);
        let mut counter = _mm512_add_epi64(
            _mm512_set1_epi64(pair as i64),
            _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let key = _mm512_set1_epi64(mask.key as i64);
        let (golden, mix1, mix2) = (
            _mm512_set1_epi64(0x9e37_79b9_7f4a_7c15_u64 as i64),
            _mm512_set1_epi64(0xbf58_476d_1ce4_e5b9_u64 as i64),
            _mm512_set1_epi64(0x94d0_49bb_1331_11eb_u64 as i64),
        );
        // `threshold` is below 2^32 (p < 1).
        let threshold = _mm512_set1_epi32(mask.threshold as u32 as i32);
        let keep = _mm512_set1_ps(mask.keep);
        let mut done = 0;
        for block in x.chunks_exact_mut(16) {
            let mut z = _mm512_add_epi64(key, _mm512_mullo_epi64(counter, golden));
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), mix1);
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), mix2);
            z = _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z));
            let kept = _mm512_cmpge_epu32_mask(z, threshold);
            // 0 or 1 / (1 - p), then the same product as the scalar loop's.
            let factor = _mm512_maskz_mov_ps(kept, keep);
            // SAFETY: `block` is 16 values.
            unsafe {
                let out = match write {
                    Write::Scale => _mm512_mul_ps(_mm512_loadu_ps(block.as_ptr()), factor),
                    Write::Factor => factor,
                    // `src` is as long as `x`: this block's values start at `done` there too.
                    Write::ScaleFrom(src) => _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(done)), factor),
                };
                _mm512_storeu_ps(block.as_mut_ptr(), out);
            }
            done += 16;
            counter = _mm512_add_epi64(counter, step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_uniform_stays_within_the_peft_bound() {
        let v = kaiming_uniform(384, 10_000, &mut rng(1));
        let bound = 1.0 / 384f32.sqrt();
        assert!(v.iter().all(|x| x.abs() <= bound));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.01 * bound * 10.0);
    }

    #[test]
    fn normal_has_the_requested_spread() {
        let v = normal(0.02, 20_000, &mut rng(2));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 1e-3);
        assert!((var.sqrt() - 0.02).abs() < 1e-3);
    }

    #[test]
    fn dropout_mask_keeps_the_expectation() {
        let m = dropout_mask(0.25, 40_000, &mut rng(3));
        let mean = m.iter().sum::<f32>() / m.len() as f32;
        assert!((mean - 1.0).abs() < 0.02);
        assert!(m.iter().all(|&x| x == 0.0 || (x - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn same_seed_same_numbers() {
        assert_eq!(kaiming_uniform(8, 16, &mut rng(7)), kaiming_uniform(8, 16, &mut rng(7)));
        assert_ne!(derive_seed(1, "a", 0), derive_seed(1, "b", 0));
        assert_ne!(derive_seed(1, "a", 0), derive_seed(1, "a", 1));
    }
    #[test]
    fn counter_mask_drops_p_and_keeps_the_expectation() {
        let m = CounterMask::new(derive_seed(5, "base-dropout", 0), 0.1).unwrap();
        let mut v = vec![0.0; 100_001];
        m.fill(0, &mut v);
        let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0 / 0.9));
        // Any part of the mask, from any start (odd or even), is the same mask.
        for (start, len) in [(1, 10), (7, 1), (4, 9), (33_333, 1000)] {
            let mut part = vec![0.0; len];
            m.fill(start as u64, &mut part);
            assert_eq!(part, v[start..start + len]);
            assert!(part.iter().enumerate().all(|(j, &x)| x == m.factor((start + j) as u64)));
        }
        let mut x = vec![2.0; 10];
        m.apply(3, &mut x);
        assert!(x.iter().zip(&v[3..13]).all(|(x, f)| *x == 2.0 * f));
    }

    /// The vector loop against the scalar one, bit for bit: odd and even
    /// starts, lengths around its 16-value blocks, values of every sign.
    #[test]
    fn the_vectorised_mask_is_the_scalar_one() {
        for p in [0.1f32, 0.5, 0.9] {
            let m = CounterMask::new(derive_seed(9, "vector", 0), p).unwrap();
            for (start, len) in [
                (0u64, 32usize),
                (1, 33),
                (2, 47),
                (3, 100),
                (1 << 33, 1000),
                (u64::MAX - 200, 150),
            ] {
                let x: Vec<f32> = (0..len).map(|i| (i as f32 - 20.0) * 0.37).collect();
                let (mut fast, mut slow) = (x.clone(), x.clone());
                m.apply(start, &mut fast);
                m.scalar(start, &mut slow, Write::Scale);
                assert!(
                    fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "apply p={p} start={start}"
                );
                let mut copied = vec![f32::NAN; len];
                m.scale_into(start, &x, &mut copied);
                assert!(
                    copied.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "scale_into p={p} start={start}"
                );
                let (mut fast, mut slow) = (vec![0.0; len], vec![0.0; len]);
                m.fill(start, &mut fast);
                m.scalar(start, &mut slow, Write::Factor);
                assert_eq!(fast, slow, "fill p={p} start={start}");
            }
        }
    }

    #[test]
    fn counter_masks_differ_by_key_and_vanish_at_zero() {
        assert!(CounterMask::new(1, 0.0).is_none());
        assert!(CounterMask::new(1, 1.0).is_none());
        let (a, b) = (CounterMask::new(1, 0.5).unwrap(), CounterMask::new(2, 0.5).unwrap());
        let (mut va, mut vb) = (vec![0.0; 256], vec![0.0; 256]);
        a.fill(0, &mut va);
        b.fill(0, &mut vb);
        assert_ne!(va, vb);
    }
}
