//! The linear layers' operations: a frozen `x W^T + b`, and the same with its
//! LoRA update fused in, each one node of candle's graph with a hand-written
//! backward pass.
//!
//! candle's matmul backward computes the gradient of both operands, including
//! the frozen base weight, which LoRA never needs: [`frozen_linear`] skips it
//! and saves a third of the training step. [`lora_linear`] goes further: the
//! composed `base + scale * (x A^T) B^T` is five graph nodes, and candle's
//! backward pass starts every node's gradient as a fresh zero tensor that it
//! then adds into (`GradStore::or_insert`), so each node over `[rows, out]`
//! costs a zeroing pass, an addition pass and two buffers; as one node the
//! update is added by gemm into the base's output, and the input's two
//! gradients (base and update) into one buffer.
//!
//! Products are written by gemm straight into fresh buffers (no zeroing pass:
//! memset was 2-3% of a training step) and read from the tensors in place.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use lora_nn::kernels::add_rows;
use lora_nn::matmul::{Mat, gemm_into, product};
use lora_nn::sublayer::HostLinear;

use crate::ops::{Grads3, contiguous_f32, grads3, grads3_optional_first, inputs, with_f32, with_f32s};

/// `x * mask`, or `None` without a mask.
fn masked(x: &[f32], mask: Option<&[f32]>) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    mask.map(|m| x.par_iter().zip(m).map(|(x, m)| x * m).collect())
}

/// `(rows, in)` of an input `[..., in]`.
fn rows_and_width(dims: &[usize]) -> (usize, usize) {
    let width = dims.last().copied().unwrap_or(1);
    (dims[..dims.len().saturating_sub(1)].iter().product(), width)
}

/// `dims` with the last dimension replaced by `last`.
fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut shape = dims.to_vec();
    if let Some(l) = shape.last_mut() {
        *l = last;
    }
    Shape::from(shape)
}

/// A frozen `W [out, in]` and bias. A `W` kept in bf16 or f16 is widened to
/// f32 inside each pass (candle's CPU matmul has no bf16 kernel and widens
/// too) and the copy dropped at once: the graph holds the narrow weight, so
/// the halved memory holds during the step as well.
pub(crate) struct Frozen {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

impl Frozen {
    pub(crate) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Ok(Self {
            weight: weight.clone(),
            bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
        })
    }

    pub(crate) fn dims(&self) -> Result<(usize, usize)> {
        self.weight.dims2()
    }

    /// Runs `f` on the weight's f32 values, widened for the call if need be.
    fn with_weight<R>(&self, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        if self.weight.dtype() == candle_core::DType::F32 {
            with_f32(&self.weight.contiguous()?, f)
        } else {
            with_f32(&self.weight.to_dtype(candle_core::DType::F32)?, f)
        }
    }

    /// Runs `f` on the layer as host slices (the weight widened to f32 if need be).
    pub(crate) fn host<R>(&self, f: impl FnOnce(HostLinear) -> Result<R>) -> Result<R> {
        let (out, inp) = self.dims()?;
        self.with_weight(|w| {
            f(HostLinear {
                w,
                b: self.bias.as_deref(),
                out,
                inp,
            })
        })
    }

    /// `x W^T + b` for `x [rows, in]` (`HostLinear::forward`), its sizes checked.
    pub(crate) fn forward(&self, x: &[f32], rows: usize, inp: usize) -> Result<Vec<f32>> {
        let (out, w_in) = self.dims()?;
        if w_in != inp || x.len() != rows * inp {
            candle_core::bail!("frozen linear of [{out}, {w_in}] on {rows} rows of {inp}");
        }
        self.host(|l| Ok(l.forward(x, rows)))
    }

    /// `dx += dy W`: the input's gradient from the output's `dy [rows, out]`, added.
    pub(crate) fn add_input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32]) -> Result<()> {
        let (out, inp) = self.dims()?;
        if dy.len() != rows * out || dx.len() != rows * inp {
            candle_core::bail!("frozen linear gradient of {} values into {}", dy.len(), dx.len());
        }
        // SAFETY: dx is [rows, in] (checked) and initialised; dy [rows, out], w [out, in].
        self.with_weight(|w| {
            unsafe {
                gemm_into(
                    dx.as_mut_ptr(),
                    (rows, inp, out),
                    Mat::rows(dy, out),
                    Mat::rows(w, inp),
                    1.0,
                    true,
                )
            };
            Ok(())
        })
    }

    /// `dy W`: the input's gradient from the output's `dy [rows, out]`.
    fn input_grad(&self, dy: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.host(|l| Ok(l.input_grad(dy, rows)))
    }
}

