//! Custom operations with hand-written backward passes (the linear layers'
//! are in [`crate::linear_ops`]).
//!
//! candle-nn's fast softmax and layer norm have no backward; these do, and
//! treat the affine parameters as frozen.
//! Their arithmetic is `lora_nn::kernels`', shared with the burn backend.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use lora_core::init::CounterMask;
use lora_nn::attention_kernel::{Heads, attention_backward, attention_forward};
use lora_nn::kernels::{self, ScoreBias};
use lora_nn::ops::Mask;

pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("custom op input has to be contiguous"),
    }
}

/// Runs a host kernel of `lora_nn::kernels` on a contiguous f32 input.
fn host_kernel(
    storage: &CpuStorage,
    layout: &Layout,
    kernel: impl FnOnce(&[f32], &mut [f32]),
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(storage, layout)?;
    let mut y = vec![0f32; x.len()];
    kernel(x, &mut y);
    Ok((CpuStorage::F32(y), layout.shape().clone()))
}

/// The input gradient of a host kernel from its input (or output) `saved` and the output's gradient.
fn host_gradient(
    saved: &Tensor,
    grad: &Tensor,
    kernel: impl FnOnce(&[f32], &[f32], &mut [f32]),
) -> Result<Option<Tensor>> {
    // Read in place: copying the saved tensor and the gradient out cost two
    // fresh buffers per call (GELU's are 25 MiB each at 32 x 128).
    let saved = saved.contiguous()?;
    let grad = grad.contiguous()?;
    let mut dx = vec![0f32; saved.elem_count()];
    with_f32s([&saved, &grad], |[x, g]| {
        kernel(x, g, &mut dx);
        Ok(())
    })?;
    Ok(Some(Tensor::from_vec(dx, saved.shape(), saved.device())?))
}

/// Exact (erf) GELU, Hugging Face's `"gelu"`, with a backward pass.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        host_kernel(storage, layout, |x, y| kernels::gelu_forward(x, y, None))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        host_gradient(arg, grad_res, |x, g, dx| kernels::gelu_backward(x, None, g, dx))
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Softmax over the last dimension with a backward pass.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = layout.shape().dims().last().copied().unwrap_or(1);
        host_kernel(storage, layout, |x, y| {
            kernels::softmax_forward(x, k, 1.0, ScoreBias::None, y)
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let k = res.dims().last().copied().unwrap_or(1);
        host_gradient(res, grad_res, |y, g, dx| kernels::softmax_backward(y, g, k, 1.0, dx))
    }
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// Layer norm over the last dimension with frozen `gamma` and `beta`.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-frozen-affine"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if layout.shape().dims().last() != Some(&self.gamma.len()) {
            candle_core::bail!("layer norm over {:?} with {} weights", layout.shape(), self.gamma.len());
        }
        host_kernel(storage, layout, |x, y| {
            kernels::layer_norm_forward(x, &self.gamma, &self.beta, self.eps, y)
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        host_gradient(arg, grad_res, |x, g, dx| {
            kernels::layer_norm_backward(x, &self.gamma, self.eps, g, dx)
        })
    }
}

/// Layer norm over the last dimension with frozen `gamma` and `beta` (copied to
/// the host once per call: the op's backward needs them as slices).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNorm {
        gamma: gamma.to_vec1()?,
        beta: beta.to_vec1()?,
        eps: eps as f32,
    };
    x.contiguous()?.apply_op1(op)
}

/// Layer norm over the last dimension with `gamma` and `beta` trained: one
/// node where the composed form was nine (each with a zeroed gradient buffer
/// and an addition in candle's backward pass, and two strided row sums).
struct LayerNormTrained {
    eps: f32,
}

impl CustomOp3 for LayerNormTrained {
    fn name(&self) -> &'static str {
        "layer-norm-trained-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gamma, beta) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        if l1.shape().dims().last() != Some(&gamma.len()) || beta.len() != gamma.len() {
            candle_core::bail!(
                "layer norm over {:?} with {} and {} weights",
                l1.shape(),
                gamma.len(),
                beta.len()
            );
        }
        host_kernel(s1, l1, |x, y| kernels::layer_norm_forward(x, gamma, beta, self.eps, y))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Grads3> {
        let (x, gamma_t, g) = (x.contiguous()?, gamma.contiguous()?, grad_res.contiguous()?);
        let n = gamma.elem_count();
        let mut dx = vec![0f32; x.elem_count()];
        let (dgamma, dbeta) = with_f32s([&x, &gamma_t, &g], |[xs, gm, gr]| {
            kernels::layer_norm_backward(xs, gm, self.eps, gr, &mut dx);
            Ok(kernels::layer_norm_affine_grads(xs, gr, n, self.eps))
        })?;
        grads3([dx, dgamma, dbeta], [&x, gamma, beta])
    }
}

