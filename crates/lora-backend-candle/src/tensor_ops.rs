//! [`TensorOps`] on candle: frozen weights are plain tensors (never `Var`s, so
//! they get no gradient), trainable parameters are `Var`s, and the coarse
//! operations use the custom kernels of [`crate::ops`].

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use lora_core::init::CounterMask;
use lora_core::task::Targets;
use lora_core::{Error, Result};
use lora_nn::gguf::QuantView;
use lora_nn::ops::{
    AttentionGeometry, FrozenLinear, FrozenNorm, Heads, Mask, Projection, TensorOps, default_attention,
};
use lora_nn::weights::{WeightDType, WeightView};

use crate::error::IntoCore;
use crate::linear_ops::{frozen_linear, lora_linear, trained_linear};
use crate::ops::{add_layer_norm, attention_rows, dropout, gelu, layer_norm, layer_norm_trained, softmax_last_dim};
use crate::quant::QuantMatrix;
use crate::sublayer_ops;

/// candle on the CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandleOps {
    /// The type of frozen matrices (`[model] dtype`); vectors (biases, norm
    /// affines) stay f32, they are a thousandth of the weights.
    dtype: lora_core::DType,
    /// Parameters enter passes detached (evaluation, `predict`): no graph is built.
    detached: bool,
}

impl CandleOps {
    /// candle's type for frozen weights of `shape`.
    fn stored(&self, shape: &[usize]) -> DType {
        match self.dtype {
            _ if shape.len() < 2 => DType::F32,
            lora_core::DType::F32 => DType::F32,
            lora_core::DType::Bf16 => DType::BF16,
            lora_core::DType::F16 => DType::F16,
        }
    }
}

/// `w` as f32 (a copy when it is stored narrower).
fn widened(w: &Tensor) -> candle_core::Result<Tensor> {
    if w.dtype() == DType::F32 {
        Ok(w.clone())
    } else {
        w.to_dtype(DType::F32)
    }
}

const CPU: Device = Device::Cpu;

impl TensorOps for CandleOps {
    type T = Tensor;
    type W = Tensor;
    type Leaf = Var;
    type Grads = GradStore;
    type Q = QuantMatrix;