/// `x W^T + b` for a frozen `W [out, in]` and `b`: the backward pass returns
/// the gradient of `x` only.
struct FrozenMatmul(Frozen);

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let dims = layout.shape().dims();
        let (rows, inp) = rows_and_width(dims);
        let y = self.0.forward(x, rows, inp)?;
        Ok((CpuStorage::F32(y), with_last(dims, self.0.dims()?.0)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dims = grad_res.dims().to_vec();
        let (rows, _) = rows_and_width(&dims);
        let dx = with_f32(&grad_res.contiguous()?, |dy| self.0.input_grad(dy, rows))?;
        let shape = with_last(&dims, self.0.dims()?.1);
        Ok(Some(Tensor::from_vec(dx, shape, grad_res.device())?))
    }
}

/// `x W^T + b` with `W` and `b` frozen.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenMatmul(Frozen::new(weight, bias)?))
}

/// `x W^T + b` over `(x, W [out, in], b [out])`, all three trained (a full
/// fine-tune, a classifier head): one node both ways. Composed, candle's
/// broadcast-add backward sums the bias gradient down the rows with a strided
/// loop on one thread, which took a fifth of a small ViT's training step.
struct TrainedMatmul;

impl CustomOp3 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
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
        let [x, w, b] = inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let dims = l1.shape().dims();
        let (rows, inp) = rows_and_width(dims);
        let out = b.len();
        if w.len() != out * inp {
            candle_core::bail!("linear of {:?} and bias {:?} on {dims:?}", l2.shape(), l3.shape());
        }
        let mut y = product(rows, out, inp, Mat::rows(x, inp), Mat::transposed(w, inp), 1.0);
        add_rows(&mut y, b);
        Ok((CpuStorage::F32(y), with_last(dims, out)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Grads3> {
        let dims = x.dims().to_vec();
        let (rows, inp) = rows_and_width(&dims);
        let out = b.elem_count();
        let (x_t, w_t, dy_t) = (x.contiguous()?, w.contiguous()?, grad_res.contiguous()?);
        let (dx, dw, db) = with_f32s([&x_t, &w_t, &dy_t], |[x, w, dy]| {
            if dy.len() != rows * out || w.len() != out * inp {
                candle_core::bail!("linear gradient of {} values for {rows} x {out}", dy.len());
            }
            let dx = product(rows, inp, out, Mat::rows(dy, out), Mat::rows(w, inp), 1.0);
            let dw = product(out, inp, rows, Mat::transposed(dy, out), Mat::rows(x, inp), 1.0);
            Ok((dx, dw, lora_nn::kernels::column_sums(dy, out)))
        })?;
        grads3([dx, dw, db], [x, w, b])
    }
}

/// `x W^T + b` with `W [out, in]` and `b [out]` trained.
pub fn trained_linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, TrainedMatmul)
}

/// A LoRA update `scale * (x * mask) A^T B^T` on host slices: `A [r, in]`,
/// `B [out, r]`, `x [rows, in]`.
pub(crate) struct LoraUpdate<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rows: usize,
    pub inp: usize,
    pub out: usize,
    pub r: usize,
    pub scale: f32,
    pub mask: Option<&'a [f32]>,
}

