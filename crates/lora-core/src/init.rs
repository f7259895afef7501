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
}
