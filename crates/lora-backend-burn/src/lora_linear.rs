//! A linear layer that may carry a LoRA adapter, with PEFT's semantics:
//! `y = x W^T + b + scale * dropout(x) A^T B^T`.
//!
//! burn's own LoRA (`Module::apply_lora`) is not used: it reparameterises the
//! weight as `W + scale * a b` (a dense weight-shaped product and gradient every
//! step), has no dropout on the adapter's input, no rsLoRA and initialises `a`
//! with N(0, 1/r). This layer keeps the two factors apart, as PEFT does.
//!
//! Tensors are stored in PEFT's layout (`W` and `B` as `[out, in]`-style
//! matrices, `A` as `[r, in]`); products use transposed views, which burn's
//! flex backend multiplies through strided gemm without copying.

use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use lora_core::init::{SeededRng, dropout_mask};

/// Draws inverted-dropout masks in a fixed order from one seeded stream.
pub struct MaskSource {
    rng: SeededRng,
    device: Device,
    /// Shapes of the masks drawn so far, in order.
    pub drawn: Vec<[usize; 2]>,
}

impl MaskSource {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            rng: lora_core::init::rng(seed),
            device: device.clone(),
            drawn: Vec::new(),
        }
    }

    pub fn mask(&mut self, p: f32, rows: usize, cols: usize) -> Option<Tensor<2>> {
        if p <= 0.0 {
            return None;
        }
        let m = dropout_mask(p, rows * cols, &mut self.rng);
        self.drawn.push([rows, cols]);
        Some(Tensor::from_data(TensorData::new(m, [rows, cols]), &self.device))
    }
}

/// The trainable half of a LoRA layer.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in]`, Kaiming-uniform at start.
    pub a: Tensor<2>,
    /// `[out, r]`, zero at start, so the adapted layer starts equal to the base.
    pub b: Tensor<2>,
    pub scale: f64,
    pub dropout: f32,
}

impl LoraWeights {
    /// The same weights as leaves that record gradients (for one training step).
    pub fn tracked(&self) -> Self {
        Self {
            a: self.a.clone().autodiff().require_grad(),
            b: self.b.clone().autodiff().require_grad(),
            scale: self.scale,
            dropout: self.dropout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// `[out, in]`, from the base model: never written nor tracked, except in a
    /// model whose base trains (a ViT in full mode, which has no adapters).
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    lora: Option<LoraWeights>,
    /// `W + scale * B A` while merged; the base weight itself is kept untouched.
    merged: Option<Tensor<2>>,
}

impl LoraLinear {
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            merged: None,
        }
    }

    pub fn with_lora(mut self, lora: LoraWeights) -> Self {
        self.lora = Some(lora);
        self
    }

    pub fn lora(&self) -> Option<&LoraWeights> {
        self.lora.as_ref()
    }

    pub fn lora_mut(&mut self) -> Option<&mut LoraWeights> {
        self.lora.as_mut()
    }