/// Layer norm over the last dimension with trained `gamma` and `beta`.
pub fn layer_norm_trained(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNormTrained { eps: eps as f32 };
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Layer norm of `a + b` (a residual sum) with frozen `gamma` and `beta`, the sum never stored.
struct AddLayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl CustomOp2 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm-frozen-affine"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [a, b] = inputs([(s1, l1), (s2, l2)])?;
        if l1.shape() != l2.shape() || l1.shape().dims().last() != Some(&self.gamma.len()) {
            candle_core::bail!(
                "layer norm of {:?} + {:?} with {} weights",
                l1.shape(),
                l2.shape(),
                self.gamma.len()
            );
        }
        let mut y = vec![0f32; a.len()];
        kernels::add_layer_norm_forward(a, b, &self.gamma, &self.beta, self.eps, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (a, b, g) = (a.contiguous()?, b.contiguous()?, grad_res.contiguous()?);
        let mut dx = vec![0f32; a.elem_count()];
        with_f32s([&a, &b, &g], |[a, b, g]| {
            kernels::add_layer_norm_backward(a, b, &self.gamma, self.eps, g, &mut dx);
            Ok(())
        })?;
        let dx = Tensor::from_vec(dx, a.shape(), a.device())?;
        Ok((Some(dx.clone()), Some(dx)))
    }
}

/// `layer_norm(a + b)` with frozen `gamma` and `beta`.
pub fn add_layer_norm(a: &Tensor, b: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = AddLayerNorm {
        gamma: gamma.to_vec1()?,
        beta: beta.to_vec1()?,
        eps: eps as f32,
    };
    a.contiguous()?.apply_op2(&b.contiguous()?, op)
}

/// A contiguous f32 tensor's values, read in place under its storage's lock.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_f32s([t], |[x]| f(x))
}

/// Several contiguous f32 tensors' values, read in place under their storages' locks.
pub(crate) fn with_f32s<const N: usize, R>(ts: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let held: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut values = [&[][..]; N];
    for (slot, (storage, layout)) in values.iter_mut().zip(&held) {
        *slot = match &**storage {
            candle_core::Storage::Cpu(cpu) => contiguous_f32(cpu, layout)?,
            _ => candle_core::bail!("the fused kernels run on the CPU"),
        };
    }
    f(values)
}

/// A three-input custom op's gradients, each shaped as its input.
pub(crate) type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// `grads[i]` as a tensor shaped as `like[i]`, for a three-input op's backward pass.
pub(crate) fn grads3(grads: [Vec<f32>; 3], like: [&Tensor; 3]) -> Result<Grads3> {
    let [a, b, c] = grads;
    grads3_optional_first(Some(a), [b, c], like)
}

/// The gradients of a three-input op whose first input's may be skipped
/// (`None`: no variable lies under it), each shaped as its input.
pub(crate) fn grads3_optional_first(
    first: Option<Vec<f32>>,
    rest: [Vec<f32>; 2],
    like: [&Tensor; 3],
) -> Result<Grads3> {
    let dev = like[0].device();
    let [b, c] = rest;
    Ok((
        first.map(|g| Tensor::from_vec(g, like[0].shape(), dev)).transpose()?,
        Some(Tensor::from_vec(b, like[1].shape(), dev)?),
        Some(Tensor::from_vec(c, like[2].shape(), dev)?),
    ))
}

/// The contiguous f32 values of a custom op's inputs.
pub(crate) fn inputs<'a, const N: usize>(parts: [(&'a CpuStorage, &'a Layout); N]) -> Result<[&'a [f32]; N]> {
    let mut values = [&[][..]; N];
    for (slot, (storage, layout)) in values.iter_mut().zip(parts) {
        *slot = contiguous_f32(storage, layout)?;
    }
    Ok(values)
}

