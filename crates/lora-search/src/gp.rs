//! The `gp` sampler: Bayesian optimisation with a Gaussian process and
//! expected improvement.
//!
//! The trials so far are placed in the unit cube (numbers scaled to their
//! bounds, in log space where the parameter is; a choice as one coordinate per
//! value, one-hot) and their losses standardised. The process has a zero mean
//! and a Matern 5/2 kernel of unit amplitude; its length scale and noise are
//! the pair of a small grid with the highest marginal likelihood. The
//! candidate with the highest expected improvement, among random draws and
//! draws around the best trials, becomes the next trial. A pruned trial counts
//! as the worst loss seen: it stopped because it was behind.
//!
//! The regression is written here (nalgebra does the Cholesky factorisation):
//! the `friedrich` crate was tried, but its likelihood leaves out the
//! determinant's dependence on the length scale, so its fits collapse to the
//! mean and expected improvement is zero everywhere.

use nalgebra::{Cholesky, DMatrix, DVector, Dyn};
use rand08::Rng;
use rand08::rngs::StdRng;

use crate::sampler::{Observation, random_point, uniform};
use crate::space::{Param, Point};

/// Random candidates over the whole space.
const GLOBAL_CANDIDATES: usize = 2000;
/// Candidates drawn around each of the best trials.
const LOCAL_CANDIDATES: usize = 100;
const LOCAL_CENTRES: usize = 5;
/// The spread of a local draw, as a share of each dimension's range.
const LOCAL_SPREAD: f64 = 0.1;
/// Expected improvement's exploration margin, in standard deviations of the loss.
const XI: f64 = 0.01;
/// The grid the length scale (in the unit cube) and the noise (in standard
/// deviations of the loss) are chosen from.
const LENGTH_SCALES: [f64; 7] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.5];
const NOISES: [f64; 4] = [0.01, 0.05, 0.2, 0.5];

/// The next point, or `None` when there is nothing to model (fewer than two
/// distinct finite losses): the caller draws at random.
pub(crate) fn suggest(params: &[Param], rng: &mut StdRng, history: &[Observation]) -> Option<Point> {
    let finite: Vec<f64> = history.iter().map(|o| o.loss).filter(|l| l.is_finite()).collect();
    let worst = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let best = finite.iter().copied().fold(f64::INFINITY, f64::min);
    if finite.len() < 2 || worst - best <= 0.0 {
        return None;
    }
    let losses: Vec<f64> = history
        .iter()
        .map(|o| if o.loss.is_finite() { o.loss } else { worst })
        .collect();
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    let std = (losses.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / losses.len() as f64).sqrt();
    let outputs: Vec<f64> = losses.iter().map(|l| (l - mean) / std).collect();
    let inputs: Vec<Vec<f64>> = history.iter().map(|o| encode(params, &o.point)).collect();
    let gp = Process::fit(inputs, &outputs)?;

    let mut candidates: Vec<Point> = (0..GLOBAL_CANDIDATES).map(|_| random_point(params, rng)).collect();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by(|&a, &b| outputs[a].total_cmp(&outputs[b]));
    for &centre in order.iter().take(LOCAL_CENTRES) {
        for _ in 0..LOCAL_CANDIDATES {
            candidates.push(near(params, &history[centre].point, rng));
        }
    }
    let best = outputs.iter().copied().fold(f64::INFINITY, f64::min);
    let mut chosen = 0;
    let mut chosen_ei = f64::NEG_INFINITY;
    for (i, c) in candidates.iter().enumerate() {
        let (mu, sigma) = gp.predict(&encode(params, c));
        let ei = expected_improvement(best, mu, sigma);
        if ei > chosen_ei {
            (chosen, chosen_ei) = (i, ei);
        }
    }
    chosen_ei.is_finite().then(|| candidates.swap_remove(chosen))
}

/// A fitted zero-mean process: the training inputs, the factor of their
/// covariance and the weights `K^-1 y`.
struct Process {
    inputs: Vec<Vec<f64>>,
    length_scale: f64,
    factor: Cholesky<f64, Dyn>,
    weights: DVector<f64>,
}

impl Process {
    /// The grid point with the highest log marginal likelihood,
    /// `-y'K^-1 y / 2 - log|K| / 2` (the constant left out); `None` if no
    /// covariance factorises.
    fn fit(inputs: Vec<Vec<f64>>, outputs: &[f64]) -> Option<Self> {
        let y = DVector::from_column_slice(outputs);
        let n = inputs.len();
        let mut best: Option<(f64, Self)> = None;
        for &length_scale in &LENGTH_SCALES {
            for &noise in &NOISES {
                let k = DMatrix::from_fn(n, n, |i, j| {
                    matern52(&inputs[i], &inputs[j], length_scale) + if i == j { noise * noise } else { 0.0 }
                });
                let Some(factor) = k.cholesky() else { continue };
                let weights = factor.solve(&y);
                let log_det: f64 = 2.0 * factor.l_dirty().diagonal().iter().map(|d| d.ln()).sum::<f64>();
                let likelihood = -0.5 * y.dot(&weights) - 0.5 * log_det;
                if best.as_ref().is_none_or(|(l, _)| likelihood > *l) {
                    let process = Self {
                        inputs: Vec::new(),
                        length_scale,
                        factor,
                        weights,
                    };
                    best = Some((likelihood, process));
                }
            }
        }
        best.map(|(_, mut p)| {
            p.inputs = inputs;
            p
        })
    }