impl LoraUpdate<'_> {
    /// `y += scale * (x * mask) A^T B^T`, the update added by gemm into the base's output.
    pub fn add_to(&self, x: &[f32], y: &mut [f32]) {
        let (rows, inp, out, r) = (self.rows, self.inp, self.out, self.r);
        let dropped = masked(x, self.mask);
        let input = dropped.as_deref().unwrap_or(x);
        let t = product(rows, r, inp, Mat::rows(input, inp), Mat::transposed(self.a, inp), 1.0);
        assert_eq!(y.len(), rows * out, "LoRA update into {} values", y.len());
        // SAFETY: y is [rows, out] (checked) and initialised, t [rows, r], b [out, r].
        unsafe {
            gemm_into(
                y.as_mut_ptr(),
                (rows, out, r),
                Mat::rows(&t, r),
                Mat::transposed(self.b, r),
                self.scale,
                true,
            )
        };
    }

    /// The gradients of `A` and `B` from the output's `dy [rows, out]`, and the
    /// update's part of the input's gradient added into `dx` when given.
    pub fn backward(&self, x: &[f32], dy: &[f32], dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
        let (rows, inp, out, r) = (self.rows, self.inp, self.out, self.r);
        let (a, b) = (self.a, self.b);
        let dropped = masked(x, self.mask);
        let input = dropped.as_deref().unwrap_or(x);
        // t = (x * mask) A^T, g = scale * dy B: the update's two factors' gradients.
        let t = product(rows, r, inp, Mat::rows(input, inp), Mat::transposed(a, inp), 1.0);
        let g = product(rows, r, out, Mat::rows(dy, out), Mat::rows(b, r), self.scale);
        let db = product(out, r, rows, Mat::transposed(dy, out), Mat::rows(&t, r), self.scale);
        let da = product(r, inp, rows, Mat::transposed(&g, r), Mat::rows(input, inp), 1.0);
        if let Some(dx) = dx {
            assert_eq!(dx.len(), rows * inp, "LoRA input gradient into {} values", dx.len());
            match self.mask {
                // SAFETY: dx is [rows, in] (checked) and initialised, g [rows, r], a [r, in].
                None => unsafe {
                    gemm_into(
                        dx.as_mut_ptr(),
                        (rows, inp, r),
                        Mat::rows(&g, r),
                        Mat::rows(a, inp),
                        1.0,
                        true,
                    )
                },
                Some(mask) => {
                    use rayon::prelude::*;
                    let through = product(rows, inp, r, Mat::rows(&g, r), Mat::rows(a, inp), 1.0);
                    dx.par_iter_mut()
                        .zip(through.par_iter().zip(mask))
                        .for_each(|(d, (u, m))| *d += u * m);
                }
            }
        }
        (da, db)
    }
}

/// `x W^T + b + scale * (x * mask) A^T B^T` over `(x, A [r, in], B [out, r])`,
/// with PEFT's `scale` and LoRA-dropout mask; gradients for all three.
struct LoraMatmul {
    base: Frozen,
    scale: f32,
    mask: Option<Vec<f32>>,
}

impl LoraMatmul {
    /// `(rows, in, out, r)`, checked against `x`, `A` and `B`'s lengths.
    fn sizes(&self, x: usize, inp: usize, a: usize, b: usize) -> Result<(usize, usize, usize, usize)> {
        let (out, w_in) = self.base.dims()?;
        let r = a / inp.max(1);
        let rows = x / inp.max(1);
        if w_in != inp || r * inp != a || out * r != b || rows * inp != x {
            candle_core::bail!(
                "LoRA linear of [{out}, {w_in}] with A of {a} and B of {b} values on {x} inputs of {inp}"
            );
        }
        if self.mask.as_ref().is_some_and(|m| m.len() != x) {
            candle_core::bail!(
                "LoRA dropout mask of {} values for {x} inputs",
                self.mask.as_ref().map_or(0, Vec::len)
            );
        }
        Ok((rows, inp, out, r))
    }

    /// The update's host passes over `A` and `B` at the sizes [`Self::sizes`] checked.
    fn update<'a>(
        &'a self,
        a: &'a [f32],
        b: &'a [f32],
        (rows, inp, out, r): (usize, usize, usize, usize),
    ) -> LoraUpdate<'a> {
        LoraUpdate {
            a,
            b,
            rows,
            inp,
            out,
            r,
            scale: self.scale,
            mask: self.mask.as_deref(),
        }
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
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
        let [x, a, b] = inputs([(s1, l1), (s2, l2), (s3, l3)])?;
        let dims = l1.shape().dims();
        let (rows, inp, out, r) = self.sizes(x.len(), rows_and_width(dims).1, a.len(), b.len())?;
        let mut y = self.base.forward(x, rows, inp)?;
        self.update(a, b, (rows, inp, out, r)).add_to(x, &mut y);
        Ok((CpuStorage::F32(y), with_last(dims, out)))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Grads3> {
        let dims = x.dims().to_vec();
        // An input no variable lies under (the first layer's, under frozen
        // embeddings) needs no gradient: skipping it saves the base's largest
        // product and candle's zeroing and addition of the result.
        let needs_input_grad = x.track_op();
        let (x_t, a_t, b_t, dy_t) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            grad_res.contiguous()?,
        );
        let (dx, da, db) = with_f32s([&x_t, &a_t, &b_t, &dy_t], |[x, a, b, dy]| {
            let (rows, inp, out, r) = self.sizes(x.len(), rows_and_width(&dims).1, a.len(), b.len())?;
            if dy.len() != rows * out {
                candle_core::bail!("LoRA linear gradient of {} values for {rows} x {out}", dy.len());
            }
            let update = self.update(a, b, (rows, inp, out, r));
            if !needs_input_grad {
                let (da, db) = update.backward(x, dy, None);
                return Ok((None, da, db));
            }
            let mut dx = self.base.input_grad(dy, rows)?;
            let (da, db) = update.backward(x, dy, Some(&mut dx));
            Ok((Some(dx), da, db))
        })?;
        grads3_optional_first(dx, [da, db], [x, a, b])
    }
}

