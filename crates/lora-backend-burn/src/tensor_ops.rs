//! [`TensorOps`] on burn's flex CPU backend.
//!
//! burn's `Tensor<D>` is typed by its rank, the models' tensors are not. Every
//! tensor here is a `Tensor<5>` whose shape is padded with leading ones, plus
//! its real rank ([`BurnTensor`]): burn broadcasts equal-rank tensors over
//! dimensions of size 1 and batches matmul over the leading ones (with strided
//! gemm, no copies), so padding on the left gives numpy's broadcasting for free,
//! reshapes between ranks cost nothing, and no operation matches on ranks.
//!
//! Frozen weights are plain tensors, never autodiff ones: when they meet a
//! tracked activation, burn's autodiff treats them as constants and computes
//! only the input's gradient (its matmul and linear skip untracked parents).
//! A trainable parameter ([`BurnLeaf`]) keeps its value as a plain tensor too;
//! [`TensorOps::track`] turns it into a fresh autodiff leaf for one training
//! pass, and reading its gradient ends that, so that evaluation builds no graph.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::module::linear;
use burn::tensor::{Gradients, Int, Tensor, TensorData};
use lora_core::init::CounterMask;
use lora_core::task::Targets;
use lora_core::{Error, Result};
use lora_nn::gguf::QuantView;
use lora_nn::ops::{FrozenLinear, FrozenNorm, Heads, Mask, TensorOps};
use lora_nn::weights::WeightView;

use crate::ops::FrozenLinear as BurnFrozenLinear;
use crate::ops::{Attention, Bias, FrozenLayerNorm, add_layer_norm, attention, frozen_linear, gelu, softmax};
use crate::sublayer::{self, FeedForwardStep, LinearAddNormStep};

/// The rank every tensor is stored at: enough for grouped-query attention's
/// `[batch, kv_heads, group, keys, head_dim]`.
const R: usize = 5;

/// burn on the CPU (the flex backend).
#[derive(Debug, Clone, Copy, Default)]
pub struct BurnOps;

/// A tensor of any rank up to 5, stored at rank 5 with leading ones.
#[derive(Clone)]
pub struct BurnTensor {
    t: Tensor<R>,
    rank: usize,
}

/// A trainable parameter shared by the store and the layers (so that a write
/// reaches every clone): its value, and its autodiff leaf during a training pass.
#[derive(Clone)]
pub struct BurnLeaf(Arc<Mutex<LeafState>>);

struct LeafState {
    value: BurnTensor,
    tracked: Option<Tensor<R>>,
}

impl BurnLeaf {
    fn lock(&self) -> MutexGuard<'_, LeafState> {
        // A panic elsewhere cannot leave the state half-written: every write is one assignment.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn err(message: String) -> Error {
    Error::Backend {
        backend: crate::BACKEND,
        message,
    }
}

/// `shape` padded on the left to rank 5.
fn padded(shape: &[usize]) -> Result<[usize; R]> {
    if shape.len() > R {
        return Err(err(format!("shape {shape:?} has more than {R} dimensions")));
    }
    let mut out = [1; R];
    out[R - shape.len()..].copy_from_slice(shape);
    Ok(out)
}

impl BurnTensor {
    fn new(t: Tensor<R>, rank: usize) -> Self {
        Self { t, rank }
    }

    fn from_host(values: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(err(format!("{} values for shape {shape:?}", values.len())));
        }
        let data = TensorData::new(values, padded(shape)?);
        Ok(Self::new(Tensor::from_data(data, &crate::device()), shape.len()))
    }

    fn dims(&self) -> Vec<usize> {
        self.t.dims()[R - self.rank..].to_vec()
    }

    fn numel(&self) -> usize {
        self.t.dims().iter().product()
    }

    /// burn's axis of dimension `d` of the real shape.
    fn axis(&self, d: usize) -> Result<usize> {
        if d < self.rank {
            Ok(R - self.rank + d)
        } else {
            Err(err(format!("dimension {d} of a rank-{} tensor", self.rank)))
        }
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        // Without autodiff: reading values needs no graph.
        self.t
            .clone()
            .inner()
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| err(format!("{e:?}")))
    }

    /// The same tensor with another computation applied at rank 5, rank kept.
    fn map(&self, f: impl FnOnce(Tensor<R>) -> Tensor<R>) -> Self {
        Self::new(f(self.t.clone()), self.rank)
    }
}

/// Binary elementwise operations broadcast like numpy: the result has the larger rank.
fn binary(a: &BurnTensor, b: &BurnTensor, f: impl FnOnce(Tensor<R>, Tensor<R>) -> Tensor<R>) -> BurnTensor {
    BurnTensor::new(f(a.t.clone(), b.t.clone()), a.rank.max(b.rank))
}

