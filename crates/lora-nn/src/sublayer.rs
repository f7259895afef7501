//! BERT's post-norm sublayer ends over frozen linears, each one pass each way
//! on host slices, for the backends' fused operations:
//!
//! - [`FeedForward`]: `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)`;
//! - [`LinearAddNorm`]: `layer_norm(dropout(x W^T + b) + residual)`, the
//!   attention's output projection and norm.
//!
//! Composed, each is four to six nodes of an autodiff graph, and candle starts
//! every node's gradient as a fresh zero tensor it then adds into: at 32 x 128
//! the feed-forward's nodes alone cost a zeroing and an addition pass over
//! 68 MiB per layer. Fused, the intermediate gradients live in this module's
//! buffers, the bias and GELU are one pass, and the residual's gradient is
//! added into the input's here. Every value is computed by the same operations
//! in the same order as the composition (`ops::TensorOps`'s defaults): the
//! results are bit for bit the composed ones, which the tests check.

use lora_core::init::CounterMask;

use crate::kernels;
use crate::matmul::{Mat, product};
use crate::scratch::{self, Scratch};

/// A frozen linear's host values: `w [out, in]` and `b [out]`.
#[derive(Clone, Copy)]
pub struct HostLinear<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub out: usize,
    pub inp: usize,
}

impl HostLinear<'_> {
    /// `x W^T` for `x [rows, in]`, without the bias.
    fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        product(
            rows,
            self.out,
            self.inp,
            Mat::rows(x, self.inp),
            Mat::transposed(self.w, self.inp),
            1.0,
        )
    }

    /// `x W^T + b` for `x [rows, in]`: one gemm on the slices themselves, the
    /// bias added after in a parallel pass (after, not as gemm's initial
    /// destination: the sum's rounding stays that of the product plus the bias).
    /// Both backends' frozen linears run this. Panics when `x` is shorter than
    /// its shape (callers check the shapes first).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = self.product(x, rows);
        if let Some(b) = self.b {
            kernels::add_rows(&mut y, b);
        }
        y
    }

    /// `dy W`: the input's gradient from the output's `dy [rows, out]`.
    pub fn input_grad(&self, dy: &[f32], rows: usize) -> Vec<f32> {
        product(
            rows,
            self.inp,
            self.out,
            Mat::rows(dy, self.out),
            Mat::rows(self.w, self.inp),
            1.0,
        )
    }

    /// Whether the weight and bias hold `[out, in]` and `[out]` values.
    fn fits(&self) -> bool {
        self.w.len() == self.out * self.inp && self.b.is_none_or(|b| b.len() == self.out)
    }
}

/// A layer norm's frozen affine.
#[derive(Clone, Copy)]
pub struct HostNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// `src * mask` into a reused buffer, the same values as `CounterMask::apply` on a copy.
fn masked_copy(src: &[f32], mask: CounterMask) -> Scratch {
    let mut out = scratch::take(src.len());
    kernels::masked_copy_into(mask, src, &mut out);
    out
}

/// The norm's input `sum = dropout(y + bias) + residual` (`y` is overwritten)
/// and its output, in one pass of row blocks.
fn add_norm(
    mut y: Vec<f32>,
    bias: Option<&[f32]>,
    residual: &[f32],
    mask: Option<CounterMask>,
    norm: HostNorm,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; y.len()];
    let affine = (norm.gamma, norm.beta, norm.eps);
    kernels::bias_dropout_add_layer_norm(&mut y, bias, mask, residual, affine, &mut out);
    (out, y)
}

/// The gradient at the norm's input (the residual's) and, with dropout, at the
/// dropout's input; without dropout that is the same gradient, and no copy of
/// it is made (`None`: read the first).
fn add_norm_backward(sum: &[f32], g: &[f32], mask: Option<CounterMask>, norm: HostNorm) -> (Vec<f32>, Option<Scratch>) {
    let mut d_sum = vec![0f32; sum.len()];
    kernels::layer_norm_backward(sum, norm.gamma, norm.eps, g, &mut d_sum);
    let d_y = mask.map(|mask| masked_copy(&d_sum, mask));
    (d_sum, d_y)
}

/// Why a fused sublayer refused its inputs.
#[derive(Debug)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)` over `x [rows, hidden]`.
#[derive(Clone, Copy)]
pub struct FeedForward<'a> {
    pub up: HostLinear<'a>,
    pub down: HostLinear<'a>,
    pub norm: HostNorm<'a>,
    pub dropout: Option<CounterMask>,
}

/// What [`FeedForward::backward`] reads: GELU's input and the norm's input.
pub struct FeedForwardSaved {
    pre_activation: Vec<f32>,
    sum: Vec<f32>,
}

