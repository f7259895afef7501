//! Classification metrics computed on the host from logits and labels.

use lora_core::registry::MetricEntry;
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

/// Per-class (true positives, actual, predicted) counts.
fn counts(m: &[Vec<u64>]) -> Vec<(f64, f64, f64)> {
    let n = m.len();
    (0..n)
        .map(|c| {
            let actual: u64 = m[c].iter().sum();
            let predicted: u64 = (0..n).map(|t| m[t][c]).sum();
            (m[c][c] as f64, actual as f64, predicted as f64)
        })
        .collect()
}

fn confusion(m: &[Vec<u64>]) -> Confusion {
    Confusion { matrix: m.to_vec() }
}

fn accuracy(m: &[Vec<u64>]) -> f64 {
    confusion(m).accuracy()
}

fn macro_f1(m: &[Vec<u64>]) -> f64 {
    confusion(m).macro_f1()
}

/// F1 per class weighted by the class's true count (scikit-learn's `average="weighted"`).
fn weighted_f1(m: &[Vec<u64>]) -> f64 {
    let total: f64 = counts(m).iter().map(|c| c.1).sum();
    if total == 0.0 {
        return 0.0;
    }
    let f1 = confusion(m).f1_per_class();
    counts(m)
        .iter()
        .zip(f1)
        .map(|((_, actual, _), f)| actual * f.unwrap_or(0.0))
        .sum::<f64>()
        / total
}

/// Mean over classes present in the truth of recall (balanced accuracy).
fn balanced_accuracy(m: &[Vec<u64>]) -> f64 {
    let recalls: Vec<f64> = counts(m)
        .iter()
        .filter(|c| c.1 > 0.0)
        .map(|(tp, actual, _)| tp / actual)
        .collect();
    if recalls.is_empty() {
        0.0
    } else {
        recalls.iter().sum::<f64>() / recalls.len() as f64
    }
}

/// Mean over classes predicted at least once of precision (scikit-learn's macro precision, zero_division skipped).
fn macro_precision(m: &[Vec<u64>]) -> f64 {
    let p: Vec<f64> = counts(m)
        .iter()
        .filter(|c| c.1 > 0.0 || c.2 > 0.0)
        .map(|(tp, _, predicted)| if *predicted > 0.0 { tp / predicted } else { 0.0 })
        .collect();
    if p.is_empty() {
        0.0
    } else {
        p.iter().sum::<f64>() / p.len() as f64
    }
}

/// Matthews correlation coefficient for several classes (Gorodkin's R_K, scikit-learn's `matthews_corrcoef`).
fn mcc(m: &[Vec<u64>]) -> f64 {
    let c = counts(m);
    let s: f64 = c.iter().map(|x| x.1).sum();
    let correct: f64 = c.iter().map(|x| x.0).sum();
    let pk: f64 = c.iter().map(|x| x.2 * x.1).sum();
    let p2: f64 = c.iter().map(|x| x.2 * x.2).sum();
    let t2: f64 = c.iter().map(|x| x.1 * x.1).sum();
    let denom = ((s * s - p2) * (s * s - t2)).sqrt();
    if denom == 0.0 { 0.0 } else { (correct * s - pk) / denom }
}

lora_core::inventory::submit! {
    MetricEntry { name: "accuracy", summary: "share of correct predictions", compute: accuracy }
}
lora_core::inventory::submit! {
    MetricEntry { name: "macro_f1", summary: "unweighted mean of per-class F1 (scikit-learn's macro average)", compute: macro_f1 }
}
lora_core::inventory::submit! {
    MetricEntry { name: "weighted_f1", summary: "per-class F1 weighted by class frequency", compute: weighted_f1 }
}
lora_core::inventory::submit! {
    MetricEntry { name: "balanced_accuracy", summary: "mean per-class recall", compute: balanced_accuracy }
}
lora_core::inventory::submit! {
    MetricEntry { name: "macro_precision", summary: "unweighted mean of per-class precision", compute: macro_precision }
}
lora_core::inventory::submit! {
    MetricEntry { name: "mcc", summary: "Matthews correlation coefficient, multi-class", compute: mcc }
}

/// Cross-entropy of one row of logits against a class, computed stably in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

pub use lora_core::adapter::{argmax, cross_entropy};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_match_hand_computation() {
        // Rows are the truth: class 0 has 6 samples (5 right), class 1 has 6 (3 right), class 2 has 4 (all right).
        let m = vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]];
        let metric = |name: &str| {
            let e = lora_core::registry::entries::<MetricEntry>()
                .into_iter()
                .find(|e| e.name == name)
                .unwrap();
            (e.compute)(&m)
        };
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        close(metric("accuracy"), 12.0 / 16.0);
        close(metric("macro_f1"), (10.0 / 13.0 + 0.6 + 8.0 / 9.0) / 3.0);
        close(
            metric("weighted_f1"),
            (6.0 * 10.0 / 13.0 + 6.0 * 0.6 + 4.0 * 8.0 / 9.0) / 16.0,
        );
        close(metric("balanced_accuracy"), (5.0 / 6.0 + 0.5 + 1.0) / 3.0);
        close(metric("macro_precision"), (5.0 / 7.0 + 0.75 + 0.8) / 3.0);
        // (correct * n - sum p_k t_k) / sqrt((n^2 - sum p_k^2)(n^2 - sum t_k^2)) = 106 / sqrt(166 * 168)
        close(metric("mcc"), 106.0 / (166.0f64 * 168.0).sqrt());
        // A perfect and an all-one-class prediction.
        close(mcc(&[vec![3, 0], vec![0, 2]]), 1.0);
        close(mcc(&[vec![3, 0], vec![2, 0]]), 0.0);
    }

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
