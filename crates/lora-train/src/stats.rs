//! Per-module figures of the LoRA matrices after a step: weight and gradient
//! norms of `A` and `B`, the update-to-weight ratio and the effective rank of
//! `B A`. Everything is computed on the host vectors the loop already holds;
//! for r=8 on MiniLM this is about 75k numbers, so it costs well under a
//! millisecond and can run every step.

use lora_core::events::ModuleStats;
use lora_core::{ParamInfo, ParamLayout};

/// Indices of the `A` and `B` matrices of each LoRA module, in parameter order.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    modules: Vec<(String, usize, usize)>,
}

impl ModuleIndex {
    pub fn new(info: &[ParamInfo]) -> Self {
        let mut modules = Vec::new();
        for (i, p) in info.iter().enumerate() {
            let Some(base) = p.name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b_name = format!("{base}.lora_B.weight");
            if let Some(j) = info.iter().position(|q| q.name == b_name) {
                let short = base.strip_prefix("base_model.model.").unwrap_or(base).to_string();
                modules.push((short, i, j));
            }
        }
        Self { modules }
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Figures of every module, from flat buffers in `layout`. `before` are
    /// the parameters before the update.
    pub fn stats(&self, layout: &ParamLayout, before: &[f32], after: &[f32], grads: &[f32]) -> Vec<ModuleStats> {
        self.modules
            .iter()
            .map(|(name, a, b)| {
                let (ra, rb) = (layout.range(*a), layout.range(*b));
                let (a_after, b_after) = (&after[ra.clone()], &after[rb.clone()]);
                let delta = (diff_sq(&before[ra.clone()], a_after) + diff_sq(&before[rb.clone()], b_after)).sqrt();
                let weight = (sum_sq(a_after) + sum_sq(b_after)).sqrt();
                let r = layout.params()[*a].shape[0];
                ModuleStats {
                    module: name.clone(),
                    a_weight_norm: sum_sq(a_after).sqrt(),
                    b_weight_norm: sum_sq(b_after).sqrt(),
                    a_grad_norm: sum_sq(&grads[ra]).sqrt(),
                    b_grad_norm: sum_sq(&grads[rb]).sqrt(),
                    update_ratio: ratio(delta, weight),
                    effective_rank: effective_rank(a_after, b_after, r),
                }
            })
            .collect()
    }
}

pub fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum()
}

fn diff_sq(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum()
}

/// `||before - after|| / ||after||` over all parameters: the global update-to-weight ratio.
pub fn global_update_ratio(before: &[f32], after: &[f32]) -> f64 {
    ratio(diff_sq(before, after).sqrt(), sum_sq(after).sqrt())
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { num / den } else { 0.0 }
}

/// Entropy-based effective rank, `exp(-sum p_i ln p_i)` with `p_i = s_i / sum s`,
/// of `B A` (`A` is `[r, in]`, `B` is `[out, r]`), from r x r matrices only.
///
/// The squared singular values of `B A` are the eigenvalues of `L^T (B^T B) L`,
/// where `L L^T = A A^T` (Cholesky): both are r x r, so this never forms `B A`.
pub fn effective_rank(a: &[f32], b: &[f32], r: usize) -> f64 {
    if r == 0 || !a.len().is_multiple_of(r) || !b.len().is_multiple_of(r) {
        return 0.0;
    }
    let (inp, out) = (a.len() / r, b.len() / r);
    // H = A A^T, G = B^T B.
    let mut h = vec![0.0f64; r * r];
    let mut g = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..=i {
            let s: f64 = (0..inp).map(|k| a[i * inp + k] as f64 * a[j * inp + k] as f64).sum();
            h[i * r + j] = s;
            h[j * r + i] = s;
            let t: f64 = (0..out).map(|k| b[k * r + i] as f64 * b[k * r + j] as f64).sum();
            g[i * r + j] = t;
            g[j * r + i] = t;
        }
    }
    let Some(l) = cholesky(&h, r) else { return 0.0 };
    // M = L^T G L.
    let mut gl = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..r {
            gl[i * r + j] = (0..r).map(|k| g[i * r + k] * l[k * r + j]).sum();
        }
    }
    let mut m = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..r {
            m[i * r + j] = (0..r).map(|k| l[k * r + i] * gl[k * r + j]).sum();
        }
    }
    let singular: Vec<f64> = jacobi_eigenvalues(m, r)
        .into_iter()
        .map(|e| e.max(0.0).sqrt())
        .collect();
    let total: f64 = singular.iter().sum();
    if total <= 1e-30 || !total.is_finite() {
        return 0.0;
    }
    let entropy: f64 = singular
        .iter()
        .map(|s| s / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    entropy.exp()
}

