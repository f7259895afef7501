//! The ViT network: patch embedding, class token, pre-norm transformer blocks,
//! final layer norm. Each weight is either frozen (a LoRA run: memory-mapped,
//! with the custom ops whose backward skips weight gradients) or trained (a
//! pretraining run: a `Var`'s tensor through candle's differentiable ops).

use candle_core::{D, Result, Tensor};
use lora_core::vit::{VitConfig, patchify};

use crate::bert::encoder::MaskSource;
use crate::lora_linear::LoraLinear;
use crate::ops::{FrozenLayerNorm, gelu, softmax_last_dim};

pub enum Linear {
    /// Base weight frozen; may carry a LoRA adapter.
    Frozen(LoraLinear),
    /// Weight `[out, in]` and bias are trained (tensors of `Var`s).
    Trained { w: Tensor, b: Tensor },
}

impl Linear {
    /// `x` is `[rows, in]`.
    pub fn forward(&self, x: &Tensor, masks: &mut Option<&mut MaskSource>) -> Result<Tensor> {
        match self {
            Linear::Frozen(l) => {
                let mask = match (masks.as_deref_mut(), l.lora()) {
                    (Some(src), Some(lora)) => src.mask(lora.dropout, x.dim(0)?, x.dim(1)?)?,
                    _ => None,
                };
                l.forward(x, mask.as_ref())
            }
            Linear::Trained { w, b } => x.matmul(&w.t()?)?.broadcast_add(b),
        }
    }

    pub fn frozen_mut(&mut self) -> Option<&mut LoraLinear> {
        match self {
            Linear::Frozen(l) => Some(l),
            Linear::Trained { .. } => None,
        }
    }
}

pub enum Norm {
    Frozen(FrozenLayerNorm),
    Trained { gamma: Tensor, beta: Tensor, eps: f64 },
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Frozen(n) => n.forward(x),
            Norm::Trained { gamma, beta, eps } => {
                // Composed from differentiable ops so that gamma and beta get gradients.
                let mean = x.mean_keepdim(D::Minus1)?;
                let centred = x.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
                let xhat = centred.broadcast_div(&(var + *eps)?.sqrt()?)?;
                xhat.broadcast_mul(gamma)?.broadcast_add(beta)
            }
        }
    }
}

pub struct Block {
    pub norm_before: Norm,
    /// query, key, value, attention output, intermediate, output: the order of `lora_core::vit::TARGETS`.
    pub linears: [Linear; 6],
    pub norm_after: Norm,
}

impl Block {
    /// `x` is `[batch * tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        cfg: &VitConfig,
        (b, t): (usize, usize),
        masks: &mut Option<&mut MaskSource>,
    ) -> Result<Tensor> {
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let split = |y: Tensor| -> Result<Tensor> { y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous() };
        let h = self.norm_before.forward(x)?;
        let q = split(self.linears[0].forward(&h, masks)?)?;
        let k = split(self.linears[1].forward(&h, masks)?)?;
        let v = split(self.linears[2].forward(&h, masks)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        let probs = softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, heads * d))?;
        let x = (x + self.linears[3].forward(&ctx, masks)?)?;
        let h = self.norm_after.forward(&x)?;
        let up = gelu(&self.linears[4].forward(&h, masks)?)?;
        &x + self.linears[5].forward(&up, masks)?
    }
}

pub struct Vit {
    pub cfg: VitConfig,
    /// `[hidden, channels * patch * patch]` (the conv kernel, flattened).
    pub patch: Linear,
    /// `[1, 1, hidden]`.
    pub cls_token: Tensor,
    /// `[1, tokens, hidden]`.
    pub position: Tensor,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
}

impl Vit {
    /// Final hidden states `[batch, tokens, hidden]` of images `[batch, C, H, W]`.
    pub fn forward(&self, pixels: &[f32], batch: usize, mut masks: Option<&mut MaskSource>) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, h) = (cfg.grid() * cfg.grid(), cfg.hidden_size);
        let t = n + 1;
        let patches = Tensor::from_vec(
            patchify(pixels, batch, cfg),
            (batch * n, cfg.patch_dim()),
            &candle_core::Device::Cpu,
        )?;
        let emb = self.patch.forward(&patches, &mut None)?.reshape((batch, n, h))?;
        let cls = self.cls_token.broadcast_as((batch, 1, h))?;
        let x = Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.position)?;
        let mut x = x.reshape((batch * t, h))?;
        for block in &self.blocks {
            x = block.forward(&x, cfg, (batch, t), &mut masks)?;
        }
        self.final_norm.forward(&x)?.reshape((batch, t, h))
    }
}
