//! Fused CPU operations with hand-written backward passes, on burn's flex backend.
//!
//! burn's flex backend runs element-wise work on one thread, its GELU calls
//! libm's `erff` in the forward pass and again in the backward pass,
//! and under autodiff softmax and layer norm are decomposed into five to ten
//! differentiable element-wise operations each. On the training step of
//! MiniLM those took more time than the matrix products. These three
//! operations each make one parallel pass forward and one backward, with the
//! arithmetic of `lora_nn::kernels`, which the candle backend shares:
//!
//! - [`gelu`]: erf GELU (Abramowitz and Stegun's `erf`, within 5e-7 of libm's
//!   and several times cheaper); the forward pass keeps `Phi(x)` for the backward pass.
//! - [`softmax`]: `softmax(scores * scale + bias)` over the last dimension, with
//!   attention's padding or causal bias computed in the same pass; only the scores
//!   get a gradient.
//! - [`FrozenLayerNorm`]: layer norm over the last dimension with frozen `gamma`, `beta`.
//!
//! They are written against burn's backend-extension API: a tensor is unwrapped
//! to its flex primitive (or to its autodiff primitive, whose node then records a
//! [`Backward`] step), computed on host slices, and wrapped again. A tensor on any
//! other backend is a programming error here (this crate only creates flex ones).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Shape, Tensor, TensorData};
use lora_core::init::CounterMask;
use lora_nn::attention_kernel::{Heads, attention_backward, attention_forward};
use lora_nn::kernels::{self, ScoreBias};
use lora_nn::sublayer::HostLinear;

/// The autodiff backend that `Device::flex().autodiff()` dispatches to.
pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;

/// A contiguous f32 copy (or view) of a flex tensor's elements, row-major.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("f32 tensor made contiguous")
}

pub(crate) fn flex(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// One fused operation: a forward pass that may keep a state, and a backward pass.
pub(crate) trait Fused: Clone + Send + Sync + std::fmt::Debug + 'static {
    type State: Clone + Send + std::fmt::Debug + 'static;

    /// The output, and the state for the backward pass when `keep` is true.
    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Self::State>);

    /// The gradient of the input from the gradient of the output.
    fn backward(&self, state: Self::State, grad: FlexTensor) -> FlexTensor;
}

#[derive(Debug)]
struct Step<F: Fused>(F);

impl<F: Fused> Backward<Flex, 1> for Step<F> {
    type State = F::State;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        if let [Some(parent)] = ops.parents {
            grads.register::<Flex>(parent.id, self.0.backward(ops.state, grad));
        }
    }
}

/// Runs `op` on a flex tensor, recording its backward step when the tensor is tracked.
pub(crate) fn apply<const D: usize, F: Fused>(x: Tensor<D>, op: F) -> Tensor<D> {
    if x.is_autodiff() {
        let x = x
            .try_into_primitive::<Ad>()
            .expect("burn backend tensors live on the flex device");
        let out = match Step(op.clone())
            .prepare::<NoCheckpointing>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, state) = op.forward(x.primitive(), true);
                prep.finish(state.expect("state kept on request"), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(op.forward(x.primitive(), false).0),
        };
        Tensor::from_primitive::<Ad>(out)
    } else {
        Tensor::from_primitive::<Flex>(op.forward(&flex_of(x), false).0)
    }
}

/// The flex primitive of a plain (not autodiff) tensor.
pub(crate) fn flex_of<const D: usize>(t: Tensor<D>) -> FlexTensor {
    t.try_into_primitive::<Flex>()
        .expect("burn backend tensors live on the flex device")
}

/// The flex primitive of a tensor autodiff does not track (a frozen weight).
pub(crate) fn untracked<const D: usize>(t: Tensor<D>) -> FlexTensor {
    if t.is_autodiff() {
        t.try_into_primitive::<Ad>()
            .expect("burn backend tensors live on the flex device")
            .primitive()
            .clone()
    } else {
        flex_of(t)
    }
}

