//! BERT's frozen sublayer ends as one autodiff step each (`lora_nn::sublayer`,
//! the passes the candle backend runs): the feed-forward sublayer, and the
//! attention's output projection with its dropout, residual sum and norm.
//! Composed, they were four to six steps, each with its own buffers and
//! gradient.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;
use lora_core::init::CounterMask;
use lora_nn::sublayer::{FeedForward, FeedForwardSaved, HostNorm, LinearAddNorm};

use crate::ops::{Ad, FrozenLayerNorm, FrozenLinear, Fused, apply, contiguous, flex, flex_of, slice};

fn host_norm(norm: &FrozenLayerNorm) -> HostNorm<'_> {
    HostNorm {
        gamma: &norm.gamma,
        beta: &norm.beta,
        eps: norm.eps,
    }
}

/// `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)`; the caller has checked the sizes.
pub fn feed_forward<const D: usize>(x: Tensor<D>, op: FeedForwardStep) -> Tensor<D> {
    apply(x, op)
}

#[derive(Debug, Clone)]
pub struct FeedForwardStep {
    pub up: FrozenLinear,
    pub down: FrozenLinear,
    pub norm: FrozenLayerNorm,
    pub dropout: Option<CounterMask>,
}

impl FeedForwardStep {
    fn host(&self) -> FeedForward<'_> {
        FeedForward {
            up: self.up.host(),
            down: self.down.host(),
            norm: host_norm(&self.norm),
            dropout: self.dropout,
        }
    }

    /// The rows of an input of `len` values, or why the sizes do not fit.
    pub fn rows(&self, len: usize) -> Result<usize, String> {
        self.host().rows(len).map_err(|e| e.0)
    }
}

/// What the backward step reads, shared (autodiff states are cloned).
#[derive(Clone)]
pub struct Saved(Arc<FeedForwardSaved>);

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedForwardSaved")
    }
}

impl Fused for FeedForwardStep {
    type State = Saved;

    fn forward(&self, x: &FlexTensor, keep: bool) -> (FlexTensor, Option<Saved>) {
        let x = contiguous(x);
        let (y, saved) = self
            .host()
            .forward(slice(&x), keep)
            .expect("sizes checked by the caller");
        (flex(y, x.layout().shape().clone()), saved.map(|s| Saved(Arc::new(s))))
    }

    fn backward(&self, state: Saved, grad: FlexTensor) -> FlexTensor {
        let g = contiguous(&grad);
        let dx = self
            .host()
            .backward(&state.0, slice(&g))
            .expect("sizes checked by the caller");
        flex(dx, g.layout().shape().clone())
    }
}

/// `layer_norm(dropout(x W^T + b) + residual)`; the caller has checked the sizes.
pub fn linear_add_norm<const D: usize>(x: Tensor<D>, residual: Tensor<D>, op: LinearAddNormStep) -> Tensor<D> {
    let out_shape = residual.shape();
    let forward = |x: &FlexTensor, r: &FlexTensor, keep: bool| {
        let (x, r) = (contiguous(x), contiguous(r));
        let (y, sum) = op
            .host()
            .forward(slice(&x), slice(&r), keep)
            .expect("sizes checked by the caller");
        (flex(y, r.layout().shape().clone()), sum)
    };
    if !(x.is_autodiff() || residual.is_autodiff()) {
        return Tensor::from_primitive::<Flex>(forward(&flex_of(x), &flex_of(residual), false).0);
    }
    let prim = |t: Tensor<D>| {
        t.autodiff()
            .try_into_primitive::<Ad>()
            .expect("burn backend tensors live on the flex device")
    };
    let (x, residual) = (prim(x), prim(residual));
    let in_shape = x.primitive().layout().shape().clone();
    let out = match op
        .clone()
        .prepare::<NoCheckpointing>([x.node(), residual.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, sum) = forward(x.primitive(), residual.primitive(), true);
            let sum = sum.expect("kept on request");
            prep.finish((Arc::new(sum), in_shape), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), residual.primitive(), false).0),
    };
    let y = Tensor::from_primitive::<Ad>(out);
    debug_assert_eq!(y.shape(), out_shape);
    y
}

#[derive(Debug, Clone)]
pub struct LinearAddNormStep {
    pub linear: FrozenLinear,
    pub norm: FrozenLayerNorm,
    pub dropout: Option<CounterMask>,
}

impl LinearAddNormStep {
    fn host(&self) -> LinearAddNorm<'_> {
        LinearAddNorm {
            linear: self.linear.host(),
            norm: host_norm(&self.norm),
            dropout: self.dropout,
        }
    }

    /// The rows of `x` and `residual` of these lengths, or why they do not fit.
    pub fn rows(&self, x: usize, residual: usize) -> Result<usize, String> {
        self.host().rows(x, residual).map_err(|e| e.0)
    }
}

impl Backward<Flex, 2> for LinearAddNormStep {
    /// The norm's input, and the shape of `x`.
    type State = (Arc<Vec<f32>>, burn::tensor::Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (sum, x_shape) = ops.state;
        let (dx, d_residual) = self
            .host()
            .backward(&sum, slice(&g))
            .expect("sizes checked by the caller");
        let [px, pr] = ops.parents;
        if let Some(px) = px {
            grads.register::<Flex>(px.id, flex(dx, x_shape));
        }
        if let Some(pr) = pr {
            grads.register::<Flex>(pr.id, flex(d_residual, g.layout().shape().clone()));
        }
    }
}
