//! BERT's frozen sublayer ends as one node of candle's graph each
//! (`lora_nn::sublayer`): the feed-forward sublayer and the attention's output
//! projection, each with its dropout, residual sum and layer norm. Composed,
//! every node's gradient is a fresh zero tensor that candle then adds into;
//! fused, only the input's (and the residual's) are.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use lora_core::init::CounterMask;
use lora_nn::sublayer::{FeedForward, FeedForwardSaved, HostNorm, LinearAddNorm};

use crate::linear_ops::Frozen;
use crate::ops::{contiguous_f32, inputs, with_f32, with_f32s};

/// A frozen norm's affine, copied out once per node.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: gamma.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            beta: beta.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            eps: eps as f32,
        })
    }

    fn host(&self) -> HostNorm<'_> {
        HostNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: self.eps,
        }
    }
}

fn shape_error(e: lora_nn::sublayer::ShapeError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("a fused sublayer's saved values were poisoned by a panic".into())
}

/// [`FeedForward`] as one node; what its backward pass reads is kept only
/// when a graph will hold the node.
struct FeedForwardOp {
    up: Frozen,
    down: Frozen,
    norm: Norm,
    dropout: Option<CounterMask>,
    keep: bool,
    saved: Mutex<Option<FeedForwardSaved>>,
}

impl FeedForwardOp {
    fn run<R>(&self, f: impl FnOnce(FeedForward) -> Result<R>) -> Result<R> {
        self.up.host(|up| {
            self.down.host(|down| {
                f(FeedForward {
                    up,
                    down,
                    norm: self.norm.host(),
                    dropout: self.dropout,
                })
            })
        })
    }
}