/// `x W^T + b` for a frozen `W [out, in]` and bias over `x [..., in]`, by one
/// gemm call on the slices (`lora_nn::matmul`, the products candle's backend
/// runs): burn's `linear` zeroed its output, copied the transposed weight and
/// added the bias in a separate binary op. The backward pass gives `dy W`.
pub fn frozen_linear<const D: usize>(x: Tensor<D>, weight: Tensor<D>, bias: Option<Tensor<D>>) -> Tensor<D> {
    apply(x, FrozenLinear::new(weight, bias))
}

/// A frozen linear layer's weight and bias as host values, for the fused steps.
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    /// `[out, in]` (with leading ones), contiguous f32.
    weight: FlexTensor,
    bias: Option<Arc<Vec<f32>>>,
}

impl FrozenLinear {
    pub fn new<const D: usize>(weight: Tensor<D>, bias: Option<Tensor<D>>) -> Self {
        Self {
            weight: contiguous(&untracked(weight)),
            bias: bias.map(|b| Arc::new(slice(&contiguous(&untracked(b))).to_vec())),
        }
    }

    /// `(out, in)`.
    fn dims(&self) -> (usize, usize) {
        let shape = self.weight.layout().shape();
        let rank = shape.num_dims();
        (shape[rank - 2], shape[rank - 1])
    }

    /// The layer as host slices (`lora_nn::sublayer::HostLinear`).
    pub(crate) fn host(&self) -> HostLinear<'_> {
        let (out, inp) = self.dims();
        HostLinear {
            w: slice(&self.weight),
            b: self.bias.as_deref().map(|b| &b[..]),
            out,
            inp,
        }
    }
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: &Shape, last: usize) -> Shape {
    let mut dims = shape.to_vec();
    if let Some(l) = dims.last_mut() {
        *l = last;
    }
    Shape::from(dims)
}

impl Fused for FrozenLinear {
    /// The output's gradient alone gives the input's.
    type State = ();

    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Self::State>) {
        let x = contiguous(x);
        let (out, inp) = self.dims();
        let xs = slice(&x);
        let rows = xs.len() / inp.max(1);
        assert_eq!(
            rows * inp,
            xs.len(),
            "frozen linear of [{out}, {inp}] on {:?}",
            x.layout().shape()
        );
        let y = self.host().forward(xs, rows);
        (flex(y, with_last(x.layout().shape(), out)), keep.then_some(()))
    }

    fn backward(&self, _state: (), grad: FlexTensor) -> FlexTensor {
        let g = contiguous(&grad);
        let (out, inp) = self.dims();
        let gs = slice(&g);
        let rows = gs.len() / out.max(1);
        let dx = self.host().input_grad(gs, rows);
        flex(dx, with_last(g.layout().shape(), inp))
    }
}

/// Exact (erf) GELU, `x * Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, Hugging Face's `"gelu"`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    apply(x, Gelu)
}

#[derive(Debug, Clone)]
struct Gelu;

impl Fused for Gelu {
    /// The input and `Phi(input)`.
    type State = (FlexTensor, Arc<Vec<f32>>);

    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Self::State>) {
        let x = contiguous(x);
        let xs = slice(&x);
        let mut y = vec![0f32; xs.len()];
        let mut cdf = if keep { vec![0f32; xs.len()] } else { Vec::new() };
        kernels::gelu_forward(xs, &mut y, keep.then_some(cdf.as_mut_slice()));
        let shape = x.layout().shape().clone();
        let state = keep.then(|| (x, Arc::new(cdf)));
        (flex(y, shape), state)
    }

    fn backward(&self, (x, cdf): Self::State, grad: FlexTensor) -> FlexTensor {
        let g = contiguous(&grad);
        let mut dx = vec![0f32; slice(&x).len()];
        kernels::gelu_backward(slice(&x), Some(&cdf), slice(&g), &mut dx);
        flex(dx, x.layout().shape().clone())
    }
}

/// The additive bias of [`softmax`]'s scores (see `lora_nn::kernels::ScoreBias`).
#[derive(Debug, Clone)]
pub enum Bias {
    None,
    /// `[batch * keys]`, one row of keys per sequence (0, or -1e9 for padding).
    Keys(Arc<Vec<f32>>),
    /// -1e9 where a key lies after its query.
    Causal,
}