    fn backend(&self) -> &'static str {
        crate::BACKEND
    }

    fn dtypes(&self) -> &'static [lora_core::DType] {
        &[lora_core::DType::F32, lora_core::DType::Bf16, lora_core::DType::F16]
    }

    fn with_dtype(&self, dtype: lora_core::DType) -> Result<Self> {
        Ok(Self { dtype, ..*self })
    }

    fn inference(&self) -> Self {
        Self {
            detached: true,
            ..*self
        }
    }

    fn tensor(&self, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(values, shape, &CPU).core()
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        x.flatten_all().and_then(|x| x.to_vec1()).core()
    }

    fn dims(&self, x: &Tensor) -> Vec<usize> {
        x.dims().to_vec()
    }

    fn weight(&self, view: WeightView<'_>) -> Result<Tensor> {
        let dtype = match view.dtype {
            WeightDType::F32 => DType::F32,
            WeightDType::F16 => DType::F16,
            WeightDType::Bf16 => DType::BF16,
        };
        Tensor::from_raw_buffer(view.bytes, dtype, view.shape, &CPU)
            .and_then(|t| t.to_dtype(self.stored(view.shape)))
            .core()
    }

    fn weight_from_host(&self, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        self.tensor(values, shape)?.to_dtype(self.stored(shape)).core()
    }

    fn weight_to_host(&self, w: &Tensor) -> Result<Vec<f32>> {
        self.to_host(&widened(w).core()?)
    }

    fn weight_dims(&self, w: &Tensor) -> Vec<usize> {
        w.dims().to_vec()
    }

    fn constant(&self, w: &Tensor) -> Result<Tensor> {
        widened(w).core()
    }

    fn weight_add(&self, w: &Tensor, delta: &Tensor) -> Result<Tensor> {
        // A merged weight stays f32: it is for prediction and export, not the base.
        (widened(w).core()? + delta.detach()).core()
    }

    fn quantized(&self, view: QuantView<'_>) -> Result<QuantMatrix> {
        QuantMatrix::new(view).core()
    }

    fn quantized_dims(&self, q: &QuantMatrix) -> Vec<usize> {
        q.dims()
    }

    fn quantized_linear(&self, x: &Tensor, q: &QuantMatrix) -> Result<Tensor> {
        q.forward(x).core()
    }

    fn dequantize(&self, q: &QuantMatrix) -> Result<Tensor> {
        q.dequantize().core()
    }

    fn leaf(&self, values: Vec<f32>, shape: &[usize]) -> Result<Var> {
        Var::from_vec(values, shape, &CPU).core()
    }

    fn leaf_to_host(&self, leaf: &Var) -> Result<Vec<f32>> {
        self.to_host(leaf.as_tensor())
    }

    fn set_leaf(&self, leaf: &Var, values: &[f32]) -> Result<()> {
        let t = Tensor::from_slice(values, leaf.shape(), &CPU).core()?;
        leaf.set(&t).core()
    }

    fn use_leaf(&self, leaf: &Var) -> Tensor {
        if self.detached {
            leaf.as_tensor().detach()
        } else {
            leaf.as_tensor().clone()
        }
    }

    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        loss.backward().core()
    }

    fn grad(&self, grads: &GradStore, leaf: &Var) -> Result<Option<Vec<f32>>> {
        grads.get(leaf.as_tensor()).map(|g| self.to_host(g)).transpose()
    }

    fn checkpointing(&self) -> bool {
        true
    }

    fn detach(&self, x: &Tensor) -> Result<Tensor> {
        // Shares the storage; the graph that made `x` is dropped with its last user.
        Ok(x.detach())
    }

    fn input_leaf(&self, x: &Tensor) -> Result<Tensor> {
        Var::from_tensor(&x.detach()).map(Var::into_inner).core()
    }

    fn backward_from(&self, y: &Tensor, dy: &Tensor) -> Result<Option<GradStore>> {
        if !y.track_op() {
            return Ok(None);
        }
        // d(sum(y * dy))/dy = dy, with dy a constant of this pass.
        y.mul(&dy.detach())
            .and_then(|p| p.sum_all())
            .and_then(|s| s.backward())
            .map(Some)
            .core()
    }

    fn input_grad(&self, grads: &GradStore, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(grads.get(x).cloned())
    }

    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        x.reshape(shape).core()
    }

    fn transpose(&self, x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
        x.transpose(a, b).and_then(|t| t.contiguous()).core()
    }

    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        x.narrow(dim, start, len).core()
    }

    fn cat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        Tensor::cat(xs, dim).core()
    }

    fn broadcast_as(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        x.broadcast_as(shape).core()
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        (a + b).core()
    }

    fn broadcast_add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.broadcast_add(b).core()
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        (a * b).core()
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        (x * s).core()
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.matmul(b).core()
    }

    fn tanh(&self, x: &Tensor) -> Result<Tensor> {
        x.tanh().core()
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        gelu(x).core()
    }

    fn dropout(&self, x: &Tensor, mask: CounterMask) -> Result<Tensor> {
        dropout(x, mask).core()
    }

    fn silu(&self, x: &Tensor) -> Result<Tensor> {
        x.silu().core()
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        softmax_last_dim(x).core()
    }

    /// The default composition, but with `k^T` as a strided view: a contiguous
    /// copy of every layer's keys (and of their gradient) costs fresh pages
    /// that the kernel zeroes, about a sixth of a step at 32 x 128.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask<'_>, scale: f64) -> Result<Tensor> {
        let (b, heads, keys) = (q.dim(0).core()?, q.dim(1).core()?, k.dim(2).core()?);
        if matches!(mask, Mask::Causal) || k.dim(1).core()? != heads {
            return default_attention(self, q, k, v, mask, scale);
        }
        let scores = (q.matmul(&k.t().core()?).core()? * scale).core()?;
        let scores = match mask {
            Mask::Padding(m) => {
                let bias: Vec<f32> = m.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect();
                scores.broadcast_add(&self.tensor(bias, &[b, 1, 1, keys])?).core()?
            }
            _ => scores,
        };
        softmax_last_dim(&scores).and_then(|p| p.matmul(v)).core()
    }

    /// One fused pass over every sequence and head (`lora_nn::attention_kernel`):
    /// no head-split copies, no score tensor, no bias tensor.
    fn attention_rows(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: Heads,
        mask: Mask<'_>,
        scale: f64,
        dropout: Option<CounterMask>,
    ) -> Result<Tensor> {
        attention_rows(q, k, v, s, mask, scale, dropout).core()
    }

    fn frozen_linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        frozen_linear(x, w, b).core()
    }

    fn lora_linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        mask: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        lora_linear(x, w, bias, (a, b), scale, mask).core()
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        trained_linear(x, w, b).core()
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &CPU).core()?;
        table.index_select(&ids, 0).and_then(|rows| widened(&rows)).core()
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, gamma, beta, eps).core()
    }

    fn add_layer_norm(&self, x: &Tensor, residual: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        add_layer_norm(x, residual, gamma, beta, eps).core()
    }

    fn linear_add_norm(
        &self,
        x: &Tensor,
        residual: &Tensor,
        linear: FrozenLinear<'_, Tensor>,
        norm: FrozenNorm<'_, Tensor>,
        dropout: Option<CounterMask>,
    ) -> Result<Tensor> {
        let norm = (norm.gamma, norm.beta, norm.eps);
        sublayer_ops::linear_add_norm(x, residual, (linear.weight, linear.bias), norm, dropout).core()
    }

    fn attention_sublayer(
        &self,
        x: &Tensor,
        projections: [Projection<'_, Self>; 3],
        geometry: AttentionGeometry<'_>,
        output: FrozenLinear<'_, Tensor>,
        norm: FrozenNorm<'_, Tensor>,
    ) -> Result<Tensor> {
        sublayer_ops::attention_sublayer(self, x, projections, geometry, output, norm)
    }

    fn feed_forward(
        &self,
        x: &Tensor,
        up: FrozenLinear<'_, Tensor>,
        down: FrozenLinear<'_, Tensor>,
        norm: FrozenNorm<'_, Tensor>,
        dropout: Option<CounterMask>,
    ) -> Result<Tensor> {
        let norm = (norm.gamma, norm.beta, norm.eps);
        sublayer_ops::feed_forward(x, (up.weight, up.bias), (down.weight, down.bias), norm, dropout).core()
    }

    fn layer_norm_trained(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm_trained(x, gamma, beta, eps).core()
    }

    fn rms_norm(&self, x: &Tensor, gain: &Tensor, eps: f64) -> Result<Tensor> {
        let go = || -> candle_core::Result<Tensor> {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gain)
        };
        go().core()
    }

    fn cross_entropy(&self, logits: &Tensor, targets: Targets<'_>) -> Result<Tensor> {
        let rows = logits.dim(0).core()?;
        let go = || -> candle_core::Result<Tensor> {
            match targets {
                Targets::Classes(labels) => {
                    candle_nn::loss::cross_entropy(logits, &Tensor::from_slice(labels, labels.len(), &CPU)?)
                }
                Targets::Soft { probs, classes } => {
                    let targets = Tensor::from_slice(probs, (rows, classes), &CPU)?;
                    let logp = candle_nn::ops::log_softmax(logits, 1)?;
                    (targets * logp)?.sum_all()?.neg()? / rows as f64
                }
                Targets::Tokens { ids, weights } => {
                    let logp = candle_nn::ops::log_softmax(logits, 1)?;
                    let ids = Tensor::from_slice(ids, (ids.len(), 1), &CPU)?;
                    let picked = logp.gather(&ids, 1)?.squeeze(1)?;
                    let total: f32 = weights.iter().sum();
                    let w = Tensor::from_slice(weights, weights.len(), &CPU)?;
                    (picked * w)?.sum_all()?.neg()? / total.max(f32::MIN_POSITIVE) as f64
                }
            }
        };
        if let Targets::Classes(l) | Targets::Tokens { ids: l, .. } = targets
            && l.len() != rows
        {
            return Err(Error::Data(format!("{} targets for {rows} rows of logits", l.len())));
        }
        go().core()
    }
}

#[cfg(test)]
mod tests {
    lora_nn::model_tests!(super::CandleOps::default());
}
