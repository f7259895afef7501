//! Classification metrics computed on the host from logits and labels.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confusion {
    /// `matrix[true][predicted]`.
    pub matrix: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            matrix: vec![vec![0; classes]; classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.matrix[truth][predicted] += 1;
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.matrix.len()).map(|i| self.matrix[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Per-class F1; `None` for a class that appears neither in the truth nor in the predictions.
    pub fn f1_per_class(&self) -> Vec<Option<f64>> {
        let n = self.matrix.len();
        (0..n)
            .map(|c| {
                let tp = self.matrix[c][c] as f64;
                let actual: u64 = self.matrix[c].iter().sum();
                let predicted: u64 = (0..n).map(|t| self.matrix[t][c]).sum();
                if actual == 0 && predicted == 0 {
                    return None;
                }
                let denom = (actual + predicted) as f64;
                Some(if denom == 0.0 { 0.0 } else { 2.0 * tp / denom })
            })
            .collect()
    }

    /// Unweighted mean of F1 over the classes present in truth or predictions (scikit-learn's macro average).
    pub fn macro_f1(&self) -> f64 {
        let f: Vec<f64> = self.f1_per_class().into_iter().flatten().collect();
        if f.is_empty() {
            0.0
        } else {
            f.iter().sum::<f64>() / f.len() as f64
        }
    }
}

/// Cross-entropy of one row of logits against a class, computed stably in f64.
pub fn cross_entropy(logits: &[f32], class: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    lse - logits[class] as f64
}

pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_hand_computation() {
        // truth:     0 0 1 1 2
        // predicted: 0 1 1 1 0
        let mut c = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)] {
            c.add(t, p);
        }
        // class 0: tp 1, actual 2, predicted 2 -> 0.5; class 1: tp 2, actual 2, predicted 3 -> 0.8; class 2: 0.
        assert!((c.macro_f1() - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn absent_classes_do_not_count_in_the_macro_average() {
        let mut c = Confusion::new(3);
        c.add(0, 0);
        c.add(1, 1);
        assert_eq!(c.macro_f1(), 1.0);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_k() {
        assert!((cross_entropy(&[0.0, 0.0, 0.0], 1) - 3f64.ln()).abs() < 1e-12);
        assert!((cross_entropy(&[1000.0, 0.0], 0)).abs() < 1e-12);
        let p = softmax(&[1.0, 2.0]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }
}