/// `softmax(x * scale + bias)` over the last dimension: attention's scores with
/// their mask in one pass (and plain softmax with no bias and unit scale).
pub fn softmax<const D: usize>(x: Tensor<D>, bias: Bias, scale: f32) -> Tensor<D> {
    apply(x, Softmax { bias, scale })
}

#[derive(Debug, Clone)]
struct Softmax {
    bias: Bias,
    scale: f32,
}

impl Fused for Softmax {
    /// The output probabilities.
    type State = FlexTensor;

    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Self::State>) {
        let x = contiguous(x);
        let shape = x.layout().shape().clone();
        let rank = shape.num_dims();
        let k = shape[rank - 1];
        let bias = match &self.bias {
            Bias::None => ScoreBias::None,
            Bias::Keys(b) => ScoreBias::Keys(b),
            Bias::Causal => ScoreBias::Causal {
                queries: if rank > 1 { shape[rank - 2] } else { 1 },
            },
        };
        let mut y = vec![0f32; slice(&x).len()];
        kernels::softmax_forward(slice(&x), k, self.scale, bias, &mut y);
        let y = flex(y, shape);
        let state = keep.then(|| y.clone());
        (y, state)
    }

    fn backward(&self, y: Self::State, grad: FlexTensor) -> FlexTensor {
        let shape = y.layout().shape().clone();
        let g = contiguous(&grad);
        let mut dx = vec![0f32; slice(&y).len()];
        kernels::softmax_backward(slice(&y), slice(&g), shape[shape.num_dims() - 1], self.scale, &mut dx);
        flex(dx, shape)
    }
}

/// Layer norm over the last dimension whose `gamma` and `beta` are frozen host copies.
#[derive(Debug, Clone)]
pub struct FrozenLayerNorm {
    pub(crate) gamma: Arc<Vec<f32>>,
    pub(crate) beta: Arc<Vec<f32>>,
    pub(crate) eps: f32,
}

impl FrozenLayerNorm {
    pub fn new(gamma: Vec<f32>, beta: Vec<f32>, eps: f64) -> Self {
        assert_eq!(gamma.len(), beta.len(), "layer norm gamma and beta differ in length");
        Self {
            gamma: Arc::new(gamma),
            beta: Arc::new(beta),
            eps: eps as f32,
        }
    }

    pub fn len(&self) -> usize {
        self.gamma.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gamma.is_empty()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        apply(x, self.clone())
    }
}

impl Fused for FrozenLayerNorm {
    /// The input.
    type State = FlexTensor;

    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Self::State>) {
        let x = contiguous(x);
        let shape = x.layout().shape().clone();
        assert_eq!(shape[shape.num_dims() - 1], self.gamma.len(), "layer norm width");
        let mut y = vec![0f32; slice(&x).len()];
        kernels::layer_norm_forward(slice(&x), &self.gamma, &self.beta, self.eps, &mut y);
        (flex(y, shape), keep.then_some(x))
    }

    fn backward(&self, x: Self::State, grad: FlexTensor) -> FlexTensor {
        let g = contiguous(&grad);
        let mut dx = vec![0f32; slice(&x).len()];
        kernels::layer_norm_backward(slice(&x), &self.gamma, self.eps, slice(&g), &mut dx);
        flex(dx, x.layout().shape().clone())
    }
}

