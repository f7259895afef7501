//! Token-level text augmentations: token dropout, token masking, random swap.
//! They work on a text's body: the special tokens around it are the data
//! stage's to keep. (Truncation strategies are tokenisation: `lora_data::truncation`.)

use lora_core::augment::TextAugment;
use lora_core::init::SeededRng;
use rand::Rng;
use serde::Deserialize;

use crate::common::{default_one, fires};

/// `token-dropout`: each token is removed with probability `rate` (one is always kept).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenDropout {
    pub rate: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl TextAugment for TokenDropout {
    fn name(&self) -> &'static str {
        "token-dropout"
    }
    fn apply(&self, body: &mut Vec<u32>, _mask_id: Option<u32>, rng: &mut SeededRng) {
        let keep: Vec<bool> = body.iter().map(|_| rng.random::<f32>() >= self.rate).collect();
        if !fires(self.p, rng) || body.is_empty() {
            return;
        }
        let first = body[0];
        let mut k = keep.iter();
        body.retain(|_| *k.next().expect("one flag per token"));
        if body.is_empty() {
            body.push(first);
        }
    }
}

/// `token-mask`: each token becomes the tokenizer's mask token with probability `rate`
/// (BERT's `[MASK]`; a tokenizer without one leaves the text unchanged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenMask {
    pub rate: f32,
    #[serde(default = "default_one")]
    pub p: f32,
}

impl TextAugment for TokenMask {
    fn name(&self) -> &'static str {
        "token-mask"
    }
    fn apply(&self, body: &mut Vec<u32>, mask_id: Option<u32>, rng: &mut SeededRng) {
        let hit: Vec<bool> = body.iter().map(|_| rng.random::<f32>() < self.rate).collect();
        if !fires(self.p, rng) {
            return;
        }
        if let Some(m) = mask_id {
            body.iter_mut().zip(hit).filter(|(_, h)| *h).for_each(|(t, _)| *t = m);
        }
    }
}

/// `random-swap` (EDA, Wei and Zou): `swaps` times, two random positions trade tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RandomSwap {
    #[serde(default = "one_swap")]
    pub swaps: usize,
    #[serde(default = "default_one")]
    pub p: f32,
}

fn one_swap() -> usize {
    1
}

impl TextAugment for RandomSwap {
    fn name(&self) -> &'static str {
        "random-swap"
    }
    fn apply(&self, body: &mut Vec<u32>, _mask_id: Option<u32>, rng: &mut SeededRng) {
        if !fires(self.p, rng) || body.len() < 2 {
            return;
        }
        for _ in 0..self.swaps {
            let a = rng.random_range(0..body.len());
            let b = rng.random_range(0..body.len());
            body.swap(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use lora_core::init::rng;

    use super::*;

    #[test]
    fn token_ops_follow_their_streams() {
        let body: Vec<u32> = (100..120).collect();
        // Rate 0 and rate 1 are exact; in between, the draws decide and repeat.
        let mut b = body.clone();
        TokenDropout { rate: 0.0, p: 1.0 }.apply(&mut b, None, &mut rng(1));
        assert_eq!(b, body);
        let mut b = body.clone();
        TokenDropout { rate: 1.0, p: 1.0 }.apply(&mut b, None, &mut rng(1));
        assert_eq!(b, [100], "one token is always kept");
        let drop = TokenDropout { rate: 0.3, p: 1.0 };
        let (mut x, mut y) = (body.clone(), body.clone());
        drop.apply(&mut x, None, &mut rng(5));
        drop.apply(&mut y, None, &mut rng(5));
        assert_eq!(x, y);
        assert!(x.len() < 20 && x.windows(2).all(|w| w[0] < w[1]), "order kept: {x:?}");

        let mut m = body.clone();
        TokenMask { rate: 1.0, p: 1.0 }.apply(&mut m, Some(4), &mut rng(2));
        assert_eq!(m, [4; 20]);
        let mut m = body.clone();
        TokenMask { rate: 1.0, p: 1.0 }.apply(&mut m, None, &mut rng(2));
        assert_eq!(m, body, "no mask token, no change");

        let mut s = body.clone();
        RandomSwap { swaps: 3, p: 1.0 }.apply(&mut s, None, &mut rng(3));
        let mut sorted = s.clone();
        sorted.sort();
        assert_eq!(sorted, body, "a permutation");
        assert_ne!(s, body);
        let mut one = vec![7];
        RandomSwap { swaps: 3, p: 1.0 }.apply(&mut one, None, &mut rng(3));
        assert_eq!(one, [7]);
    }
}