/// Lower-triangular `L` with `L L^T = H`; a tiny ridge keeps a rank-deficient `A` usable.
fn cholesky(h: &[f64], r: usize) -> Option<Vec<f64>> {
    let trace: f64 = (0..r).map(|i| h[i * r + i]).sum();
    let ridge = 1e-12 * trace.max(1e-300);
    let mut l = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..=i {
            let mut s = h[i * r + j] - (0..j).map(|k| l[i * r + k] * l[j * r + k]).sum::<f64>();
            if i == j {
                s += ridge;
                if s <= 0.0 || s.is_nan() {
                    return None;
                }
                l[i * r + i] = s.sqrt();
            } else {
                l[i * r + j] = s / l[j * r + j];
            }
        }
    }
    Some(l)
}

/// Eigenvalues of a small symmetric matrix by cyclic Jacobi rotations.
fn jacobi_eigenvalues(mut m: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| m[i * n + i].powi(2)).sum();
        if off <= 1e-24 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
            }
        }
    }
    (0..n).map(|i| m[i * n + i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_rank_of_known_products() {
        // A = I (2 x 2, in = 2), B = diag(1, 1): two equal singular values, rank 2.
        let a = [1.0, 0.0, 0.0, 1.0];
        assert!((effective_rank(&a, &[1.0, 0.0, 0.0, 1.0], 2) - 2.0).abs() < 1e-9);
        // B = diag(1, 0): rank 1.
        assert!((effective_rank(&a, &[1.0, 0.0, 0.0, 0.0], 2) - 1.0).abs() < 1e-6);
        // B zero (LoRA's initial state): 0 by definition.
        assert_eq!(effective_rank(&a, &[0.0; 4], 2), 0.0);
        // Singular values 3 and 1: p = (0.75, 0.25), exp(entropy) = 1.7548...
        let b = [3.0, 0.0, 0.0, 1.0];
        let expected = (-(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln())).exp();
        assert!((effective_rank(&a, &b, 2) - expected).abs() < 1e-9);
    }

    #[test]
    fn effective_rank_with_a_non_identity_a() {
        // A = [[1, 1, 0], [0, 1, 1]] (r=2, in=3), B = [[1, 0], [0, 0], [0, 2]] (out=3).
        // B A = [[1,1,0],[0,0,0],[0,2,2]]: singular values sqrt of eig of [[2, 2],[2, 8]] (row space).
        let a = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        let b = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let (t, d) = (10.0f64, 16.0f64 - 4.0);
        let disc = (t * t / 4.0 - d).sqrt();
        let s = [(t / 2.0 + disc).sqrt(), (t / 2.0 - disc).sqrt()];
        let total = s[0] + s[1];
        let expected = (-s.iter().map(|x| x / total * (x / total).ln()).sum::<f64>()).exp();
        assert!(
            (effective_rank(&a, &b, 2) - expected).abs() < 1e-9,
            "{}",
            effective_rank(&a, &b, 2)
        );
    }

    #[test]
    fn modules_pair_a_with_b_and_ratios_are_relative() {
        let info = vec![
            ParamInfo::new("base_model.model.x.lora_A.weight", vec![1, 2], true),
            ParamInfo::new("base_model.model.x.lora_B.weight", vec![2, 1], true),
            ParamInfo::new("base_model.model.classifier.bias", vec![2], false),
        ];
        let index = ModuleIndex::new(&info);
        assert_eq!(index.len(), 1);
        let before = vec![vec![3.0, 4.0], vec![0.0, 0.0], vec![0.0, 0.0]];
        let after = vec![vec![3.0, 4.0], vec![0.0, 0.0], vec![0.0, 0.0]];
        let grads = vec![vec![0.0, 0.0], vec![1.0, 0.0], vec![0.0, 0.0]];
        let layout = ParamLayout::new(&info);
        let flat = |v: &[Vec<f32>]| layout.flatten(v).unwrap();
        let s = &index.stats(&layout, &flat(&before), &flat(&after), &flat(&grads))[0];
        assert_eq!(s.module, "x");
        assert!((s.a_weight_norm - 5.0).abs() < 1e-12);
        assert!((s.b_grad_norm - 1.0).abs() < 1e-12);
        assert_eq!(s.update_ratio, 0.0);
        let moved = vec![vec![3.0, 4.0], vec![0.0, 0.5], vec![0.0, 0.0]];
        assert!((global_update_ratio(&flat(&after), &flat(&moved)) - 0.5 / (25.25f64).sqrt()).abs() < 1e-9);
    }
}
