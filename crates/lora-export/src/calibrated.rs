//! Activation-aware rounding of the symmetric types (Q4_0, Q5_0), from the
//! Gram matrix `H = X^T X` of a matrix's inputs over calibration text
//! ([`lora_core::calibration`]). The blocks are ggml's (f16 `d`, levels
//! `0..2 nmax`); only the choice of `d` and of the levels differs from the
//! reference, so every reader of the format reads them.
//!
//! A matrix `W [out, in]` multiplies inputs `x`; its error on them is
//! `sum_r (w_r - q_r)^T H (w_r - q_r)`, one row `r` at a time. Two ways to
//! lower it:
//! - [`weighted_row`], llama.cpp's importance matrix (`quantize_row_q4_0_impl`):
//!   each block's scale searched to minimise the error weighted by the
//!   diagonal of `H` (the mean `x_j^2` of input column `j`);
//! - [`gptq_row`], GPTQ (Frantar et al. 2022): the columns rounded in order,
//!   each column's error spread onto the columns not yet rounded through the
//!   Cholesky factor of `H^-1`, so that the whole of `H` is used.

use lora_core::calibration::Gram;
use lora_core::gguf::GgmlType;
use lora_core::{Error, Result};

use crate::quant::{make_qx_quants, pack_q4_0, pack_q5_0, stored_scale};

/// How a calibrated matrix is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// llama.cpp's importance matrix: per-column mean squares as weights.
    Imatrix,
    /// GPTQ: error feedback through the inverse Hessian.
    Gptq,
}

/// `nmax` of a symmetric type (levels `-nmax..nmax-1`), or `None`.
pub fn levels(ty: GgmlType) -> Option<i32> {
    match ty {
        GgmlType::Q4_0 => Some(8),
        GgmlType::Q5_0 => Some(16),
        _ => None,
    }
}

fn pack(nmax: i32, d: f32, q: &[u8], out: &mut Vec<u8>) {
    if nmax == 8 {
        pack_q4_0(d, q, out)
    } else {
        pack_q5_0(d, q, out)
    }
}

