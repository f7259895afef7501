//! Multi-head attention as one host kernel over every (sequence, head) pair,
//! shared by the backends like [`crate::kernels`].
//!
//! The projections are read where the linears wrote them, `[batch * seq,
//! heads * head_dim]`, through strides: no `[batch, heads, seq, head_dim]` copy
//! of the queries, keys, values or context is ever made, and none of their
//! gradients either. Each rayon task owns one sequence and one key/value head
//! and runs its small products single-threaded (gemm with no parallelism of
//! its own), so that the pool is synchronised once per pass instead of once
//! per head and product. The scores get their scale and mask and become
//! probabilities in place, with the arithmetic of [`crate::kernels::softmax_forward`].
//!
//! Attention dropout (training) multiplies the probabilities by a counter-based
//! mask ([`CounterMask`]) indexed as `[batch, heads, queries, keys]`: it is
//! evaluated where the products need it, in both passes, and never stored; the
//! probabilities kept for the backward pass are the undropped ones.

use gemm::{Parallelism, gemm};
use lora_core::init::CounterMask;
use rayon::prelude::*;

use crate::kernels::{self, ScoreBias};
use crate::scratch;

/// The geometry of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    /// Key/value heads: `heads` for multi-head attention, fewer for grouped-query attention.
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Values in `q` (and the output): `[batch * queries, heads * head_dim]`.
    pub fn q_len(&self) -> usize {
        self.batch * self.queries * self.heads * self.head_dim
    }

    /// Values in `k` and `v`: `[batch * keys, kv_heads * head_dim]`.
    pub fn kv_len(&self) -> usize {
        self.batch * self.keys * self.kv_heads * self.head_dim
    }

    /// Values in the probabilities `[batch, heads, queries, keys]`.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.queries * self.keys
    }

    /// Whether the geometry is usable (no empty dimension, heads grouped evenly).
    pub fn valid(&self) -> bool {
        self.batch > 0
            && self.queries > 0
            && self.keys > 0
            && self.head_dim > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
    }
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only the rows and columns of its own (sequence, head).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `offset` values in (a method, so that closures capture the whole `Shared`).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) rhs (k x n)`, single-threaded, strides as
/// (row, column) pairs in values.
///
/// # Safety
/// Every pointer must address a matrix of its shape and strides.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_s: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_s: (usize, usize),
    rhs: *const f32,
    rhs_s: (usize, usize),
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            dst_s.1 as isize,
            dst_s.0 as isize,
            accumulate,
            lhs,
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs,
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Scale and bias of one row of scores in place, as `kernels::softmax_forward` computes them.
fn scale_row(row: &mut [f32], scale: f32, bias: impl Fn(usize) -> f32) {
    for (j, d) in row.iter_mut().enumerate() {
        *d = *d * scale + bias(j);
    }
}

/// `out = dropout(softmax(q k^T * scale + bias)) v` per head. The
/// probabilities (before dropout) go to `probs` when given (`[batch, heads,
/// queries, keys]`), which the backward pass reads; without it (evaluation,
/// `predict`, a checkpointed block's first pass) each task's probabilities live
/// in a scratch buffer of its own, in cache, and no such buffer (25 MiB a layer
/// at 32 x 128 on MiniLM) is allocated and zeroed. The same values either way.
/// A `Keys` bias holds `[batch * keys]` values.
///
/// Panics when a slice's length does not match `s`: callers check the shapes first.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: Heads,
    scale: f32,
    bias: ScoreBias<'_>,
    dropout: Option<CounterMask>,
    probs: Option<&mut [f32]>,
    out: &mut [f32],
) {
    assert!(s.valid(), "attention geometry {s:?}");
    assert!(
        q.len() == s.q_len() && out.len() == s.q_len(),
        "attention queries of {s:?}"
    );
    assert!(
        k.len() == s.kv_len() && v.len() == s.kv_len(),
        "attention keys of {s:?}"
    );
    if let Some(p) = &probs {
        assert_eq!(p.len(), s.probs_len(), "attention probabilities of {s:?}");
    }
    if let ScoreBias::Keys(b) = bias {
        assert_eq!(b.len(), s.batch * s.keys, "attention bias must be [batch * keys]");
    }
    let (d, group) = (s.head_dim, s.group());
    let (qs, ks) = (s.heads * d, s.kv_heads * d);
    let plane = s.queries * s.keys;
    let out = Shared(out.as_mut_ptr());
    // Added to every row of scores without a mask (`x * scale + 0`, as masked rows compute).
    let no_bias = match bias {
        ScoreBias::None => vec![0f32; s.keys],
        _ => Vec::new(),
    };
    let task = |task: usize, p: &mut [f32]| {
        let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
        let k0 = &k[b * s.keys * ks + kvh * d..];
        let v0 = &v[b * s.keys * ks + kvh * d..];
        // The dropped probabilities of one head, when there is dropout.
        let mut dropped = scratch::take(if dropout.is_some() { plane } else { 0 });
        for (g, p) in p.chunks_exact_mut(plane).enumerate() {
            let h = kvh * group + g;
            let q0 = &q[b * s.queries * qs + h * d..];
            // SAFETY: the views stay inside q, k, v and this head's probabilities;
            // the output block (rows of sequence b, columns of head h) is this task's alone.
            unsafe {
                product(
                    (s.queries, s.keys, d),
                    p.as_mut_ptr(),
                    (s.keys, 1),
                    false,
                    q0.as_ptr(),
                    (qs, 1),
                    k0.as_ptr(),
                    (1, ks),
                );
            }
            match bias {
                ScoreBias::None => kernels::scale_add_rows(p, scale, &no_bias),
                ScoreBias::Keys(bias) => kernels::scale_add_rows(p, scale, &bias[b * s.keys..][..s.keys]),
                ScoreBias::Causal { .. } => {
                    for (i, row) in p.chunks_exact_mut(s.keys).enumerate() {
                        scale_row(row, scale, |j| if j + s.queries <= i + s.keys { 0.0 } else { -1e9 })
                    }
                }
            }
            kernels::normalise_exp_rows(p, s.keys);
            let p: &[f32] = match dropout {
                Some(mask) => {
                    mask.scale_into(((b * s.heads + h) * plane) as u64, p, &mut dropped);
                    &dropped
                }
                None => p,
            };
            unsafe {
                product(
                    (s.queries, d, s.keys),
                    out.at(b * s.queries * qs + h * d),
                    (qs, 1),
                    false,
                    p.as_ptr(),
                    (s.keys, 1),
                    v0.as_ptr(),
                    (ks, 1),
                );
            }
        }
    };
    match probs {
        Some(probs) => probs
            .par_chunks_mut(group * plane)
            .enumerate()
            .for_each(|(t, p)| task(t, p)),
        None => (0..s.batch * s.kv_heads)
            .into_par_iter()
            .for_each_init(|| vec![0f32; group * plane], |p, t| task(t, p)),
    }
}

