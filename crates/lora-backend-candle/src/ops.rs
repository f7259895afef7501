//! Custom operations with hand-written backward passes.
//!
//! candle's matmul backward computes the gradient of both operands, including
//! the frozen base weight, which LoRA never needs: [`frozen_linear`] skips it
//! and saves a third of the training step. candle-nn's fast softmax and layer
//! norm have no backward; these do, and treat the affine parameters as frozen.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};

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

/// `erf` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, 5e-7 after f32 rounding): one
/// `exp` and a polynomial, several times cheaper than libm's `erff`, which a
/// profile showed at 9% of a training step.
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    if x < 0.0 { -y } else { y }
}

/// Exact (erf) GELU, `x * Phi(x)`, Hugging Face's `"gelu"`, with a backward pass.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let out = x
            .iter()
            .map(|&v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)))
            .collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d/dx x Phi(x) = Phi(x) + x phi(x)
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let inv_sqrt_2pi = 0.398_942_3_f32;
        let dx = x
            .iter()
            .zip(&g)
            .map(|(&v, &g)| {
                let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = inv_sqrt_2pi * (-0.5 * v * v).exp();
                g * (cdf + v * pdf)
            })
            .collect();
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
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
        let x = contiguous_f32(storage, layout)?;
        let n = layout.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (d, s) in dst.iter_mut().zip(src) {
                *d = (s - max).exp();
                sum += *d;
            }
            let inv = 1.0 / sum;
            dst.iter_mut().for_each(|d| *d *= inv);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
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

impl LayerNorm {
    fn normalise(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-frozen-affine"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let n = self.gamma.len();
        let mut out = vec![0f32; x.len()];
        for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let (mean, rstd) = self.normalise(src);
            for i in 0..n {
                dst[i] = (src[i] - mean) * rstd * self.gamma[i] + self.beta[i];
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = rstd * (dyg - mean(dyg) - xhat * mean(dyg * xhat)), dyg = dy * gamma
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let n = self.gamma.len();
        let mut dx = vec![0f32; x.len()];
        let mut dyg = vec![0f32; n];
        for ((src, gr), dst) in x.chunks_exact(n).zip(g.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
            let (mean, rstd) = self.normalise(src);
            let (mut m1, mut m2) = (0f32, 0f32);
            for i in 0..n {
                dyg[i] = gr[i] * self.gamma[i];
                m1 += dyg[i];
                m2 += dyg[i] * (src[i] - mean) * rstd;
            }
            let (m1, m2) = (m1 / n as f32, m2 / n as f32);
            for i in 0..n {
                let xhat = (src[i] - mean) * rstd;
                dst[i] = rstd * (dyg[i] - m1 - xhat * m2);
            }
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
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
    use candle_core::{Device, Var};

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
    fn fast_erf_is_within_5e_7_of_the_series() {
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let exact = libm_erf(x);
            assert!(
                (super::erf(x) - exact).abs() < 5e-7,
                "erf({x}): {} vs {exact}",
                super::erf(x)
            );
        }
    }

    /// Reference erf in f64: Maclaurin series up to |x| = 3, erfc's continued fraction beyond.
    fn libm_erf(x: f32) -> f32 {
        let x = f64::from(x);
        if x.abs() > 3.0 {
            // Continued fraction for erfc, x > 0.
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..=60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            return (x.signum() * (1.0 - erfc)) as f32;
        }
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
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
