//! A linear layer that may carry a LoRA adapter, with PEFT's semantics:
//! `y = x W^T + b + scale * dropout(x) A^T B^T`.

use candle_core::{Result, Tensor, Var};

use crate::ops::frozen_linear;

/// The trainable half of a LoRA layer.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in]`, Kaiming-uniform at start.
    pub a: Var,
    /// `[out, r]`, zero at start, so the adapted layer starts equal to the base.
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// `[out, in]`, memory-mapped from the base model, never written.
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraWeights>,
    /// `W + scale * B A` while merged; the base weight itself is kept untouched.
    merged: Option<Tensor>,
}

impl LoraLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
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

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x` is `[rows, in]`; `dropout_mask`, when given, is an inverted-dropout
    /// mask of the same shape applied to the adapter's input only.
    pub fn forward(&self, x: &Tensor, dropout_mask: Option<&Tensor>) -> Result<Tensor> {
        if let Some(merged) = &self.merged {
            return frozen_linear(x, merged, self.bias.as_ref());
        }
        let base = frozen_linear(x, &self.weight, self.bias.as_ref())?;
        let Some(lora) = &self.lora else { return Ok(base) };
        let input = match dropout_mask {
            Some(mask) => (x * mask)?,
            None => x.clone(),
        };
        let update = input
            .matmul(&lora.a.as_tensor().t()?)?
            .matmul(&lora.b.as_tensor().t()?)?;
        base + (update * lora.scale)?
    }

    /// `scale * B A`, shaped like the base weight.
    pub fn delta(&self) -> Result<Option<Tensor>> {
        match &self.lora {
            Some(l) => Ok(Some((l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?.detach())),
            None => Ok(None),
        }
    }

    pub fn merge(&mut self) -> Result<()> {
        if self.merged.is_none()
            && let Some(delta) = self.delta()?
        {
            self.merged = Some((&self.weight + delta)?);
        }
        Ok(())
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
    use candle_core::{DType, Device};

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn layer(scale: f64) -> LoraLinear {
        // W = [[1, 2], [3, 4], [5, 6]] (out 3, in 2), b = [0.5, -0.5, 1]
        let w = t(&[1., 2., 3., 4., 5., 6.], (3, 2));
        let b = Tensor::from_slice(&[0.5f32, -0.5, 1.0], 3, &Device::Cpu).unwrap();
        let a = Var::from_slice(&[1f32, -1.], (1, 2), &Device::Cpu).unwrap();
        let bb = Var::zeros((3, 1), DType::F32, &Device::Cpu).unwrap();
        LoraLinear::new(w, Some(b)).with_lora(LoraWeights {
            a,
            b: bb,
            scale,
            dropout: 0.0,
        })
    }

    fn rows(x: &Tensor) -> Vec<Vec<f32>> {
        x.to_vec2().unwrap()
    }

    #[test]
    fn output_equals_the_base_output_at_initialisation() {
        let l = layer(2.0);
        let x = t(&[1., 1., 2., -1.], (2, 2));
        // Hand computation: x W^T + b.
        assert_eq!(
            rows(&l.forward(&x, None).unwrap()),
            vec![vec![3.5, 6.5, 12.0], vec![0.5, 1.5, 5.0]]
        );
    }

    #[test]
    fn the_update_is_scale_times_b_a_x() {
        let l = layer(2.0);
        l.lora().unwrap().b.set(&t(&[1., 0., -2.], (3, 1))).unwrap();
        let x = t(&[2., -1.], (1, 2));
        // A x = 2 + 1 = 3; B A x = [3, 0, -6]; scaled by 2: [6, 0, -12]; base: [0.5, 1.5, 5].
        assert_eq!(rows(&l.forward(&x, None).unwrap()), vec![vec![6.5, 1.5, -7.0]]);
    }

    #[test]
    fn merged_equals_unmerged_and_unmerge_restores_the_base_exactly() {
        let mut l = layer(0.5);
        l.lora().unwrap().b.set(&t(&[0.3, -0.7, 1.1], (3, 1))).unwrap();
        let x = t(&[0.2, -1.3, 2.5, 0.4], (2, 2));
        let before = rows(&l.forward(&x, None).unwrap());
        let w_before = l.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        l.merge().unwrap();
        let merged = rows(&l.forward(&x, None).unwrap());
        for (a, b) in before.iter().flatten().zip(merged.iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
        l.unmerge();
        assert_eq!(rows(&l.forward(&x, None).unwrap()), before);
        let w_after = l.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            w_before.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            w_after.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn gradients_reach_a_and_b_but_not_the_base() {
        let l = layer(1.0);
        l.lora().unwrap().b.set(&t(&[1., 1., 1.], (3, 1))).unwrap();
        let x = t(&[1., 2.], (1, 2));
        let grads = l.forward(&x, None).unwrap().sum_all().unwrap().backward().unwrap();
        let lora = l.lora().unwrap();
        // d/dA sum(B A x) = (sum B) x^T = 3 * [1, 2]; d/dB = A x = -1 for each row.
        assert_eq!(
            grads.get(lora.a.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![3.0, 6.0]]
        );
        assert_eq!(
            grads.get(lora.b.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![-1.0]; 3]
        );
        assert!(grads.get(l.weight()).is_none());
        assert!(grads.get(l.bias().unwrap()).is_none());
    }

    #[test]
    fn dropout_masks_only_the_adapter_input() {
        let l = layer(1.0);
        l.lora().unwrap().b.set(&t(&[1., 1., 1.], (3, 1))).unwrap();
        let x = t(&[1., 2.], (1, 2));
        let mask = t(&[0., 2.], (1, 2));
        // Base unchanged: [5.5, 10.5, 18]; A (x*mask) = -4 per row.
        assert_eq!(rows(&l.forward(&x, Some(&mask)).unwrap()), vec![vec![1.5, 6.5, 14.0]]);
    }
}
