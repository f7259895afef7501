//! Custom operations with hand-written backward passes.
//!
//! candle's matmul backward computes the gradient of both operands, including
//! the frozen base weight, which LoRA never needs: [`frozen_linear`] skips it
//! and saves a third of the training step. candle-nn's fast softmax and layer
//! norm have no backward; these do, and treat the affine parameters as frozen.
//! Their arithmetic is `lora_nn::kernels`', shared with the burn backend.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use lora_nn::kernels::{self, ScoreBias};

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("custom op input has to be contiguous"),
    }
}

/// `x W^T + b` for a frozen `W [out, in]` and `b`: the backward pass returns
/// the gradient of `x` only. The bias is added in the same pass. A `W` kept in
/// bf16 or f16 is widened to f32 inside each pass (candle's CPU matmul has no
/// bf16 kernel and widens too) and the copy dropped at once: the graph holds
/// the narrow weight, so the halved memory holds during the step as well.
struct FrozenMatmul {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let dims = layout.shape().dims();
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let x = Tensor::from_slice(x, (rows, dims[dims.len() - 1]), &candle_core::Device::Cpu)?;
        let y = x.matmul(&widened(&self.weight)?.t()?)?;
        let out_dim = y.dim(1)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("at least one dim") = out_dim;
        let mut y = y.flatten_all()?.to_vec1::<f32>()?;
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(out_dim) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dims = grad_res.dims().to_vec();
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let g = grad_res
            .reshape((rows, dims[dims.len() - 1]))?
            .matmul(&widened(&self.weight)?)?;
        let mut shape = dims;
        *shape.last_mut().expect("at least one dim") = self.weight.dim(1)?;
        Ok(Some(g.reshape(shape)?))
    }
}

fn widened(w: &Tensor) -> Result<Tensor> {
    if w.dtype() == candle_core::DType::F32 {
        Ok(w.clone())
    } else {
        w.to_dtype(candle_core::DType::F32)
    }
}

/// `x W^T + b` with `W` and `b` frozen.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    x.contiguous()?.apply_op1(FrozenMatmul {
        weight: weight.clone(),
        bias,
    })
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
    let x = saved.flatten_all()?.to_vec1::<f32>()?;
    let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut dx = vec![0f32; x.len()];
    kernel(&x, &g, &mut dx);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol, "{x} vs {y}");
        }
    }

    fn var(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        let v = lora_core::init::normal(1.0, n, &mut lora_core::init::rng(seed));
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn frozen_linear_matches_matmul_forward_and_input_gradient() {
        let x = var(&[2, 3, 4], 1);
        let w = var(&[5, 4], 2).as_tensor().detach();
        let b = var(&[5], 3).as_tensor().detach();
        let fast = frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap();
        let slow = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        close(&fast, &slow, 1e-5);
        let gf = fast.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gs = slow.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
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
}