impl FeedForward<'_> {
    /// The number of rows of `x`, or why the sizes do not fit together.
    pub fn rows(&self, x: usize) -> Result<usize, ShapeError> {
        let (up, down, n) = (&self.up, &self.down, self.norm.gamma.len());
        let hidden = up.inp;
        if !up.fits()
            || !down.fits()
            || down.inp != up.out
            || down.out != hidden
            || n != hidden
            || self.norm.beta.len() != n
            || hidden == 0
            || !x.is_multiple_of(hidden)
        {
            return Err(ShapeError(format!(
                "feed-forward of [{}, {}] then [{}, {}] with a norm of {n} on {x} values",
                up.out, up.inp, down.out, down.inp
            )));
        }
        Ok(x / hidden)
    }

    /// The output, and what the backward pass reads when `keep`.
    pub fn forward(&self, x: &[f32], keep: bool) -> Result<(Vec<f32>, Option<FeedForwardSaved>), ShapeError> {
        let rows = self.rows(x.len())?;
        let mut pre = self.up.product(x, rows);
        if !keep {
            // Nothing reads the pre-activation later: GELU in place, no second
            // 25 MiB buffer (at 32 x 128 on MiniLM) to allocate and zero.
            kernels::bias_gelu_in_place(&mut pre, self.up.b);
            let y = self.down.product(&pre, rows);
            return Ok((add_norm(y, self.down.b, x, self.dropout, self.norm).0, None));
        }
        // Written in full by the GELU pass; reused from one layer to the next.
        let mut act = scratch::take(pre.len());
        match self.up.b {
            Some(b) => kernels::bias_gelu_forward(&mut pre, b, &mut act),
            None => kernels::gelu_forward(&pre, &mut act, None),
        }
        let y = self.down.product(&act, rows);
        drop(act);
        let (out, sum) = add_norm(y, self.down.b, x, self.dropout, self.norm);
        Ok((
            out,
            keep.then_some(FeedForwardSaved {
                pre_activation: pre,
                sum,
            }),
        ))
    }

    /// The input's gradient from the output's `g`: the norm's, through the
    /// dropout, the two linears and GELU, plus the residual's.
    pub fn backward(&self, saved: &FeedForwardSaved, g: &[f32]) -> Result<Vec<f32>, ShapeError> {
        let rows = self.rows(saved.sum.len())?;
        if g.len() != saved.sum.len() {
            return Err(ShapeError(format!(
                "{} gradient values for {}",
                g.len(),
                saved.sum.len()
            )));
        }
        let (d_sum, d_y) = add_norm_backward(&saved.sum, g, self.dropout, self.norm);
        let mut d_pre = self.down.input_grad(d_y.as_deref().unwrap_or(&d_sum), rows);
        drop(d_y);
        kernels::gelu_backward_in_place(&saved.pre_activation, &mut d_pre);
        let mut dx = self.up.input_grad(&d_pre, rows);
        kernels::add_into(&mut dx, &d_sum);
        Ok(dx)
    }
}

/// `layer_norm(dropout(x W^T + b) + residual)` over `x [rows, in]` and
/// `residual [rows, out]`.
#[derive(Clone, Copy)]
pub struct LinearAddNorm<'a> {
    pub linear: HostLinear<'a>,
    pub norm: HostNorm<'a>,
    pub dropout: Option<CounterMask>,
}

impl LinearAddNorm<'_> {
    /// The number of rows, or why the sizes do not fit together.
    pub fn rows(&self, x: usize, residual: usize) -> Result<usize, ShapeError> {
        let l = &self.linear;
        let n = self.norm.gamma.len();
        let rows = x / l.inp.max(1);
        if !l.fits()
            || n != l.out
            || self.norm.beta.len() != n
            || l.inp == 0
            || rows * l.inp != x
            || residual != rows * n
        {
            return Err(ShapeError(format!(
                "linear [{}, {}] + residual of {residual} values with a norm of {n} on {x} values",
                l.out, l.inp
            )));
        }
        Ok(rows)
    }

    /// The output, and the norm's input when `keep` (the backward pass's only need).
    pub fn forward(&self, x: &[f32], residual: &[f32], keep: bool) -> Result<(Vec<f32>, Option<Vec<f32>>), ShapeError> {
        let rows = self.rows(x.len(), residual.len())?;
        let y = self.linear.product(x, rows);
        let (out, sum) = add_norm(y, self.linear.b, residual, self.dropout, self.norm);
        Ok((out, keep.then_some(sum)))
    }

    /// The gradients of `x` and of the residual from the output's `g` and the kept norm input.
    pub fn backward(&self, sum: &[f32], g: &[f32]) -> Result<(Vec<f32>, Vec<f32>), ShapeError> {
        let rows = sum.len() / self.linear.out.max(1);
        if g.len() != sum.len() || rows * self.linear.out != sum.len() {
            return Err(ShapeError(format!("{} gradient values for {}", g.len(), sum.len())));
        }
        let (d_sum, d_y) = add_norm_backward(sum, g, self.dropout, self.norm);
        Ok((self.linear.input_grad(d_y.as_deref().unwrap_or(&d_sum), rows), d_sum))
    }
}