/// The gradients of `q`, `k` and `v` from the output's gradient `g` and the
/// forward pass's probabilities (shapes as in [`attention_forward`]), with the
/// forward pass's dropout mask drawn again.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    g: &[f32],
    s: Heads,
    scale: f32,
    dropout: Option<CounterMask>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    assert!(s.valid(), "attention geometry {s:?}");
    assert!(q.len() == s.q_len() && g.len() == s.q_len() && dq.len() == s.q_len());
    assert!(k.len() == s.kv_len() && v.len() == s.kv_len() && dk.len() == s.kv_len() && dv.len() == s.kv_len());
    assert_eq!(probs.len(), s.probs_len());
    let (d, group) = (s.head_dim, s.group());
    let (qs, ks) = (s.heads * d, s.kv_heads * d);
    let plane = s.queries * s.keys;
    let (dq, dk, dv) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    (0..s.batch * s.kv_heads).into_par_iter().for_each(|task| {
        let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
        let kv_off = b * s.keys * ks + kvh * d;
        // Both written in full before they are read (the product, the masked copy).
        let mut ds = scratch::take(plane);
        let mut dropped = scratch::take(if dropout.is_some() { plane } else { 0 });
        for g_i in 0..group {
            let h = kvh * group + g_i;
            let q_off = b * s.queries * qs + h * d;
            let start = ((b * s.heads + h) * plane) as u64;
            let p = &probs[(b * s.heads + h) * plane..][..plane];
            // What multiplied v in the forward pass.
            let pd: &[f32] = match dropout {
                Some(mask) => {
                    mask.scale_into(start, p, &mut dropped);
                    &dropped
                }
                None => p,
            };
            let accumulate = g_i > 0;
            // SAFETY: as in the forward pass; the dq block of (b, h) and the dk, dv
            // blocks of (b, kvh) belong to this task alone.
            unsafe {
                // dv = pd^T g
                product(
                    (s.keys, d, s.queries),
                    dv.at(kv_off),
                    (ks, 1),
                    accumulate,
                    pd.as_ptr(),
                    (1, s.keys),
                    g[q_off..].as_ptr(),
                    (qs, 1),
                );
                // dp = g v^T
                product(
                    (s.queries, s.keys, d),
                    ds.as_mut_ptr(),
                    (s.keys, 1),
                    false,
                    g[q_off..].as_ptr(),
                    (qs, 1),
                    v[kv_off..].as_ptr(),
                    (1, ks),
                );
            }
            // Through the dropout: dp = d(pd) * mask.
            if let Some(mask) = dropout {
                mask.apply(start, &mut ds);
            }
            // ds = scale * p * (dp - sum(dp * p)), as kernels::softmax_backward.
            kernels::softmax_backward_rows(p, &mut ds, s.keys, scale);
            unsafe {
                // dq = ds k
                product(
                    (s.queries, d, s.keys),
                    dq.at(q_off),
                    (qs, 1),
                    false,
                    ds.as_ptr(),
                    (s.keys, 1),
                    k[kv_off..].as_ptr(),
                    (ks, 1),
                );
                // dk = ds^T q
                product(
                    (s.keys, d, s.queries),
                    dk.at(kv_off),
                    (ks, 1),
                    accumulate,
                    ds.as_ptr(),
                    (1, s.keys),
                    q[q_off..].as_ptr(),
                    (qs, 1),
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The reference: every head by plain loops in f64.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: Heads,
        scale: f64,
        bias: &[f64],
        dropout: Option<CounterMask>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (d, group) = (s.head_dim, s.heads / s.kv_heads);
        let (qs, ks) = (s.heads * d, s.kv_heads * d);
        let mut out = vec![0f64; s.q_len()];
        let mut probs = vec![0f64; s.probs_len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kvh = h / group;
                for i in 0..s.queries {
                    let mut row: Vec<f64> = (0..s.keys)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| {
                                    q[(b * s.queries + i) * qs + h * d + c] as f64
                                        * k[(b * s.keys + j) * ks + kvh * d + c] as f64
                                })
                                .sum();
                            dot * scale + bias[b * s.keys + j]
                        })
                        .collect();
                    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    row.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f64 = row.iter().sum();
                    row.iter_mut().for_each(|x| *x /= sum);
                    let at = ((b * s.heads + h) * s.queries + i) * s.keys;
                    let m = |j: usize| dropout.map_or(1.0, |m| m.factor((at + j) as u64) as f64);
                    for c in 0..d {
                        out[(b * s.queries + i) * qs + h * d + c] = (0..s.keys)
                            .map(|j| row[j] * m(j) * v[(b * s.keys + j) * ks + kvh * d + c] as f64)
                            .sum();
                    }
                    probs[((b * s.heads + h) * s.queries + i) * s.keys..][..s.keys].copy_from_slice(&row);
                }
            }
        }
        (out, probs)
    }

    fn shapes() -> [Heads; 2] {
        [
            Heads {
                batch: 2,
                queries: 5,
                keys: 5,
                heads: 3,
                kv_heads: 3,
                head_dim: 4,
            },
            Heads {
                batch: 2,
                queries: 3,
                keys: 6,
                heads: 4,
                kv_heads: 2,
                head_dim: 3,
            },
        ]
    }

    #[test]
    fn forward_matches_the_loops_with_padding_and_grouped_heads() {
        for s in shapes() {
            let (q, k, v) = (sample(s.q_len(), 1), sample(s.kv_len(), 2), sample(s.kv_len(), 3));
            // The second sequence's last key is padding.
            let bias: Vec<f32> = (0..s.batch * s.keys)
                .map(|i| if i == s.batch * s.keys - 1 { -1e9 } else { 0.0 })
                .collect();
            let (mut probs, mut out) = (vec![0.0; s.probs_len()], vec![0.0; s.q_len()]);
            for dropout in [None, CounterMask::new(11, 0.3)] {
                attention_forward(
                    &q,
                    &k,
                    &v,
                    s,
                    0.5,
                    ScoreBias::Keys(&bias),
                    dropout,
                    Some(&mut probs),
                    &mut out,
                );
                let bias64: Vec<f64> = bias.iter().map(|&b| b as f64).collect();
                let (want, want_p) = naive(&q, &k, &v, s, 0.5, &bias64, dropout);
                for (a, b) in out.iter().zip(&want).chain(probs.iter().zip(&want_p)) {
                    assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
                }
                // Without kept probabilities: the same context, bit for bit.
                let mut context = vec![0.0; s.q_len()];
                attention_forward(&q, &k, &v, s, 0.5, ScoreBias::Keys(&bias), dropout, None, &mut context);
                assert_eq!(out, context);
            }
        }
    }

    #[test]
    fn attention_dropout_drops_probabilities_not_rows() {
        let s = shapes()[0];
        let (q, k, v) = (sample(s.q_len(), 21), sample(s.kv_len(), 22), sample(s.kv_len(), 23));
        let run = |dropout| {
            let (mut p, mut o) = (vec![0.0; s.probs_len()], vec![0.0; s.q_len()]);
            attention_forward(&q, &k, &v, s, 0.5, ScoreBias::None, dropout, Some(&mut p), &mut o);
            (p, o)
        };
        let (p0, o0) = run(None);
        let (p1, o1) = run(CounterMask::new(3, 0.5));
        // The kept probabilities are the undropped ones; the output changes.
        assert_eq!(p0, p1);
        assert_ne!(o0, o1);
    }

    #[test]
    fn causal_rows_see_only_earlier_keys() {
        let s = shapes()[0];
        let (q, k, v) = (sample(s.q_len(), 4), sample(s.kv_len(), 5), sample(s.kv_len(), 6));
        let (mut probs, mut out) = (vec![0.0; s.probs_len()], vec![0.0; s.q_len()]);
        attention_forward(
            &q,
            &k,
            &v,
            s,
            1.0,
            ScoreBias::Causal { queries: s.queries },
            None,
            Some(&mut probs),
            &mut out,
        );
        for (r, row) in probs.chunks(s.keys).enumerate() {
            let i = r % s.queries;
            assert!(row[i + 1..].iter().all(|&p| p == 0.0), "row {r}");
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn backward_matches_central_differences() {
        for (s, dropout) in shapes()
            .into_iter()
            .flat_map(|s| [(s, None), (s, CounterMask::new(5, 0.25))])
        {
            let (q, k, v) = (sample(s.q_len(), 7), sample(s.kv_len(), 8), sample(s.kv_len(), 9));
            let g = sample(s.q_len(), 10);
            let scale = 0.7;
            let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                let (mut p, mut o) = (vec![0.0; s.probs_len()], vec![0.0; s.q_len()]);
                attention_forward(q, k, v, s, scale, ScoreBias::None, dropout, Some(&mut p), &mut o);
                o.iter().zip(&g).map(|(o, g)| (*o as f64) * (*g as f64)).sum()
            };
            let (mut p, mut o) = (vec![0.0; s.probs_len()], vec![0.0; s.q_len()]);
            attention_forward(&q, &k, &v, s, scale, ScoreBias::None, dropout, Some(&mut p), &mut o);
            let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
            attention_backward(&q, &k, &v, &p, &g, s, scale, dropout, &mut dq, &mut dk, &mut dv);
            let h = 1e-2f32;
            for which in 0..3 {
                let (x, dx) = match which {
                    0 => (&q, &dq),
                    1 => (&k, &dk),
                    _ => (&v, &dv),
                };
                for i in 0..x.len() {
                    let (mut a, mut b) = (x.clone(), x.clone());
                    a[i] += h;
                    b[i] -= h;
                    let f = |x: &[f32]| match which {
                        0 => loss(x, &k, &v),
                        1 => loss(&q, x, &v),
                        _ => loss(&q, &k, x),
                    };
                    let numeric = (f(&a) - f(&b)) / (2.0 * h as f64);
                    assert!(
                        (dx[i] as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                        "input {which}, element {i}: {} vs {numeric}",
                        dx[i]
                    );
                }
            }
        }
    }
}