/// `layer_norm(a + b)` (a residual sum and its norm) with `norm`'s frozen affine,
/// one pass each way without the sum ever stored, as the candle backend fuses
/// it: composed, the sum was a separate pass and buffer. Both inputs get the
/// same gradient.
pub fn add_layer_norm<const D: usize>(a: Tensor<D>, b: Tensor<D>, norm: &FrozenLayerNorm) -> Tensor<D> {
    let forward = |a: &FlexTensor, b: &FlexTensor| {
        let shape = a.layout().shape().clone();
        assert_eq!(shape, *b.layout().shape(), "residual sum of two shapes");
        assert_eq!(shape[shape.num_dims() - 1], norm.gamma.len(), "layer norm width");
        let mut y = vec![0f32; slice(a).len()];
        kernels::add_layer_norm_forward(slice(a), slice(b), &norm.gamma, &norm.beta, norm.eps, &mut y);
        flex(y, shape)
    };
    if a.is_autodiff() || b.is_autodiff() {
        let prim = |x: Tensor<D>| {
            x.autodiff()
                .try_into_primitive::<Ad>()
                .expect("burn backend tensors live on the flex device")
        };
        let (a, b) = (prim(a), prim(b));
        let out = match AddLayerNormStep(norm.clone())
            .prepare::<NoCheckpointing>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (a, b) = (contiguous(a.primitive()), contiguous(b.primitive()));
                let y = forward(&a, &b);
                prep.finish((a, b), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&contiguous(a.primitive()), &contiguous(b.primitive()))),
        };
        Tensor::from_primitive::<Ad>(out)
    } else {
        let (a, b) = (contiguous(&flex_of(a)), contiguous(&flex_of(b)));
        Tensor::from_primitive::<Flex>(forward(&a, &b))
    }
}

#[derive(Debug)]
struct AddLayerNormStep(FrozenLayerNorm);

impl Backward<Flex, 2> for AddLayerNormStep {
    /// The contiguous inputs.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (a, b) = ops.state;
        let norm = &self.0;
        let mut dx = vec![0f32; slice(&a).len()];
        kernels::add_layer_norm_backward(slice(&a), slice(&b), &norm.gamma, norm.eps, slice(&g), &mut dx);
        let shape = a.layout().shape().clone();
        let [pa, pb] = ops.parents;
        for parent in [pa, pb].into_iter().flatten() {
            grads.register::<Flex>(parent.id, flex(dx.clone(), shape.clone()));
        }
    }
}

/// Multi-head attention on the linears' outputs (`lora_nn::attention_kernel`, as
/// the candle backend runs it): `q [.., batch * queries, heads * head_dim]`, `k`,
/// `v [.., batch * keys, kv_heads * head_dim]`, the context shaped like `q`.
pub fn attention<const D: usize>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, op: Attention) -> Tensor<D> {
    if q.is_autodiff() || k.is_autodiff() || v.is_autodiff() {
        let prim = |x: Tensor<D>| {
            x.autodiff()
                .try_into_primitive::<Ad>()
                .expect("burn backend tensors live on the flex device")
        };
        let (q, k, v) = (prim(q), prim(k), prim(v));
        let out = match AttentionStep(op.clone())
            .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (
                    contiguous(q.primitive()),
                    contiguous(k.primitive()),
                    contiguous(v.primitive()),
                );
                let (y, probs) = op.forward(&q, &k, &v, true);
                prep.finish((q, k, v, Arc::new(probs)), y)
            }
            OpsKind::UnTracked(prep) => {
                let (q, k, v) = (
                    contiguous(q.primitive()),
                    contiguous(k.primitive()),
                    contiguous(v.primitive()),
                );
                prep.finish(op.forward(&q, &k, &v, false).0)
            }
        };
        Tensor::from_primitive::<Ad>(out)
    } else {
        let prim = |x: Tensor<D>| contiguous(&flex_of(x));
        let (q, k, v) = (prim(q), prim(k), prim(v));
        Tensor::from_primitive::<Flex>(op.forward(&q, &k, &v, false).0)
    }
}

/// The geometry, scale and mask of one [`attention`] call.
#[derive(Debug, Clone)]
pub struct Attention {
    pub heads: Heads,
    pub scale: f32,
    pub bias: Bias,
    /// Dropout of the probabilities (training).
    pub dropout: Option<CounterMask>,
}