impl CustomOp1 for FeedForwardOp {
    fn name(&self) -> &'static str {
        "feed-forward-add-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (y, saved) = self.run(|ff| ff.forward(x, self.keep).map_err(shape_error))?;
        *self.saved.lock().map_err(poisoned)? = saved;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let saved = self.saved.lock().map_err(poisoned)?;
        let Some(saved) = saved.as_ref() else {
            candle_core::bail!("feed-forward backward without its forward pass");
        };
        let g = grad_res.contiguous()?;
        let dx = with_f32(&g, |g| self.run(|ff| ff.backward(saved, g).map_err(shape_error)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `layer_norm(dropout(GELU(x W1^T + b1) W2^T + b2) + x)` over frozen linears and norm.
pub fn feed_forward(
    x: &Tensor,
    up: (&Tensor, Option<&Tensor>),
    down: (&Tensor, Option<&Tensor>),
    norm: (&Tensor, &Tensor, f64),
    dropout: Option<CounterMask>,
) -> Result<Tensor> {
    let op = FeedForwardOp {
        up: Frozen::new(up.0, up.1)?,
        down: Frozen::new(down.0, down.1)?,
        norm: Norm::new(norm.0, norm.1, norm.2)?,
        dropout,
        keep: x.track_op(),
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op1(op)
}

/// [`LinearAddNorm`] as one node over `(x, residual)`.
struct LinearAddNormOp {
    linear: Frozen,
    norm: Norm,
    dropout: Option<CounterMask>,
    keep: bool,
    sum: Mutex<Option<Vec<f32>>>,
}

impl LinearAddNormOp {
    fn run<R>(&self, f: impl FnOnce(LinearAddNorm) -> Result<R>) -> Result<R> {
        self.linear.host(|linear| {
            f(LinearAddNorm {
                linear,
                norm: self.norm.host(),
                dropout: self.dropout,
            })
        })
    }
}

impl CustomOp2 for LinearAddNormOp {
    fn name(&self) -> &'static str {
        "linear-add-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [x, residual] = inputs([(s1, l1), (s2, l2)])?;
        let (y, sum) = self.run(|op| op.forward(x, residual, self.keep).map_err(shape_error))?;
        *self.sum.lock().map_err(poisoned)? = sum;
        Ok((CpuStorage::F32(y), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let sum = self.sum.lock().map_err(poisoned)?;
        let Some(sum) = sum.as_ref() else {
            candle_core::bail!("linear + norm backward without its forward pass");
        };
        let g = grad_res.contiguous()?;
        let (dx, d_residual) = with_f32s([&g], |[g]| self.run(|op| op.backward(sum, g).map_err(shape_error)))?;
        // An input no variable lies under needs no gradient (candle would zero
        // and add a buffer for it all the same).
        let dev = x.device();
        let grad = |g: Vec<f32>, of: &Tensor| of.track_op().then(|| Tensor::from_vec(g, of.shape(), dev)).transpose();
        Ok((grad(dx, x)?, grad(d_residual, residual)?))
    }
}

/// `layer_norm(dropout(x W^T + b) + residual)` over a frozen linear and norm.
pub fn linear_add_norm(
    x: &Tensor,
    residual: &Tensor,
    linear: (&Tensor, Option<&Tensor>),
    norm: (&Tensor, &Tensor, f64),
    dropout: Option<CounterMask>,
) -> Result<Tensor> {
    let op = LinearAddNormOp {
        linear: Frozen::new(linear.0, linear.1)?,
        norm: Norm::new(norm.0, norm.1, norm.2)?,
        dropout,
        keep: x.track_op() || residual.track_op(),
        sum: Mutex::new(None),
    };
    x.contiguous()?.apply_op2(&residual.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear_ops::frozen_linear;
    use crate::ops::{add_layer_norm, dropout, gelu};
    use crate::test_support::{close, var};

    fn frozen(shape: &[usize], seed: u64) -> Tensor {
        var(shape, seed).as_tensor().detach()
    }

    fn dropped(y: Tensor, mask: Option<CounterMask>) -> Tensor {
        match mask {
            Some(m) => dropout(&y, m).unwrap(),
            None => y,
        }
    }

    /// Bit for bit the composed nodes (`TensorOps`'s defaults), values and
    /// gradients, over more values than one parallel block, with and without
    /// the base's dropout and a bias.
    #[test]
    fn fused_sublayers_are_the_composed_ops_bit_for_bit() {
        let (rows, hidden, inner) = (1100, 32, 64);
        let x = var(&[rows, hidden], 1);
        let residual = var(&[rows, hidden], 2);
        let (w1, b1) = (frozen(&[inner, hidden], 3), frozen(&[inner], 4));
        let (w2, b2) = (frozen(&[hidden, inner], 5), frozen(&[hidden], 6));
        let (gamma, beta) = (frozen(&[hidden], 7), frozen(&[hidden], 8));
        let w3 = frozen(&[hidden, hidden], 10);
        let weights = frozen(&[rows, hidden], 9);
        for (mask, up_bias) in [(None, Some(&b1)), (CounterMask::new(11, 0.25), None)] {
            let (xt, rt) = (x.as_tensor(), residual.as_tensor());
            let norm = (&gamma, &beta, 1e-12);
            let fused = feed_forward(xt, (&w1, up_bias), (&w2, Some(&b2)), norm, mask).unwrap();
            let inner_act = gelu(&frozen_linear(xt, &w1, up_bias).unwrap()).unwrap();
            let y = dropped(frozen_linear(&inner_act, &w2, Some(&b2)).unwrap(), mask);
            let composed = add_layer_norm(&y, xt, &gamma, &beta, 1e-12).unwrap();
            close(&fused, &composed, 0.0);
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 0.0);

            let bias = up_bias.map(|_| &b2);
            let fused = linear_add_norm(xt, rt, (&w3, bias), norm, mask).unwrap();
            let y = dropped(frozen_linear(xt, &w3, bias).unwrap(), mask);
            let composed = add_layer_norm(&y, rt, &gamma, &beta, 1e-12).unwrap();
            close(&fused, &composed, 0.0);
            let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &residual] {
                close(gf.get(v).unwrap(), gc.get(v).unwrap(), 0.0);
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_an_error_not_a_panic() {
        let x = var(&[4, 8], 1);
        let (w1, w2) = (frozen(&[16, 8], 2), frozen(&[8, 12], 3));
        let (gamma, beta) = (frozen(&[8], 4), frozen(&[8], 5));
        let err = feed_forward(x.as_tensor(), (&w1, None), (&w2, None), (&gamma, &beta, 1e-5), None).unwrap_err();
        assert!(
            err.to_string().contains("feed-forward of [16, 8] then [8, 12]"),
            "{err}"
        );
    }
}