impl TensorOps for BurnOps {
    type T = BurnTensor;
    type W = BurnTensor;
    type Leaf = BurnLeaf;
    type Grads = Gradients;
    /// burn 0.22's flex backend has no quantized matmul for ggml's blocks:
    /// quantized matrices are decoded to f32 at load.
    type Q = BurnTensor;

    fn backend(&self) -> &'static str {
        crate::BACKEND
    }

    fn tensor(&self, values: Vec<f32>, shape: &[usize]) -> Result<BurnTensor> {
        BurnTensor::from_host(values, shape)
    }

    fn to_host(&self, x: &BurnTensor) -> Result<Vec<f32>> {
        x.to_host()
    }

    fn dims(&self, x: &BurnTensor) -> Vec<usize> {
        x.dims()
    }

    fn weight(&self, view: WeightView<'_>) -> Result<BurnTensor> {
        // flex computes in f32: each tensor is decoded when the model asks for it.
        BurnTensor::from_host(view.to_f32(), view.shape)
    }

    fn quantized(&self, view: QuantView<'_>) -> Result<BurnTensor> {
        BurnTensor::from_host(view.to_f32(), &view.shape)
    }

    fn quantized_dims(&self, q: &BurnTensor) -> Vec<usize> {
        self.weight_dims(q)
    }

    fn quantized_linear(&self, x: &BurnTensor, q: &BurnTensor) -> Result<BurnTensor> {
        self.linear_any(x, q, None)
    }

    fn dequantize(&self, q: &BurnTensor) -> Result<BurnTensor> {
        Ok(q.clone())
    }

    fn weight_from_host(&self, values: Vec<f32>, shape: &[usize]) -> Result<BurnTensor> {
        BurnTensor::from_host(values, shape)
    }

    fn weight_to_host(&self, w: &BurnTensor) -> Result<Vec<f32>> {
        w.to_host()
    }

    fn weight_dims(&self, w: &BurnTensor) -> Vec<usize> {
        w.dims()
    }

    fn constant(&self, w: &BurnTensor) -> Result<BurnTensor> {
        Ok(w.clone())
    }

    fn weight_add(&self, w: &BurnTensor, delta: &BurnTensor) -> Result<BurnTensor> {
        if w.dims() != delta.dims() {
            return Err(err(format!("weight {:?} plus delta {:?}", w.dims(), delta.dims())));
        }
        // A frozen weight must stay a plain tensor, whatever the delta was computed from.
        Ok(binary(w, delta, |w, d| w + d.inner()))
    }

    fn leaf(&self, values: Vec<f32>, shape: &[usize]) -> Result<BurnLeaf> {
        let value = BurnTensor::from_host(values, shape)?;
        Ok(BurnLeaf(Arc::new(Mutex::new(LeafState { value, tracked: None }))))
    }

    fn leaf_to_host(&self, leaf: &BurnLeaf) -> Result<Vec<f32>> {
        leaf.lock().value.to_host()
    }

    fn set_leaf(&self, leaf: &BurnLeaf, values: &[f32]) -> Result<()> {
        let mut state = leaf.lock();
        let dims = state.value.dims();
        let value = BurnTensor::from_host(values.to_vec(), &dims)?;
        *state = LeafState { value, tracked: None };
        Ok(())
    }

    fn track(&self, leaves: &[BurnLeaf]) {
        // A fresh leaf per pass: the previous pass's graph is never extended.
        for leaf in leaves {
            let mut state = leaf.lock();
            state.tracked = Some(state.value.t.clone().autodiff().require_grad());
        }
    }

    fn use_leaf(&self, leaf: &BurnLeaf) -> BurnTensor {
        let state = leaf.lock();
        match &state.tracked {
            Some(t) => BurnTensor::new(t.clone(), state.value.rank),
            None => state.value.clone(),
        }
    }

    fn backward(&self, loss: &BurnTensor) -> Result<Gradients> {
        if !loss.t.is_tracked() {
            return Err(err("the loss depends on no tracked parameter".into()));
        }
        Ok(loss.t.backward())
    }

    /// Also ends the leaf's training pass: it is untracked again, so that
    /// evaluation between steps builds no autodiff graph.
    fn grad(&self, grads: &Gradients, leaf: &BurnLeaf) -> Result<Option<Vec<f32>>> {
        let tracked = leaf.lock().tracked.take();
        tracked
            .and_then(|t| t.grad(grads))
            .map(|g| g.into_data().try_into_vec::<f32>().map_err(|e| err(format!("{e:?}"))))
            .transpose()
    }

    fn checkpointing(&self) -> bool {
        true
    }

    fn detach(&self, x: &BurnTensor) -> Result<BurnTensor> {
        Ok(x.map(|t| t.detach()))
    }

    fn input_leaf(&self, x: &BurnTensor) -> Result<BurnTensor> {
        // The checkpointed forward pass is untracked, so `x` is a plain tensor; a
        // tracked one is cut from its graph first (a leaf must start a lineage).
        Ok(x.map(|t| t.detach().autodiff().require_grad()))
    }

    fn backward_from(&self, y: &BurnTensor, dy: &BurnTensor) -> Result<Option<Gradients>> {
        if !y.t.is_tracked() {
            return Ok(None);
        }
        // d(sum(y * dy))/dy = dy, with dy a constant of this pass.
        Ok(Some((y.t.clone() * dy.t.clone().detach()).sum().backward()))
    }

    fn input_grad(&self, grads: &Gradients, x: &BurnTensor) -> Result<Option<BurnTensor>> {
        Ok(x.t.grad(grads).map(|g| BurnTensor::new(g, x.rank)))
    }

    fn reshape(&self, x: &BurnTensor, shape: &[usize]) -> Result<BurnTensor> {
        if shape.iter().product::<usize>() != x.numel() {
            return Err(err(format!("cannot reshape {:?} to {shape:?}", x.dims())));
        }
        let to = padded(shape)?;
        Ok(BurnTensor::new(x.t.clone().reshape(to), shape.len()))
    }

    fn transpose(&self, x: &BurnTensor, a: usize, b: usize) -> Result<BurnTensor> {
        // A strided view: flex's gemm reads it in place, and a later reshape copies it once.
        let (a, b) = (x.axis(a)?, x.axis(b)?);
        Ok(x.map(|t| t.swap_dims(a, b)))
    }

    fn narrow(&self, x: &BurnTensor, dim: usize, start: usize, len: usize) -> Result<BurnTensor> {
        let axis = x.axis(dim)?;
        if start + len > x.t.dims()[axis] {
            return Err(err(format!(
                "narrow {start}..{} of {:?} at {dim}",
                start + len,
                x.dims()
            )));
        }
        Ok(x.map(|t| t.narrow(axis, start, len)))
    }

    fn cat(&self, xs: &[&BurnTensor], dim: usize) -> Result<BurnTensor> {
        let first = xs.first().ok_or_else(|| err("cat of no tensors".into()))?;
        let axis = first.axis(dim)?;
        Ok(BurnTensor::new(
            Tensor::cat(xs.iter().map(|x| x.t.clone()).collect(), axis),
            first.rank,
        ))
    }

    fn broadcast_as(&self, x: &BurnTensor, shape: &[usize]) -> Result<BurnTensor> {
        let to = padded(shape)?;
        Ok(BurnTensor::new(x.t.clone().expand(to), shape.len()))
    }

    fn add(&self, a: &BurnTensor, b: &BurnTensor) -> Result<BurnTensor> {
        Ok(binary(a, b, |a, b| a + b))
    }

    fn broadcast_add(&self, a: &BurnTensor, b: &BurnTensor) -> Result<BurnTensor> {
        Ok(binary(a, b, |a, b| a + b))
    }

    fn mul(&self, a: &BurnTensor, b: &BurnTensor) -> Result<BurnTensor> {
        Ok(binary(a, b, |a, b| a * b))
    }

    fn scale(&self, x: &BurnTensor, s: f64) -> Result<BurnTensor> {
        Ok(x.map(|t| t.mul_scalar(s)))
    }

    fn matmul(&self, a: &BurnTensor, b: &BurnTensor) -> Result<BurnTensor> {
        Ok(binary(a, b, |a, b| a.matmul(b)))
    }

    fn tanh(&self, x: &BurnTensor) -> Result<BurnTensor> {
        Ok(x.map(|t| t.tanh()))
    }

    fn gelu(&self, x: &BurnTensor) -> Result<BurnTensor> {
        Ok(x.map(gelu))
    }

    fn silu(&self, x: &BurnTensor) -> Result<BurnTensor> {
        Ok(x.map(silu))
    }

    fn softmax_last_dim(&self, x: &BurnTensor) -> Result<BurnTensor> {
        Ok(x.map(|t| softmax(t, Bias::None, 1.0)))
    }

    fn frozen_linear(&self, x: &BurnTensor, w: &BurnTensor, b: Option<&BurnTensor>) -> Result<BurnTensor> {
        let (xd, wd) = (x.dims(), w.dims());
        let [out, inp] = wd[..] else {
            return Err(err(format!("linear weight {wd:?}, not [out, in]")));
        };
        if xd.last() != Some(&inp) || b.is_some_and(|b| b.numel() != out) {
            return Err(err(format!("linear of {xd:?} by {wd:?}")));
        }
        let y = frozen_linear(x.t.clone(), w.t.clone(), b.map(|b| b.t.clone()));
        Ok(BurnTensor::new(y, x.rank))
    }

    fn linear(&self, x: &BurnTensor, w: &BurnTensor, b: &BurnTensor) -> Result<BurnTensor> {
        self.linear_any(x, w, Some(b))
    }

    fn embedding(&self, table: &BurnTensor, ids: &[u32]) -> Result<BurnTensor> {
        let vocab = table.t.dims()[R - 2];
        if table.rank != 2 || ids.iter().any(|&i| i as usize >= vocab) {
            return Err(err(format!("ids beyond a table of {:?}", table.dims())));
        }
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &crate::device());
        Ok(table.map(|t| t.select(R - 2, ids)))
    }

    fn layer_norm(&self, x: &BurnTensor, gamma: &BurnTensor, beta: &BurnTensor, eps: f64) -> Result<BurnTensor> {
        let norm = FrozenLayerNorm::new(gamma.to_host()?, beta.to_host()?, eps);
        self.check_width(x, norm.len())?;
        Ok(x.map(|t| norm.forward(t)))
    }

    fn add_layer_norm(
        &self,
        x: &BurnTensor,
        residual: &BurnTensor,
        gamma: &BurnTensor,
        beta: &BurnTensor,
        eps: f64,
    ) -> Result<BurnTensor> {
        let norm = FrozenLayerNorm::new(gamma.to_host()?, beta.to_host()?, eps);
        self.check_width(x, norm.len())?;
        if x.dims() != residual.dims() {
            return Err(err(format!("residual sum of {:?} and {:?}", x.dims(), residual.dims())));
        }
        let y = add_layer_norm(x.t.clone(), residual.t.clone(), &norm);
        Ok(BurnTensor::new(y, x.rank))
    }

    fn linear_add_norm(
        &self,
        x: &BurnTensor,
        residual: &BurnTensor,
        linear: FrozenLinear<'_, BurnTensor>,
        norm: FrozenNorm<'_, BurnTensor>,
        dropout: Option<CounterMask>,
    ) -> Result<BurnTensor> {
        let op = LinearAddNormStep {
            linear: BurnFrozenLinear::new(linear.weight.t.clone(), linear.bias.map(|b| b.t.clone())),
            norm: FrozenLayerNorm::new(norm.gamma.to_host()?, norm.beta.to_host()?, norm.eps),
            dropout,
        };
        op.rows(x.numel(), residual.numel()).map_err(err)?;
        let y = sublayer::linear_add_norm(x.t.clone(), residual.t.clone(), op);
        Ok(BurnTensor::new(y, residual.rank))
    }

    fn feed_forward(
        &self,
        x: &BurnTensor,
        up: FrozenLinear<'_, BurnTensor>,
        down: FrozenLinear<'_, BurnTensor>,
        norm: FrozenNorm<'_, BurnTensor>,
        dropout: Option<CounterMask>,
    ) -> Result<BurnTensor> {
        let weights =
            |l: FrozenLinear<'_, BurnTensor>| BurnFrozenLinear::new(l.weight.t.clone(), l.bias.map(|b| b.t.clone()));
        let op = FeedForwardStep {
            up: weights(up),
            down: weights(down),
            norm: FrozenLayerNorm::new(norm.gamma.to_host()?, norm.beta.to_host()?, norm.eps),
            dropout,
        };
        op.rows(x.numel()).map_err(err)?;
        Ok(x.map(|t| sublayer::feed_forward(t, op)))
    }

    fn layer_norm_trained(
        &self,
        x: &BurnTensor,
        gamma: &BurnTensor,
        beta: &BurnTensor,
        eps: f64,
    ) -> Result<BurnTensor> {
        // The fused op normalises (unit affine); burn's differentiable ops apply
        // gamma and beta, so that they get their gradients.
        let n = gamma.numel();
        self.check_width(x, n)?;
        let norm = FrozenLayerNorm::new(vec![1.0; n], vec![0.0; n], eps);
        Ok(BurnTensor::new(
            norm.forward(x.t.clone()) * gamma.t.clone() + beta.t.clone(),
            x.rank,
        ))
    }

    fn rms_norm(&self, x: &BurnTensor, gain: &BurnTensor, eps: f64) -> Result<BurnTensor> {
        self.check_width(x, gain.numel())?;
        let ms = x.t.clone().square().mean_dim(R - 1);
        Ok(BurnTensor::new(
            x.t.clone() / ms.add_scalar(eps).sqrt() * gain.t.clone(),
            x.rank,
        ))
    }

    /// Fused: the scores' scale and mask go into one softmax pass (see [`softmax`]).
    /// One fused pass over every sequence and head (`lora_nn::attention_kernel`),
    /// shared with the candle backend: no head-split copies, no score tensor.
    fn attention_rows(
        &self,
        q: &BurnTensor,
        k: &BurnTensor,
        v: &BurnTensor,
        s: Heads,
        mask: Mask<'_>,
        scale: f64,
        dropout: Option<CounterMask>,
    ) -> Result<BurnTensor> {
        let rows = |x: &BurnTensor, n: usize, heads: usize| {
            x.dims().iter().product::<usize>() == n * heads * s.head_dim
                && x.dims().last() == Some(&(heads * s.head_dim))
        };
        if !s.valid()
            || !rows(q, s.batch * s.queries, s.heads)
            || !rows(k, s.batch * s.keys, s.kv_heads)
            || !rows(v, s.batch * s.keys, s.kv_heads)
        {
            return Err(err(format!(
                "attention {s:?} of q {:?}, k {:?}, v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            )));
        }
        let bias = match mask {
            Mask::None => Bias::None,
            Mask::Padding(m) => {
                if m.len() != s.batch * s.keys {
                    return Err(err(format!(
                        "{} mask values for {} x {} keys",
                        m.len(),
                        s.batch,
                        s.keys
                    )));
                }
                Bias::Keys(Arc::new(m.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect()))
            }
            Mask::Causal => Bias::Causal,
        };
        let op = Attention {
            heads: s,
            scale: scale as f32,
            bias,
            dropout,
        };
        Ok(BurnTensor::new(
            attention(q.t.clone(), k.t.clone(), v.t.clone(), op),
            q.rank,
        ))
    }

    fn attention(
        &self,
        q: &BurnTensor,
        k: &BurnTensor,
        v: &BurnTensor,
        mask: Mask<'_>,
        scale: f64,
    ) -> Result<BurnTensor> {
        let (qd, kd) = (q.dims(), k.dims());
        if qd.len() != 4 || kd.len() != 4 || v.dims() != kd || kd[1] == 0 || qd[1] % kd[1] != 0 {
            return Err(err(format!("attention of q {qd:?} on k {kd:?}, v {:?}", v.dims())));
        }
        let (b, heads, keys, d) = (qd[0], qd[1], kd[2], kd[3]);
        let (k, v) = if kd[1] == heads {
            (k.t.clone(), v.t.clone())
        } else {
            // Grouped-query attention: each key/value head serves `group` query heads.
            let group = heads / kd[1];
            let repeat = |x: &Tensor<R>| {
                x.clone()
                    .expand([b, kd[1], group, keys, d])
                    .reshape([1, b, heads, keys, d])
            };
            let (k, v) = (
                k.t.clone().reshape([b, kd[1], 1, keys, d]),
                v.t.clone().reshape([b, kd[1], 1, keys, d]),
            );
            (repeat(&k), repeat(&v))
        };
        let bias = match mask {
            Mask::None => Bias::None,
            Mask::Padding(m) => {
                if m.len() != b * keys {
                    return Err(err(format!("{} mask values for {b} x {keys} keys", m.len())));
                }
                Bias::Keys(Arc::new(m.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect()))
            }
            Mask::Causal => Bias::Causal,
        };
        let scores = q.t.clone().matmul(k.swap_dims(R - 2, R - 1));
        Ok(BurnTensor::new(softmax(scores, bias, scale as f32).matmul(v), 4))
    }

    fn cross_entropy(&self, logits: &BurnTensor, targets: Targets<'_>) -> Result<BurnTensor> {
        let dims = logits.dims();
        let [rows, classes] = dims[..] else {
            return Err(err(format!("cross-entropy of logits {dims:?}, not [rows, classes]")));
        };
        let logp = log_softmax(logits.t.clone(), R - 1);
        let index = |ids: &[u32]| -> Result<Tensor<R, Int>> {
            if ids.len() != rows {
                return Err(Error::Data(format!("{} targets for {rows} rows of logits", ids.len())));
            }
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= classes) {
                return Err(Error::Data(format!(
                    "target {bad} is out of range for {classes} classes"
                )));
            }
            let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
            Ok(Tensor::from_data(
                TensorData::new(ids, [1, 1, 1, rows, 1]),
                &crate::device(),
            ))
        };
        // Sums then one multiplication by -1/n, as candle's losses compute them.
        let loss = match targets {
            Targets::Classes(labels) => logp.gather(R - 1, index(labels)?).sum().mul_scalar(-1.0 / rows as f64),
            Targets::Soft { probs, classes: c } => {
                if c != classes || probs.len() != rows * classes {
                    return Err(Error::Data(format!(
                        "{} target probabilities of {c} classes for logits {dims:?}",
                        probs.len()
                    )));
                }
                let probs = BurnTensor::from_host(probs.to_vec(), &dims)?;
                (probs.t * logp).sum().mul_scalar(-1.0 / rows as f64)
            }
            Targets::Tokens { ids, weights } => {
                if weights.len() != rows {
                    return Err(Error::Data(format!(
                        "{} weights for {rows} rows of logits",
                        weights.len()
                    )));
                }
                let picked = logp.gather(R - 1, index(ids)?);
                let w = BurnTensor::from_host(weights.to_vec(), &[rows, 1])?;
                let total: f32 = weights.iter().sum();
                (picked * w.t)
                    .sum()
                    .mul_scalar(-1.0 / f64::from(total.max(f32::MIN_POSITIVE)))
            }
        };
        Ok(BurnTensor::new(loss.reshape([1; R]), 0))
    }
}

impl BurnOps {
    /// `x W^T + b` through burn's linear (one gemm for every leading dimension):
    /// burn differentiates only the tracked operands.
    fn linear_any(&self, x: &BurnTensor, w: &BurnTensor, b: Option<&BurnTensor>) -> Result<BurnTensor> {
        let (xd, wd) = (x.dims(), w.dims());
        let [out, inp] = wd[..] else {
            return Err(err(format!("linear weight {wd:?}, not [out, in]")));
        };
        if xd.last() != Some(&inp) || b.is_some_and(|b| b.numel() != out) {
            return Err(err(format!("linear of {xd:?} by {wd:?}")));
        }
        let rows = x.numel() / inp;
        let x2: Tensor<2> = x.t.clone().reshape([rows, inp]);
        let w2: Tensor<2> = w.t.clone().reshape([out, inp]).transpose();
        let b1 = b.map(|b| b.t.clone().reshape([out]));
        let mut to = padded(&xd)?;
        to[R - 1] = out;
        Ok(BurnTensor::new(linear(x2, w2, b1).reshape(to), x.rank))
    }

    fn check_width(&self, x: &BurnTensor, n: usize) -> Result<()> {
        if x.t.dims()[R - 1] != n {
            return Err(err(format!("a norm of width {n} over {:?}", x.dims())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::softmax as burn_softmax;

    // The model checks written once in lora-nn, on burn's operations.
    lora_nn::model_tests!(super::BurnOps);

    use lora_core::init::{normal, rng};

    use super::*;

    const OPS: BurnOps = BurnOps;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        normal(1.0, n, &mut rng(seed))
    }

    fn leaf(shape: &[usize], seed: u64) -> BurnLeaf {
        OPS.leaf(values(shape.iter().product(), seed), shape).unwrap()
    }

    /// `sum(x * r)` for fixed random `r`: every output element gets its own gradient.
    fn weighted_sum(x: &BurnTensor) -> BurnTensor {
        let r = OPS.tensor(values(x.numel(), 77), &x.dims()).unwrap();
        BurnTensor::new((x.t.clone() * r.t).sum().reshape([1; R]), 0)
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// Value and gradients (of `leaves`) of `f` in one training pass.
    fn pass(leaves: &[BurnLeaf], f: impl Fn(&[BurnTensor]) -> BurnTensor) -> (Vec<f32>, Vec<Vec<f32>>) {
        OPS.track(leaves);
        let xs: Vec<BurnTensor> = leaves.iter().map(|l| OPS.use_leaf(l)).collect();
        let y = f(&xs);
        let value = OPS.to_host(&y).unwrap();
        let grads = OPS.backward(&weighted_sum(&y)).unwrap();
        let g = leaves.iter().map(|l| OPS.grad(&grads, l).unwrap().unwrap()).collect();
        (value, g)
    }

    #[test]
    fn leaves_are_tracked_for_one_pass_and_writes_reach_every_clone() {
        let a = leaf(&[2, 3], 1);
        let held = a.clone();
        assert!(!OPS.use_leaf(&held).t.is_autodiff());
        OPS.track(std::slice::from_ref(&a));
        assert!(OPS.use_leaf(&held).t.is_tracked());
        let grads = OPS.backward(&weighted_sum(&OPS.use_leaf(&held))).unwrap();
        assert_eq!(OPS.grad(&grads, &a).unwrap().unwrap(), values(6, 77));
        // Reading the gradient ended the pass; evaluation builds no graph.
        assert!(!OPS.use_leaf(&held).t.is_autodiff());
        OPS.set_leaf(&a, &[1.0; 6]).unwrap();
        assert_eq!(OPS.leaf_to_host(&held).unwrap(), vec![1.0; 6]);
        assert_eq!(OPS.dims(&OPS.use_leaf(&held)), vec![2, 3]);
        assert!(OPS.set_leaf(&a, &[1.0; 5]).is_err());
        // A loss that depends on no parameter is an error, not a panic.
        assert!(OPS.backward(&OPS.tensor(vec![1.0], &[]).unwrap()).is_err());
    }

    #[test]
    fn frozen_linear_gives_the_composed_values_and_input_gradient() {
        let (w, b) = (values(5 * 4, 2), values(5, 3));
        let (wf, bf) = (
            OPS.weight_from_host(w.clone(), &[5, 4]).unwrap(),
            OPS.weight_from_host(b.clone(), &[5]).unwrap(),
        );
        let x = leaf(&[2, 3, 4], 1);
        let fast = pass(std::slice::from_ref(&x), |x| {
            OPS.frozen_linear(&x[0], &wf, Some(&bf)).unwrap()
        });
        // Composed from matmul and add, with the weight and bias trained: same values and input gradient.
        let (wl, bl) = (OPS.leaf(w, &[5, 4]).unwrap(), OPS.leaf(b, &[5]).unwrap());
        let slow = pass(&[x, wl.clone(), bl], |p| {
            let y = OPS.matmul(&p[0], &OPS.transpose(&p[1], 0, 1).unwrap()).unwrap();
            OPS.broadcast_add(&y, &p[2]).unwrap()
        });
        close(&fast.0, &slow.0, 1e-6);
        close(&fast.1[0], &slow.1[0], 1e-5);
        // The trained linear (one gemm) gives the composed weight and bias gradients.
        let x = leaf(&[2, 3, 4], 1);
        let trained = pass(&[x, wl, leaf(&[5], 3)], |p| OPS.linear(&p[0], &p[1], &p[2]).unwrap());
        close(&trained.0, &slow.0, 1e-6);
        for (t, s) in trained.1.iter().zip(&slow.1) {
            close(t, s, 1e-5);
        }
    }

    /// The trait's default attention, in burn's composed ops.
    fn composed_attention(
        q: &Tensor<R>,
        k: &Tensor<R>,
        v: &Tensor<R>,
        bias: Option<Tensor<R>>,
        scale: f64,
    ) -> Tensor<R> {
        let scores = q.clone().matmul(k.clone().swap_dims(3, 4)).mul_scalar(scale);
        let scores = match bias {
            Some(b) => scores + b,
            None => scores,
        };
        burn_softmax(scores, R - 1).matmul(v.clone())
    }

    #[test]
    fn fused_attention_matches_the_composed_attention_for_every_mask() {
        let (b, h, s, d) = (2, 2, 5, 3);
        let padding: Vec<u32> = vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        let pad_bias: Vec<f32> = padding.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect();
        let causal: Vec<f32> = (0..s)
            .flat_map(|i| (0..s).map(move |j| if j <= i { 0.0 } else { -1e9 }))
            .collect();
        let dev = crate::device();
        let cases: [(Mask, Option<Tensor<R>>); 3] = [
            (Mask::None, None),
            (
                Mask::Padding(&padding),
                Some(Tensor::from_data(TensorData::new(pad_bias, [1, b, 1, 1, s]), &dev)),
            ),
            (
                Mask::Causal,
                Some(Tensor::from_data(TensorData::new(causal, [1, 1, 1, s, s]), &dev)),
            ),
        ];
        for (mask, bias) in cases {
            // Grouped-query attention too: one key/value head for two query heads.
            for kv in [h, 1] {
                let leaves = [leaf(&[b, h, s, d], 1), leaf(&[b, kv, s, d], 2), leaf(&[b, kv, s, d], 3)];
                let fast = pass(&leaves, |p| OPS.attention(&p[0], &p[1], &p[2], mask, 0.4).unwrap());
                let slow = pass(&leaves, |p| {
                    let repeat = |x: &BurnTensor| {
                        let x = x.t.clone().reshape([b, kv, 1, s, d]).expand([b, kv, h / kv, s, d]);
                        x.reshape([1, b, h, s, d])
                    };
                    BurnTensor::new(
                        composed_attention(&p[0].t, &repeat(&p[1]), &repeat(&p[2]), bias.clone(), 0.4),
                        4,
                    )
                });
                close(&fast.0, &slow.0, 1e-5);
                for (f, s) in fast.1.iter().zip(&slow.1) {
                    close(f, s, 1e-4);
                }
            }
        }
    }

    #[test]
    fn trained_layer_norm_and_rms_norm_match_composed_ops() {
        let x = leaf(&[3, 4, 6], 1);
        let (g, b) = (leaf(&[6], 2), leaf(&[6], 3));
        let fused = pass(&[x.clone(), g.clone(), b.clone()], |p| {
            OPS.layer_norm_trained(&p[0], &p[1], &p[2], 1e-5).unwrap()
        });
        let composed = pass(&[x.clone(), g.clone(), b], |p| {
            let y = burn::tensor::module::layer_norm(
                p[0].t.clone(),
                p[1].t.clone().reshape([6]),
                Some(p[2].t.clone().reshape([6])),
                1e-5,
            );
            BurnTensor::new(y, 3)
        });
        close(&fused.0, &composed.0, 1e-5);
        for (f, c) in fused.1.iter().zip(&composed.1) {
            close(f, c, 1e-4);
        }
        // The frozen layer norm gives the same values with the same affine.
        let frozen = OPS
            .layer_norm(
                &OPS.use_leaf(&x),
                &OPS.use_leaf(&g),
                &OPS.use_leaf(&leaf(&[6], 3)),
                1e-5,
            )
            .unwrap();
        close(&OPS.to_host(&frozen).unwrap(), &fused.0, 1e-6);
        // RMS norm by hand: x / sqrt(mean(x^2) + eps) * gain.
        let (xs, gs) = (values(72, 1), values(6, 2));
        let rms = OPS
            .rms_norm(
                &OPS.use_leaf(&x),
                &OPS.weight_from_host(gs.clone(), &[6]).unwrap(),
                1e-6,
            )
            .unwrap();
        let want: Vec<f32> = xs
            .chunks(6)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / 6.0;
                let gs = gs.clone();
                row.iter()
                    .zip(gs)
                    .map(move |(v, g)| v / (ms + 1e-6).sqrt() * g)
                    .collect::<Vec<_>>()
            })
            .collect();
        close(&OPS.to_host(&rms).unwrap(), &want, 1e-5);
    }

    #[test]
    fn cross_entropy_of_classes_soft_and_tokens_agree_with_hand_computation() {
        let logits = [1.0f32, 2.0, 3.0, 1.0, 1.0, 1.0];
        let lse1 = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let lse2 = (3.0 * 1f32.exp()).ln();
        let (row1, row2) = (lse1 - 3.0, lse2 - 1.0);
        let x = OPS.leaf(logits.to_vec(), &[2, 3]).unwrap();
        let loss = |targets: Targets| -> (f32, Vec<f32>) {
            OPS.track(std::slice::from_ref(&x));
            let l = OPS.cross_entropy(&OPS.use_leaf(&x), targets).unwrap();
            let v = OPS.to_host(&l).unwrap();
            assert_eq!(v.len(), 1);
            let g = OPS.backward(&l).unwrap();
            (v[0], OPS.grad(&g, &x).unwrap().unwrap())
        };
        let (classes, grad) = loss(Targets::Classes(&[2, 0]));
        close(&[classes], &[(row1 + row2) / 2.0], 1e-6);
        // d/dlogits = (softmax - one-hot) / rows.
        let p1: Vec<f32> = [1f32, 2., 3.].iter().map(|v| (v - lse1).exp()).collect();
        let want = [
            p1[0] / 2.0,
            p1[1] / 2.0,
            (p1[2] - 1.0) / 2.0,
            (1.0 / 3.0 - 1.0) / 2.0,
            1.0 / 6.0,
            1.0 / 6.0,
        ];
        close(&grad, &want, 1e-6);
        let one_hot = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let (soft, soft_grad) = loss(Targets::Soft {
            probs: &one_hot,
            classes: 3,
        });
        close(&[soft], &[classes], 1e-6);
        close(&soft_grad, &grad, 1e-6);
        let (tokens, _) = loss(Targets::Tokens {
            ids: &[2, 0],
            weights: &[1.0, 1.0],
        });
        close(&[tokens], &[classes], 1e-6);
        let (first, _) = loss(Targets::Tokens {
            ids: &[2, 0],
            weights: &[2.0, 0.0],
        });
        close(&[first], &[row1], 1e-6);
        let bad = OPS.cross_entropy(&OPS.use_leaf(&x), Targets::Classes(&[3, 0]));
        assert!(matches!(bad, Err(Error::Data(_))));
        assert!(OPS.cross_entropy(&OPS.use_leaf(&x), Targets::Classes(&[0])).is_err());
    }

    #[test]
    fn shapes_broadcast_and_the_default_rope_rotates_pairs() {
        // [b, heads, seq, d] = [1, 1, 2, 2]: position p rotates (x1, x2) by p radians (theta = 1, d = 2).
        let x = OPS.tensor(vec![1.0, 0.0, 0.5, 2.0], &[1, 1, 2, 2]).unwrap();
        let y = OPS.to_host(&OPS.rope(&x, &[0, 1], 1.0).unwrap()).unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        close(&y, &[1.0, 0.0, 0.5 * c - 2.0 * s, 2.0 * c + 0.5 * s], 1e-6);
        let rows = OPS.tensor(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let bias = OPS.tensor(vec![10.0, 20.0, 30.0], &[3]).unwrap();
        let sum = OPS.broadcast_add(&rows, &bias).unwrap();
        assert_eq!(OPS.dims(&sum), vec![2, 3]);
        assert_eq!(OPS.to_host(&sum).unwrap(), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        let t = OPS.transpose(&rows, 0, 1).unwrap();
        assert_eq!(OPS.to_host(&t).unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let n = OPS.narrow(&rows, 1, 1, 2).unwrap();
        assert_eq!(OPS.to_host(&n).unwrap(), vec![2.0, 3.0, 5.0, 6.0]);
        let e = OPS.embedding(&rows, &[1, 1, 0]).unwrap();
        assert_eq!(OPS.dims(&e), vec![3, 3]);
        assert!(OPS.embedding(&rows, &[2]).is_err());
        assert!(OPS.reshape(&rows, &[4]).is_err());
        assert!(OPS.tensor(vec![0.0; 64], &[2; 6]).is_err());
    }

    #[test]
    fn both_models_are_registered_for_burn() {
        for name in ["bert-classifier", "vit-classifier"] {
            let found = lora_core::registry::entries::<lora_core::registry::ModelEntry>()
                .iter()
                .any(|e| e.backend == crate::BACKEND && e.name == name);
            assert!(found, "{name}");
        }
    }
}