    /// The predicted mean and standard deviation of the latent loss at `x`.
    fn predict(&self, x: &[f64]) -> (f64, f64) {
        let k = DVector::from_iterator(
            self.inputs.len(),
            self.inputs.iter().map(|xi| matern52(xi, x, self.length_scale)),
        );
        let mean = k.dot(&self.weights);
        let v = self
            .factor
            .l_dirty()
            .solve_lower_triangular(&k)
            .unwrap_or_else(|| k.clone());
        let var = (1.0 - v.norm_squared()).max(0.0);
        (mean, var.sqrt())
    }
}

/// The Matern 5/2 kernel of unit amplitude.
fn matern52(a: &[f64], b: &[f64], length_scale: f64) -> f64 {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt() / length_scale;
    let r = 5f64.sqrt() * d;
    (1.0 + r + r * r / 3.0) * (-r).exp()
}

/// Expected improvement below `best` of a normal(`mu`, `sigma`) loss.
pub(crate) fn expected_improvement(best: f64, mu: f64, sigma: f64) -> f64 {
    let gain = best - mu - XI;
    if sigma < 1e-12 {
        return gain.max(0.0);
    }
    let z = gain / sigma;
    let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    gain * cdf + sigma * pdf
}

/// A point in the unit cube: numbers scaled to their bounds, choices one-hot.
fn encode(params: &[Param], point: &Point) -> Vec<f64> {
    let mut out = Vec::with_capacity(point.len());
    for (p, &x) in params.iter().zip(point) {
        let (lo, hi) = p.domain.bounds();
        if p.domain.is_categorical() {
            let index = x.floor() as usize;
            out.extend((0..hi as usize).map(|i| f64::from(u8::from(i == index))));
        } else {
            out.push((x - lo) / (hi - lo));
        }
    }
    out
}

/// A draw near `centre`: numbers moved by a normal step of a tenth of their
/// range (kept inside it), each choice redrawn with probability 0.2.
fn near(params: &[Param], centre: &Point, rng: &mut StdRng) -> Point {
    params
        .iter()
        .zip(centre)
        .map(|(p, &x)| {
            let (lo, hi) = p.domain.bounds();
            if p.domain.is_categorical() {
                if rng.r#gen::<f64>() < 0.2 {
                    uniform(rng, lo, hi).floor()
                } else {
                    x
                }
            } else {
                let step = normal(rng) * LOCAL_SPREAD * (hi - lo);
                (x + step).clamp(lo, hi - (hi - lo) * 1e-12)
            }
        })
        .collect()
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
    let v: f64 = rng.r#gen();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_interpolates_and_is_unsure_far_away() {
        // Three points on a line; the noise grid's smallest value keeps the fit close.
        let inputs = vec![vec![0.0], vec![0.5], vec![1.0]];
        let outputs = [1.0, -1.0, 1.0];
        let gp = Process::fit(inputs, &outputs).unwrap();
        let (mu, sd) = gp.predict(&[0.5]);
        assert!((mu + 1.0).abs() < 0.2 && sd < 0.3, "at a training point: {mu} +- {sd}");
        let (_, far) = gp.predict(&[40.0]);
        assert!((far - 1.0).abs() < 1e-9, "far away the prior's unit deviation: {far}");
        // By hand: the kernel at distance 0 is 1; at r = sqrt(5) * d / l, (1 + r + r^2 / 3) e^-r.
        let r = 5f64.sqrt() * 0.3 / 0.2;
        assert!((matern52(&[0.0], &[0.3], 0.2) - (1.0 + r + r * r / 3.0) * (-r).exp()).abs() < 1e-15);
    }

    #[test]
    fn expected_improvement_matches_hand_values() {
        // best 0, mu 0, sigma 1, xi 0.01: gain -0.01, z -0.01;
        // EI = -0.01 * Phi(-0.01) + phi(-0.01) = -0.01 * 0.496011 + 0.398922 = 0.393962.
        assert!((expected_improvement(0.0, 0.0, 1.0) - 0.393_962).abs() < 1e-6);
        // Far below the best with no uncertainty: the gain itself.
        assert!((expected_improvement(1.0, -1.0, 0.0) - 1.99).abs() < 1e-12);
        // Far above the best: nothing to gain.
        assert!(expected_improvement(0.0, 10.0, 0.1) < 1e-12);
    }
}
