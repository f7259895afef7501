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
        self.for_each(start, x.len(), |j, m| x[j] *= m);
    }

    /// The factors of values `start..start + out.len()`.
    pub fn fill(&self, start: u64, out: &mut [f32]) {
        self.for_each(start, out.len(), |j, m| out[j] = m);
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