/// `x W^T + b + scale * (x * mask) A^T B^T` for a frozen `W [out, in]` and `b`
/// and trained `A [r, in]`, `B [out, r]`, as one operation both ways.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    let op = LoraMatmul {
        base: Frozen::new(weight, bias)?,
        scale: scale as f32,
        mask,
    };
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{close_rel as close, var};
    use candle_core::Device;

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

    /// The trained linear against candle's matmul and broadcast add: output and
    /// the gradients of the input, the weight and the bias.
    #[test]
    fn trained_linear_matches_matmul_and_its_gradients() {
        let (rows, inp, out) = (300, 6, 5);
        let x = var(&[2, rows / 2, inp], 1);
        let (w, b) = (var(&[out, inp], 2), var(&[out], 3));
        let fast = trained_linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let slow = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        close(&fast, &slow, 1e-5);
        let weights = var(&[2, rows / 2, out], 4).as_tensor().detach();
        let loss = |y: &Tensor| (y * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
        let gf = loss(&fast).backward().unwrap();
        let gs = loss(&slow).backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
        close(gf.get(&w).unwrap(), gs.get(&w).unwrap(), 1e-4);
        close(gf.get(&b).unwrap(), gs.get(&b).unwrap(), 1e-4);
    }

    /// The fused LoRA linear against candle's own ops composed, both ways, with
    /// and without a dropout mask, and with a bf16 base weight.
    #[test]
    fn lora_linear_matches_the_composed_ops_and_their_gradients() {
        for (masked, dtype) in [
            (false, candle_core::DType::F32),
            (true, candle_core::DType::F32),
            (true, candle_core::DType::BF16),
        ] {
            let (rows, inp, out, r) = (7, 6, 5, 3);
            let x = var(&[rows, inp], 1);
            let w = var(&[out, inp], 2).as_tensor().detach().to_dtype(dtype).unwrap();
            let bias = var(&[out], 3).as_tensor().detach();
            let (a, b) = (var(&[r, inp], 4), var(&[out, r], 5));
            let mask: Option<Vec<f32>> = masked.then(|| (0..rows * inp).map(|i| [0.0, 1.25][i % 3 % 2]).collect());
            let scale = 0.75;
            let fast = lora_linear(
                x.as_tensor(),
                &w,
                Some(&bias),
                (a.as_tensor(), b.as_tensor()),
                scale,
                mask.clone(),
            )
            .unwrap();
            let input = match &mask {
                Some(m) => (x.as_tensor() * Tensor::from_vec(m.clone(), (rows, inp), &Device::Cpu).unwrap()).unwrap(),
                None => x.as_tensor().clone(),
            };
            let wide = w.to_dtype(candle_core::DType::F32).unwrap();
            let update = input
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .matmul(&b.as_tensor().t().unwrap())
                .unwrap();
            let slow = (x
                .as_tensor()
                .matmul(&wide.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                + (update * scale).unwrap())
            .unwrap();
            close(&fast, &slow, 1e-5);
            // A loss that weighs every output differently, so each gradient is distinct.
            let weights = var(&[rows, out], 6).as_tensor().detach();
            let loss = |y: &Tensor| (y * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
            let gf = loss(&fast).backward().unwrap();
            let gs = loss(&slow).backward().unwrap();
            for v in [&x, &a, &b] {
                close(gf.get(v).unwrap(), gs.get(v).unwrap(), 1e-4);
            }
        }
    }
}
