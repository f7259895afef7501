//! The ViT network: patch embedding, class token, pre-norm transformer blocks,
//! final layer norm, computed as the candle backend's ViT computes them.
//!
//! Every weight is a plain tensor. A LoRA run keeps them untracked (frozen by
//! construction, layer norms through the fused frozen op); a full run makes
//! them autodiff leaves for the step, so that burn computes their gradients
//! (its layer norms normalise with the fused op, then apply the trained affine).

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use lora_core::vit::{VitConfig, patchify};

use crate::lora_linear::{LoraLinear, MaskSource};
use crate::ops::{FrozenLayerNorm, attention_softmax, gelu};

/// Layer norm over the hidden size.
#[derive(Debug, Clone)]
pub struct Norm {
    /// The fused op: with the frozen `gamma` and `beta` (LoRA mode), or with a
    /// unit affine when `affine` trains (full mode).
    fused: FrozenLayerNorm,
    /// Trained `gamma` and `beta`, applied with burn's differentiable ops.
    pub affine: Option<(Tensor<1>, Tensor<1>)>,
}

impl Norm {
    pub fn frozen(norm: FrozenLayerNorm) -> Self {
        Self {
            fused: norm,
            affine: None,
        }
    }

    pub fn trained(gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Self {
        let n = gamma.dims()[0];
        Self {
            fused: FrozenLayerNorm::new(vec![1.0; n], vec![0.0; n], eps),
            affine: Some((gamma, beta)),
        }
    }

    /// `x` is `[rows, hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.fused.forward(x);
        match &self.affine {
            None => y,
            Some((gamma, beta)) => y * gamma.clone().unsqueeze::<2>() + beta.clone().unsqueeze::<2>(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub norm_before: Norm,
    /// query, key, value, attention output, intermediate, output: the order of `lora_core::vit::TARGETS`.
    pub linears: [LoraLinear; 6],
    pub norm_after: Norm,
}

impl Block {
    /// `x` is `[batch * tokens, hidden]`; `no_bias` is a zero attention bias `[batch * tokens]`.
    fn forward(
        &self,
        x: Tensor<2>,
        no_bias: &Arc<Vec<f32>>,
        cfg: &VitConfig,
        (b, t): (usize, usize),
        masks: &mut Option<&mut MaskSource>,
    ) -> Tensor<2> {
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let split = |y: Tensor<2>| -> Tensor<4> { y.reshape([b, t, heads, d]).swap_dims(1, 2) };
        let h = self.norm_before.forward(x.clone());
        let q = split(self.linears[0].forward_masked(h.clone(), masks));
        let k = split(self.linears[1].forward_masked(h.clone(), masks));
        let v = split(self.linears[2].forward_masked(h, masks));
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = attention_softmax(scores, no_bias.clone(), (1.0 / (d as f64).sqrt()) as f32);
        let ctx = probs.matmul(v).swap_dims(1, 2).reshape([b * t, heads * d]);
        let x = x + self.linears[3].forward_masked(ctx, masks);
        let h = self.norm_after.forward(x.clone());
        let up = gelu(self.linears[4].forward_masked(h, masks));
        x + self.linears[5].forward_masked(up, masks)
    }
}

#[derive(Debug, Clone)]
pub struct Vit {
    pub cfg: VitConfig,
    pub device: Device,
    /// `[hidden, channels * patch * patch]` (the conv kernel, flattened).
    pub patch: LoraLinear,
    /// `[1, hidden]` (`[1, 1, hidden]` in the file).
    pub cls_token: Tensor<2>,
    /// `[tokens, hidden]` (`[1, tokens, hidden]` in the file).
    pub position: Tensor<2>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
}

impl Vit {
    /// Final hidden states `[batch * tokens, hidden]` of images `[batch, C, H, W]`
    /// (checked by the caller against the configuration).
    pub fn forward(&self, pixels: &[f32], batch: usize, mut masks: Option<&mut MaskSource>) -> Tensor<2> {
        let cfg = &self.cfg;
        let (n, h) = (cfg.grid() * cfg.grid(), cfg.hidden_size);
        let t = n + 1;
        let patches = Tensor::<2>::from_data(
            TensorData::new(patchify(pixels, batch, cfg), [batch * n, cfg.patch_dim()]),
            &self.device,
        );
        // The patch embedding's adapter, if any, has no dropout (as in the candle backend).
        let emb = self.patch.forward(patches, None).reshape([batch, n, h]);
        let cls = self.cls_token.clone().reshape([1, 1, h]).expand([batch, 1, h]);
        let x = Tensor::cat(vec![cls, emb], 1) + self.position.clone().reshape([1, t, h]);
        let mut x = x.reshape([batch * t, h]);
        let no_bias = Arc::new(vec![0f32; batch * t]);
        for block in &self.blocks {
            x = block.forward(x, &no_bias, cfg, (batch, t), &mut masks);
        }
        self.final_norm.forward(x)
    }

    /// Every linear, the patch embedding first.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        std::iter::once(&mut self.patch).chain(self.blocks.iter_mut().flat_map(|b| b.linears.iter_mut()))
    }
}