impl Attention {
    /// The context (shaped like `q`) and, when `keep` (a backward pass
    /// follows), the probabilities; empty otherwise.
    fn forward(&self, q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, keep: bool) -> (FlexTensor, Vec<f32>) {
        let h = self.heads;
        let bias = match &self.bias {
            Bias::None => ScoreBias::None,
            Bias::Keys(b) => ScoreBias::Keys(b),
            Bias::Causal => ScoreBias::Causal { queries: h.queries },
        };
        let mut out = vec![0f32; h.q_len()];
        let mut probs = keep.then(|| vec![0f32; h.probs_len()]);
        attention_forward(
            slice(q),
            slice(k),
            slice(v),
            h,
            self.scale,
            bias,
            self.dropout,
            probs.as_deref_mut(),
            &mut out,
        );
        let probs = probs.unwrap_or_default();
        (flex(out, q.layout().shape().clone()), probs)
    }
}

#[derive(Debug)]
struct AttentionStep(Attention);

impl Backward<Flex, 3> for AttentionStep {
    /// The contiguous inputs and the probabilities.
    type State = (FlexTensor, FlexTensor, FlexTensor, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (q, k, v, probs) = ops.state;
        let h = self.0.heads;
        let (mut dq, mut dk, mut dv) = (vec![0f32; h.q_len()], vec![0f32; h.kv_len()], vec![0f32; h.kv_len()]);
        attention_backward(
            slice(&q),
            slice(&k),
            slice(&v),
            &probs,
            slice(&g),
            h,
            self.0.scale,
            self.0.dropout,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let [pq, pk, pv] = ops.parents;
        for (parent, grad, like) in [(pq, dq, &q), (pk, dk, &k), (pv, dv, &v)] {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, flex(grad, like.layout().shape().clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::layer_norm;

    use super::*;

    fn t<const D: usize>(shape: [usize; D], seed: u64, autodiff: bool) -> Tensor<D> {
        let n = shape.iter().product();
        let v = lora_core::init::normal(1.5, n, &mut lora_core::init::rng(seed));
        let x = Tensor::from_data(TensorData::new(v, shape), &crate::device());
        if autodiff { x.autodiff().require_grad() } else { x }
    }

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
        let a: Vec<f32> = a.into_data().try_into_vec().unwrap();
        let b: Vec<f32> = b.into_data().try_into_vec().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// The residual sum and norm against burn's add then layer norm: values,
    /// and both inputs' gradients (untracked, one tracked, both tracked).
    #[test]
    fn add_layer_norm_matches_the_sum_then_the_norm() {
        let shape = [3, 5, 6];
        let (gamma, beta) = (
            lora_core::init::normal(1.0, 6, &mut lora_core::init::rng(7)),
            lora_core::init::normal(1.0, 6, &mut lora_core::init::rng(8)),
        );
        let norm = FrozenLayerNorm::new(gamma.clone(), beta.clone(), 1e-12);
        let g = Tensor::<1>::from_data(TensorData::new(gamma, [6]), &crate::device());
        let b = Tensor::<1>::from_data(TensorData::new(beta, [6]), &crate::device());
        let slow = |x: Tensor<3>, r: Tensor<3>| layer_norm(x + r, g.clone(), Some(b.clone()), 1e-12);
        close(
            add_layer_norm(t(shape, 1, false), t(shape, 2, false), &norm),
            slow(t(shape, 1, false), t(shape, 2, false)),
            1e-5,
        );
        let weights = t(shape, 3, false);
        for track_residual in [false, true] {
            let (xf, xs) = (t(shape, 1, true), t(shape, 1, true));
            let (rf, rs) = (t(shape, 2, track_residual), t(shape, 2, track_residual));
            let gf = (add_layer_norm(xf.clone(), rf.clone(), &norm) * weights.clone())
                .sum()
                .backward();
            let gs = (slow(xs.clone(), rs.clone()) * weights.clone()).sum().backward();
            close(xf.grad(&gf).unwrap(), xs.grad(&gs).unwrap(), 1e-4);
            if track_residual {
                close(rf.grad(&gf).unwrap(), rs.grad(&gs).unwrap(), 1e-4);
            }
        }
    }

    /// Forward and input gradient of a fused op against burn's composed ops.
    fn check<const D: usize>(
        shape: [usize; D],
        fast: impl Fn(Tensor<D>) -> Tensor<D>,
        slow: impl Fn(Tensor<D>) -> Tensor<D>,
        tol: f32,
    ) {
        close(fast(t(shape, 1, false)), slow(t(shape, 1, false)), tol);
        let weights = t(shape, 2, false);
        let (xf, xs) = (t(shape, 1, true), t(shape, 1, true));
        let gf = (fast(xf.clone()) * weights.clone()).sum().backward();
        let gs = (slow(xs.clone()) * weights).sum().backward();
        close(xf.grad(&gf).unwrap(), xs.grad(&gs).unwrap(), tol);
    }

    #[test]
    fn gelu_matches_burns_libm_gelu() {
        check([3, 5, 70_000], gelu, burn::tensor::activation::gelu, 1e-5);
    }

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let xs: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 1e-3).collect();
        let libm = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &crate::device()).erf();
        let libm: Vec<f32> = libm.into_data().try_into_vec().unwrap();
        for (x, want) in xs.iter().zip(libm) {
            assert!(
                (kernels::erf(*x) - want).abs() < 5e-7,
                "erf({x}): {} vs {want}",
                kernels::erf(*x)
            );
        }
    }

    #[test]
    fn softmax_with_padding_bias_matches_composed_ops() {
        // The second shape spans several parallel tasks, each starting inside a sequence;
        // the leading 1 is the rank-5 padding of `BurnOps`' tensors.
        for (b, h, q, k) in [(3, 2, 4, 5), (5, 3, 40, 64)] {
            let bias: Vec<f32> = (0..b * k)
                .map(|i| if i % k >= k - 1 - i / k % 3 { -1e9 } else { 0.0 })
                .collect();
            let bias_t = Tensor::<5>::from_data(TensorData::new(bias.clone(), [1, b, 1, 1, k]), &crate::device());
            let bias = Bias::Keys(Arc::new(bias));
            check(
                [1, b, h, q, k],
                |x| softmax(x, bias.clone(), 0.3),
                |x| burn::tensor::activation::softmax(x.mul_scalar(0.3) + bias_t.clone(), 4),
                1e-5,
            );
        }
    }

    #[test]
    fn causal_softmax_matches_composed_ops() {
        // Fewer queries than keys (a continuation): the last query sees every key.
        let (q, k) = (3, 5);
        let mask: Vec<f32> = (0..q)
            .flat_map(|i| (0..k).map(move |j| if j + q <= i + k { 0.0 } else { -1e9 }))
            .collect();
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [1, 1, q, k]), &crate::device());
        check(
            [2, 3, q, k],
            |x| softmax(x, Bias::Causal, 0.5),
            |x| burn::tensor::activation::softmax(x.mul_scalar(0.5) + mask.clone(), 3),
            1e-5,
        );
    }

    #[test]
    fn plain_softmax_matches_burns_softmax() {
        check(
            [7, 300],
            |x| softmax(x, Bias::None, 1.0),
            |x| burn::tensor::activation::softmax(x, 1),
            1e-5,
        );
    }

    #[test]
    fn layer_norm_matches_burns_layer_norm() {
        let gamma: Vec<f32> = (0..6).map(|i| 0.5 + i as f32 * 0.3).collect();
        let beta: Vec<f32> = (0..6).map(|i| i as f32 * 0.1 - 0.2).collect();
        let ln = FrozenLayerNorm::new(gamma.clone(), beta.clone(), 1e-12);
        let g = Tensor::<1>::from_data(TensorData::new(gamma, [6]), &crate::device());
        let b = Tensor::<1>::from_data(TensorData::new(beta, [6]), &crate::device());
        check(
            [4, 3, 6],
            |x| ln.forward(x),
            |x| layer_norm(x, g.clone(), Some(b.clone()), 1e-12),
            1e-4,
        );
    }

    #[test]
    fn untracked_autodiff_inputs_pass_through() {
        let x = t([2, 3], 1, false).autodiff();
        let y = gelu(x);
        assert!(y.is_autodiff() && !y.is_require_grad());
    }
}
