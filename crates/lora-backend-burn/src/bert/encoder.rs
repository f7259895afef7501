//! The encoder: embeddings, then self-attention and feed-forward blocks with
//! post-layer-norm, exactly as Hugging Face's `BertModel` computes them.
//!
//! Base weights are plain (non-autodiff) tensors: when they meet a tracked
//! LoRA activation, burn's autodiff treats them as constants and computes
//! only the input gradient, never a weight gradient.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lora_core::{Error, Result};

use super::config::BertConfig;
use crate::lora_linear::LoraLinear;
pub use crate::lora_linear::MaskSource;
use crate::ops::{FrozenLayerNorm, attention_softmax, gelu};

pub use lora_core::bert::TARGETS;

#[derive(Debug, Clone)]
pub struct Layer {
    /// In the order of [`TARGETS`].
    pub linears: [LoraLinear; 6],
    pub attention_norm: FrozenLayerNorm,
    pub output_norm: FrozenLayerNorm,
}

impl Layer {
    fn linear(&self, i: usize, x: Tensor<2>, masks: &mut Option<&mut MaskSource>) -> Tensor<2> {
        self.linears[i].forward_masked(x, masks)
    }

    /// `x` is `[batch * seq, hidden]`; `key_bias` is the additive attention mask `[batch * seq]`.
    fn forward(
        &self,
        x: Tensor<2>,
        key_bias: &Arc<Vec<f32>>,
        cfg: &BertConfig,
        (b, t): (usize, usize),
        masks: &mut Option<&mut MaskSource>,
    ) -> Tensor<2> {
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let split = |y: Tensor<2>| -> Tensor<4> { y.reshape([b, t, heads, d]).swap_dims(1, 2) };
        let q = split(self.linear(0, x.clone(), masks));
        let k = split(self.linear(1, x.clone(), masks));
        let v = split(self.linear(2, x.clone(), masks));
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = attention_softmax(scores, key_bias.clone(), (1.0 / (d as f64).sqrt()) as f32);
        let context = probs.matmul(v).swap_dims(1, 2).reshape([b * t, heads * d]);
        let attn = self.linear(3, context, masks);
        let h = self.attention_norm.forward(attn + x);
        let up = gelu(self.linear(4, h.clone(), masks));
        let down = self.linear(5, up, masks);
        self.output_norm.forward(down + h)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    pub cfg: BertConfig,
    pub device: Device,
    pub word_embeddings: Tensor<2>,
    pub position_embeddings: Tensor<2>,
    pub token_type_embeddings: Tensor<2>,
    pub embedding_norm: FrozenLayerNorm,
    pub layers: Vec<Layer>,
}

impl Encoder {
    /// Checks a right-padded batch against the model before any tensor work (burn panics on bad shapes).
    pub fn check_input(&self, ids: &[u32], mask: &[u32], (b, t): (usize, usize)) -> Result<()> {
        if b == 0 || t == 0 {
            return Err(Error::Data(format!("empty batch ({b} sequences of {t} tokens)")));
        }
        if ids.len() != b * t || mask.len() != b * t {
            return Err(Error::Data(format!(
                "batch of {b} x {t} tokens has {} ids and {} mask values",
                ids.len(),
                mask.len()
            )));
        }
        if t > self.cfg.max_position_embeddings {
            return Err(Error::Data(format!(
                "sequence length {t} exceeds the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Data(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Last hidden states `[batch * seq, hidden]` for right-padded `ids` and `mask` (`[batch * seq]`).
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        (b, t): (usize, usize),
        mut masks: Option<&mut MaskSource>,
    ) -> Result<Tensor<2>> {
        self.check_input(ids, mask, (b, t))?;
        let dev = &self.device;
        let h = self.cfg.hidden_size;
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * t]), dev);
        let words = self.word_embeddings.clone().select(0, ids).reshape([b, t, h]);
        let positions = self.position_embeddings.clone().narrow(0, 0, t).reshape([1, t, h]);
        let token_type = self.token_type_embeddings.clone().narrow(0, 0, 1).reshape([1, 1, h]);
        let emb = (words + positions + token_type).reshape([b * t, h]);
        let mut x = self.embedding_norm.forward(emb);
        let bias: Vec<f32> = mask.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect();
        let bias = Arc::new(bias);
        for layer in &self.layers {
            x = layer.forward(x, &bias, &self.cfg, (b, t), &mut masks);
        }
        Ok(x)
    }

    /// Hidden state of the first token of each sequence, `[batch, hidden]`.
    pub fn first_token(hidden: Tensor<2>, (b, t): (usize, usize)) -> Tensor<2> {
        let [_, h] = hidden.dims();
        hidden.reshape([b, t, h]).narrow(1, 0, 1).reshape([b, h])
    }

    pub fn parameter_count(&self) -> usize {
        let n = |t: &Tensor<2>| t.dims().iter().product::<usize>();
        let mut total = n(&self.word_embeddings)
            + n(&self.position_embeddings)
            + n(&self.token_type_embeddings)
            + 2 * self.embedding_norm.len();
        for l in &self.layers {
            for lin in &l.linears {
                total += n(lin.weight()) + lin.bias().map_or(0, |b| b.dims()[0]);
            }
            total += 2 * (l.attention_norm.len() + l.output_norm.len());
        }
        total
    }
}

/// Mean of the hidden states over real tokens, L2-normalised (sentence-transformers' pooling).
pub fn mean_pool_normalised(hidden: Tensor<2>, mask: &[u32], (b, t): (usize, usize)) -> Tensor<2> {
    let [_, h] = hidden.dims();
    let m: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
    let m = Tensor::<3>::from_data(TensorData::new(m, [b, t, 1]), &hidden.device());
    let summed = (hidden.reshape([b, t, h]) * m.clone()).sum_dim(1);
    let counts = m.sum_dim(1);
    let mean = summed / counts;
    let norm = mean.clone().square().sum_dim(2).sqrt();
    (mean / norm).reshape([b, h])
}