/// One row in `ty`'s blocks (Q4_0 or Q5_0), each block's scale chosen by
/// ggml's `make_qx_quants` with the weights `importance_j * sqrt(sigma^2 +
/// x_j^2)` (`sigma^2` the row's mean square), as `quantize_row_q4_0_impl` does.
pub fn weighted_row(nmax: i32, x: &[f32], importance: &[f32]) -> Vec<u8> {
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let mut out = Vec::with_capacity(x.len() / 32 * (2 + 16 + if nmax == 16 { 4 } else { 0 }));
    let (mut w, mut l) = ([0f32; 32], [0u8; 32]);
    for (xb, qb) in x.chunks_exact(32).zip(importance.chunks_exact(32)) {
        for j in 0..32 {
            w[j] = qb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(nmax, xb, &mut l, Some(&w));
        pack(nmax, d, &l, &mut out);
    }
    out
}

/// What GPTQ needs of a Gram matrix: the upper Cholesky factor `U` of
/// `(H + lambda I)^-1` (`U^T U`), and the input columns no row ever reached.
pub struct Hessian {
    n: usize,
    /// Row-major `n x n`, upper triangular.
    u: Vec<f32>,
    dead: Vec<bool>,
}

/// GPTQ's damping: `lambda` is this fraction of the mean diagonal.
const DAMPING: f64 = 0.01;

impl Hessian {
    pub fn new(gram: &Gram) -> Result<Self> {
        let n = gram.dim;
        let mut h = gram.sum.clone();
        let dead: Vec<bool> = (0..n).map(|j| h[j * n + j] <= 0.0).collect();
        for (j, _) in dead.iter().enumerate().filter(|d| *d.1) {
            h[j * n + j] = 1.0;
        }
        let mean = (0..n).map(|j| h[j * n + j]).sum::<f64>() / n as f64;
        // A rank-deficient H (fewer rows than columns) needs the damping; a
        // larger one is tried if rounding still leaves it indefinite.
        for scale in [1.0, 10.0, 100.0] {
            let mut a = h.clone();
            for j in 0..n {
                a[j * n + j] += DAMPING * scale * mean;
            }
            if let Some(u) = inverse_upper_factor(a, n) {
                return Ok(Self { n, u, dead });
            }
        }
        Err(Error::Other(format!(
            "the inputs' {n} x {n} Gram matrix is not positive definite even damped"
        )))
    }
}

/// `U` upper triangular with `U^T U = A^-1`, for `A` symmetric positive
/// definite. With `J` the reversal, `J A J = L L^T` (Cholesky) gives
/// `A = V V^T` for the upper `V = J L J`, so `A^-1 = V^-T V^-1` and
/// `U = V^-1 = J L^-1 J`: one Cholesky and one triangular inverse.
fn inverse_upper_factor(a: Vec<f64>, n: usize) -> Option<Vec<f32>> {
    // L of J A J, row by row (Cholesky-Banachiewicz).
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[(n - 1 - i) * n + (n - 1 - j)] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // L^-1 column by column (forward substitution on e_c), placed at J . J.
    let mut u = vec![0f32; n * n];
    let mut x = vec![0f64; n];
    for c in 0..n {
        x.fill(0.0);
        for i in c..n {
            let known = dot(&l[i * n + c..i * n + i], &x[c..i]);
            x[i] = (f64::from(u8::from(i == c)) - known) / l[i * n + i];
            u[(n - 1 - i) * n + (n - 1 - c)] = x[i] as f32;
        }
    }
    Some(u)
}

/// `sum a_i b_i` in eight lanes (which the compiler vectorises; a single
/// running sum it may not reorder).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// One row in `ty`'s blocks by GPTQ: columns in order; at the first column
/// of each block of 32 the block's scale is ggml's (`max / -nmax`, stored as
/// f16) of the row's current values, not of the original ones; each column is rounded to its nearest
/// level and its error `e` moves the later columns by `-e U[j, k] / U[j, j]`.
pub fn gptq_row(nmax: i32, row: &[f32], h: &Hessian) -> Vec<u8> {
    let n = h.n;
    debug_assert_eq!(row.len(), n);
    let mut w: Vec<f32> = row
        .iter()
        .zip(&h.dead)
        .map(|(&v, &d)| if d { 0.0 } else { v })
        .collect();
    let mut out = Vec::with_capacity(n / 32 * (2 + 16 + if nmax == 16 { 4 } else { 0 }));
    let mut q = [0u8; 32];
    let top = 2 * nmax - 1;
    for g in (0..n).step_by(32) {
        let max = w[g..g + 32]
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        // As ggml: levels from the f32 scale, values at the stored f16 one.
        let d = max / -(nmax as f32);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let stored = stored_scale(d);
        for j in g..g + 32 {
            let level = ((w[j] * id + nmax as f32 + 0.5).floor() as i32).clamp(0, top);
            q[j - g] = level as u8;
            let err = (w[j] - (level - nmax) as f32 * stored) / h.u[j * n + j];
            for (wk, uk) in w[j + 1..].iter_mut().zip(&h.u[j * n + j + 1..(j + 1) * n]) {
                *wk -= err * uk;
            }
        }
        pack(nmax, d, &q, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;
    use lora_nn::gguf::decode;

    const ROWS: usize = 8;
    const COLS: usize = 64;

    /// `tests/reference/calibrated_q4_0.py`'s linear: W [8, 64], and the Gram
    /// matrix of 96 inputs whose first four columns are 20 times larger.
    fn skewed() -> (Vec<f32>, Gram) {
        let w: Vec<f32> = (0..ROWS * COLS)
            .map(|i| ((0.37 * (i % COLS) as f64 + 1.3 * (i / COLS) as f64).sin() * 0.1) as f32)
            .collect();
        let x: Vec<f64> = (0..96 * COLS)
            .map(|i| {
                let (t, j) = ((i / COLS) as f64, i % COLS);
                let s = if j < 4 { 20.0 } else { 1.0 };
                f64::from(((0.7 * t + 0.11 * j as f64).cos() * s) as f32)
            })
            .collect();
        let mut sum = vec![0f64; COLS * COLS];
        for row in x.chunks_exact(COLS) {
            for a in 0..COLS {
                for b in 0..COLS {
                    sum[a * COLS + b] += row[a] * row[b];
                }
            }
        }
        (
            w,
            Gram {
                dim: COLS,
                sum,
                rows: 96,
            },
        )
    }

    /// `sum_r (w_r - q_r)^T H (w_r - q_r)` of Q4_0 bytes.
    fn error(w: &[f32], bytes: &[u8], h: &Gram) -> f64 {
        let mut q = vec![0f32; w.len()];
        decode(GgmlType::Q4_0, bytes, &mut q);
        let d: Vec<f64> = w.iter().zip(&q).map(|(a, b)| f64::from(a - b)).collect();
        d.chunks_exact(COLS)
            .map(|r| {
                (0..COLS)
                    .map(|a| (0..COLS).map(|b| r[a] * h.sum[a * COLS + b] * r[b]).sum::<f64>())
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn calibrated_q4_0_lowers_the_error_on_skewed_inputs() {
        let (w, gram) = skewed();
        let reference: Vec<u8> = w.chunks_exact(COLS).flat_map(|r| quantize(GgmlType::Q4_0, r)).collect();
        let h = Hessian::new(&gram).unwrap();
        let gptq: Vec<u8> = w.chunks_exact(COLS).flat_map(|r| gptq_row(8, r, &h)).collect();
        let imp: Vec<f32> = gram.mean_squares().iter().map(|&v| v as f32).collect();
        let imatrix: Vec<u8> = w.chunks_exact(COLS).flat_map(|r| weighted_row(8, r, &imp)).collect();
        let (e_ref, e_gptq, e_imatrix) = (
            error(&w, &reference, &gram),
            error(&w, &gptq, &gram),
            error(&w, &imatrix, &gram),
        );
        // numpy with the `gguf` package's quantizer, and GPTQ written in numpy
        // (calibrated_q4_0.py): 19.385132 and 0.018975.
        assert!((e_ref - 19.385132).abs() < 1e-3, "reference {e_ref}");
        assert!((e_gptq - 0.018975).abs() < 1e-4, "gptq {e_gptq}");
        assert!(e_imatrix < e_ref, "imatrix {e_imatrix} vs {e_ref}");
        assert_eq!(gptq.len(), reference.len());
    }

    #[test]
    fn gptq_on_uncorrelated_equal_inputs_is_the_reference() {
        // H = c I: U is diagonal, no error moves, each block's scale is ggml's.
        let (w, _) = skewed();
        let mut sum = vec![0f64; COLS * COLS];
        for j in 0..COLS {
            sum[j * COLS + j] = 5.0;
        }
        let h = Hessian::new(&Gram {
            dim: COLS,
            sum,
            rows: 3,
        })
        .unwrap();
        for r in w.chunks_exact(COLS) {
            assert_eq!(gptq_row(8, r, &h), quantize(GgmlType::Q4_0, r));
        }
    }

    #[test]
    fn inverse_upper_factor_by_hand() {
        // A = [[4, 2], [2, 3]]: A^-1 = [[3, -2], [-2, 4]] / 8. U upper with
        // U^T U = A^-1: U00^2 = 3/8, U00 U01 = -2/8, U01^2 + U11^2 = 4/8.
        let u = inverse_upper_factor(vec![4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let u00 = 0.375f64.sqrt();
        let u01 = -0.25 / u00;
        let u11 = (0.5 - u01 * u01).sqrt();
        for (got, want) in u.iter().zip([u00, u01, 0.0, u11]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{u:?}");
        }
        assert!(inverse_upper_factor(vec![1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