/// Inverted dropout with a counter-based mask evaluated inside the pass (no
/// mask tensor, one parallel pass); its gradient is the same op on the
/// output's gradient. Each value is `x * factor`, as the composed `x * mask`.
struct Dropout(CounterMask);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "counter-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mask = self.0;
        host_kernel(storage, layout, |x, y| kernels::masked_copy_into(mask, x, y))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        dropout(grad_res, self.0).map(Some)
    }
}

/// `x` times the counter-based mask over its values in row-major order.
pub fn dropout(x: &Tensor, mask: CounterMask) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout(mask))
}

/// Multi-head attention over the linears' outputs `[rows, heads * head_dim]`
/// (`lora_nn::attention_kernel`): the probabilities are kept for the backward
/// pass only when a graph holds this op.
struct Attention {
    heads: Heads,
    scale: f32,
    /// `[batch * keys]` additive bias, or `None`; causal when `causal`.
    bias: Option<Vec<f32>>,
    causal: bool,
    dropout: Option<CounterMask>,
    /// Whether a graph will hold this node (then the probabilities are kept).
    keep: bool,
    probs: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [q, k, v] = inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let h = self.heads;
        if !h.valid() || q.len() != h.q_len() || k.len() != h.kv_len() || v.len() != h.kv_len() {
            candle_core::bail!(
                "attention {h:?} of q {:?}, k {:?}, v {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let bias = kernel_bias(&self.bias, self.causal, h);
        let mut out = vec![0f32; h.q_len()];
        let mut probs = self.keep.then(|| vec![0f32; h.probs_len()]);
        attention_forward(
            q,
            k,
            v,
            h,
            self.scale,
            bias,
            self.dropout,
            probs.as_deref_mut(),
            &mut out,
        );
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = probs;
        Ok((
            CpuStorage::F32(out),
            Shape::from((h.batch * h.queries, h.heads * h.head_dim)),
        ))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Grads3> {
        let h = self.heads;
        let probs = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let Some(probs) = probs.as_ref() else {
            candle_core::bail!("attention backward without its forward pass");
        };
        let g = grad_res.contiguous()?;
        let (mut dq, mut dk, mut dv) = (vec![0f32; h.q_len()], vec![0f32; h.kv_len()], vec![0f32; h.kv_len()]);
        with_f32s([q, k, v, &g], |[q, k, v, g]| {
            attention_backward(
                q,
                k,
                v,
                probs,
                g,
                h,
                self.scale,
                self.dropout,
                &mut dq,
                &mut dk,
                &mut dv,
            );
            Ok(())
        })?;
        grads3([dq, dk, dv], [q, k, v])
    }
}

/// The additive `[batch * keys]` bias of a padding mask (0, or -1e9 for
/// padding), and whether the mask is causal.
pub(crate) fn score_bias(mask: Mask<'_>, heads: Heads) -> Result<(Option<Vec<f32>>, bool)> {
    Ok(match mask {
        Mask::None => (None, false),
        Mask::Padding(m) => {
            if m.len() != heads.batch * heads.keys {
                candle_core::bail!("{} mask values for {} x {} keys", m.len(), heads.batch, heads.keys);
            }
            (
                Some(m.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect()),
                false,
            )
        }
        Mask::Causal => (None, true),
    })
}

/// The kernel's view of a bias from [`score_bias`].
pub(crate) fn kernel_bias(bias: &Option<Vec<f32>>, causal: bool, heads: Heads) -> ScoreBias<'_> {
    match (bias, causal) {
        (_, true) => ScoreBias::Causal { queries: heads.queries },
        (Some(b), false) => ScoreBias::Keys(b),
        (None, false) => ScoreBias::None,
    }
}

/// `softmax(q k^T * scale + mask) v` per head on `q [batch * queries, heads * head_dim]`
/// and `k`, `v [batch * keys, kv_heads * head_dim]`, in one fused pass each way,
/// with the probabilities dropped out by `dropout`'s mask.
pub fn attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    mask: Mask<'_>,
    scale: f64,
    dropout: Option<CounterMask>,
) -> Result<Tensor> {
    let (bias, causal) = score_bias(mask, heads)?;
    let op = Attention {
        heads,
        scale: scale as f32,
        bias,
        causal,
        dropout,
        keep: q.track_op() || k.track_op() || v.track_op(),
        probs: Mutex::new(None),
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{close, var};
    use candle_core::{D, Device};

    #[test]
    fn fused_attention_matches_the_composed_ops_and_their_gradients() {
        use lora_nn::ops::default_attention_rows;
        let ops = crate::CandleOps::default();
        let h = Heads {
            batch: 2,
            queries: 6,
            keys: 6,
            heads: 3,
            kv_heads: 3,
            head_dim: 4,
        };
        let (q, k, v) = (var(&[12, 12], 21), var(&[12, 12], 22), var(&[12, 12], 23));
        let weights = var(&[12, 12], 24).as_tensor().detach();
        let padding = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        // With attention dropout, the kernel's mask (drawn inside it, both ways)
        // must be the one the composed ops multiply the probabilities by.
        let dropouts = [None, CounterMask::new(9, 0.3)];
        let cases = [Mask::None, Mask::Padding(&padding), Mask::Causal]
            .into_iter()
            .flat_map(|m| dropouts.map(|d| (m, d)));
        for (mask, dropout) in cases {
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let fast = attention_rows(qt, kt, vt, h, mask, 0.5, dropout).unwrap();
            let slow = default_attention_rows(&ops, qt, kt, vt, h, mask, 0.5, dropout).unwrap();
            close(&fast, &slow, 1e-5);
            let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                close(gf.get(x).unwrap(), gs.get(x).unwrap(), 1e-5);
            }
        }
    }

    #[test]
    fn dropout_is_the_composed_mask_product_both_ways() {
        use lora_nn::ops::mask_values;
        let x = var(&[7, 9], 12);
        let mask = CounterMask::new(4, 0.3).unwrap();
        let fast = dropout(x.as_tensor(), mask).unwrap();
        let m = Tensor::from_vec(mask_values(mask, 63), (7, 9), &Device::Cpu).unwrap();
        let slow = (x.as_tensor() * &m).unwrap();
        close(&fast, &slow, 0.0);
        let weights = var(&[7, 9], 13).as_tensor().detach();
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 0.0);
    }

    #[test]
    fn gelu_matches_candle_and_its_gradient_matches_composed_ops() {
        let x = var(&[5, 9], 10);
        let fast = gelu(x.as_tensor()).unwrap();
        let slow = x.as_tensor().gelu_erf().unwrap();
        close(&fast, &slow, 1e-6);
        let weights = var(&[5, 9], 11).as_tensor().detach();
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn softmax_gradient_matches_composed_ops() {
        let x = var(&[3, 7], 4);
        let weights = var(&[3, 7], 5).as_tensor().detach();
        let fast = softmax_last_dim(x.as_tensor()).unwrap();
        let slow = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        close(&fast, &slow, 1e-6);
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn layer_norm_gradient_matches_composed_ops() {
        let x = var(&[4, 6], 6);
        let gamma = var(&[6], 7).as_tensor().detach();
        let beta = var(&[6], 8).as_tensor().detach();
        let weights = var(&[4, 6], 9).as_tensor().detach();
        let fast = layer_norm(x.as_tensor(), &gamma, &beta, 1e-12).unwrap();
        let xs = x.as_tensor();
        let mean = xs.mean_keepdim(D::Minus1).unwrap();
        let xc = xs.broadcast_sub(&mean).unwrap();
        let var_ = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let slow = xc
            .broadcast_div(&(var_ + 1e-12).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma)
            .unwrap()
            .broadcast_add(&beta)
            .unwrap();
        close(&fast, &slow, 1e-5);
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
    }

    /// The trained layer norm against candle's ops composed: output and the
    /// gradients of the input, `gamma` and `beta` (rows over several tasks).
    #[test]
    fn trained_layer_norm_matches_composed_ops_with_affine_gradients() {
        let (rows, n) = (300, 6);
        let x = var(&[rows, n], 10);
        let (gamma, beta) = (var(&[n], 11), var(&[n], 12));
        let weights = var(&[rows, n], 13).as_tensor().detach();
        let fast = layer_norm_trained(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
        let xs = x.as_tensor();
        let mean = xs.mean_keepdim(D::Minus1).unwrap();
        let xc = xs.broadcast_sub(&mean).unwrap();
        let var_ = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let slow = xc
            .broadcast_div(&(var_ + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(gamma.as_tensor())
            .unwrap()
            .broadcast_add(beta.as_tensor())
            .unwrap();
        close(&fast, &slow, 1e-5);
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
        // Sums over 300 rows: a looser bound for their different order.
        close(gf.get(&gamma).unwrap(), gs.get(&gamma).unwrap(), 1e-3);
        close(gf.get(&beta).unwrap(), gs.get(&beta).unwrap(), 1e-3);
    }
}