    pub fn weight(&self) -> &Tensor<2> {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor<1>> {
        self.bias.as_ref()
    }

    /// The base weight itself, for a model whose base trains (a ViT in full mode).
    pub fn weight_mut(&mut self) -> &mut Tensor<2> {
        &mut self.weight
    }

    pub fn bias_mut(&mut self) -> Option<&mut Tensor<1>> {
        self.bias.as_mut()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x` is `[rows, in]`; `dropout_mask`, when given, is an inverted-dropout
    /// mask of the same shape applied to the adapter's input only.
    pub fn forward(&self, x: Tensor<2>, dropout_mask: Option<Tensor<2>>) -> Tensor<2> {
        if let Some(merged) = &self.merged {
            return linear(x, merged.clone().transpose(), self.bias.clone());
        }
        let Some(lora) = &self.lora else {
            return linear(x, self.weight.clone().transpose(), self.bias.clone());
        };
        let base = linear(x.clone(), self.weight.clone().transpose(), self.bias.clone());
        let input = match dropout_mask {
            Some(mask) => x * mask,
            None => x,
        };
        let down = linear(input, lora.a.clone().transpose(), None);
        let update = linear(down, lora.b.clone().transpose(), None);
        base + update.mul_scalar(lora.scale)
    }

    /// [`forward`](Self::forward) with the adapter's dropout mask drawn from
    /// `masks` (training) when the layer has an adapter; merged or not, so that
    /// the stream does not depend on the merge state.
    pub fn forward_masked(&self, x: Tensor<2>, masks: &mut Option<&mut MaskSource>) -> Tensor<2> {
        let mask = match (masks.as_deref_mut(), &self.lora) {
            (Some(src), Some(lora)) => {
                let [rows, cols] = x.dims();
                src.mask(lora.dropout, rows, cols)
            }
            _ => None,
        };
        self.forward(x, mask)
    }

    /// `scale * B A`, shaped like the base weight, without gradient tracking.
    pub fn delta(&self) -> Option<Tensor<2>> {
        self.lora
            .as_ref()
            .map(|l| l.b.clone().inner().matmul(l.a.clone().inner()).mul_scalar(l.scale))
    }

    pub fn merge(&mut self) {
        if self.merged.is_none()
            && let Some(delta) = self.delta()
        {
            self.merged = Some(self.weight.clone() + delta);
        }
    }

    pub fn unmerge(&mut self) {
        self.merged = None;
    }

    pub fn is_merged(&self) -> bool {
        self.merged.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn dev() -> Device {
        Device::flex()
    }

    fn t(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &dev())
    }

    fn layer(scale: f64, b: &[f32]) -> LoraLinear {
        // W = [[1, 2], [3, 4], [5, 6]] (out 3, in 2), b = [0.5, -0.5, 1]
        let w = t(&[1., 2., 3., 4., 5., 6.], [3, 2]);
        let bias = Tensor::from_data(TensorData::new(vec![0.5f32, -0.5, 1.0], [3]), &dev());
        let a = t(&[1., -1.], [1, 2]);
        let bb = t(b, [3, 1]);
        LoraLinear::new(w, Some(bias)).with_lora(LoraWeights {
            a,
            b: bb,
            scale,
            dropout: 0.0,
        })
    }

    fn rows(x: Tensor<2>) -> Vec<Vec<f32>> {
        let [_, c] = x.dims();
        let v: Vec<f32> = x.into_data().try_into_vec().unwrap();
        v.chunks(c).map(|r| r.to_vec()).collect()
    }

    #[test]
    fn output_equals_the_base_output_at_initialisation() {
        let l = layer(2.0, &[0., 0., 0.]);
        let x = t(&[1., 1., 2., -1.], [2, 2]);
        // Hand computation: x W^T + b.
        assert_eq!(
            rows(l.forward(x, None)),
            vec![vec![3.5, 6.5, 12.0], vec![0.5, 1.5, 5.0]]
        );
    }

    #[test]
    fn the_update_is_scale_times_b_a_x() {
        let l = layer(2.0, &[1., 0., -2.]);
        let x = t(&[2., -1.], [1, 2]);
        // A x = 2 + 1 = 3; B A x = [3, 0, -6]; scaled by 2: [6, 0, -12]; base: [0.5, 1.5, 5].
        assert_eq!(rows(l.forward(x, None)), vec![vec![6.5, 1.5, -7.0]]);
    }

    #[test]
    fn merged_equals_unmerged_and_unmerge_restores_the_base_exactly() {
        let mut l = layer(0.5, &[0.3, -0.7, 1.1]);
        let x = t(&[0.2, -1.3, 2.5, 0.4], [2, 2]);
        let before = rows(l.forward(x.clone(), None));
        let w_before: Vec<f32> = l.weight().to_data().try_into_vec().unwrap();
        l.merge();
        assert!(l.is_merged());
        let merged = rows(l.forward(x.clone(), None));
        for (a, b) in before.iter().flatten().zip(merged.iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
        // W' = W + 0.5 * B A, by hand: B A = [[0.3, -0.3], [-0.7, 0.7], [1.1, -1.1]].
        let m: Vec<f32> = l.merged.clone().unwrap().into_data().try_into_vec().unwrap();
        let want = [1.15f32, 1.85, 2.65, 4.35, 5.55, 5.45];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        l.unmerge();
        assert_eq!(rows(l.forward(x, None)), before);
        let w_after: Vec<f32> = l.weight().to_data().try_into_vec().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w_before), bits(&w_after));
    }

    #[test]
    fn gradients_reach_a_and_b_but_not_the_base() {
        let mut l = layer(1.0, &[1., 1., 1.]);
        let tracked = l.lora().unwrap().tracked();
        l.lora = Some(tracked.clone());
        let x = t(&[1., 2.], [1, 2]);
        let grads = l.forward(x, None).sum().backward();
        // d/dA sum(B A x) = (sum B) x^T = 3 * [1, 2]; d/dB = A x = -1 for each row.
        assert_eq!(rows(tracked.a.grad(&grads).unwrap()), vec![vec![3.0, 6.0]]);
        assert_eq!(rows(tracked.b.grad(&grads).unwrap()), vec![vec![-1.0]; 3]);
        assert!(l.weight().grad(&grads).is_none());
        assert!(l.bias().unwrap().grad(&grads).is_none());
    }

    #[test]
    fn dropout_masks_only_the_adapter_input() {
        let l = layer(1.0, &[1., 1., 1.]);
        let x = t(&[1., 2.], [1, 2]);
        let mask = t(&[0., 2.], [1, 2]);
        // Base unchanged: [5.5, 10.5, 18]; A (x*mask) = -4 per row.
        assert_eq!(rows(l.forward(x, Some(mask))), vec![vec![1.5, 6.5, 14.0]]);
    }
}
