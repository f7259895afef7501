//! The encoder: embeddings, then self-attention and feed-forward blocks with
//! post-layer-norm, exactly as Hugging Face's `BertModel` computes them.

use candle_core::{D, DType, Device, Result, Tensor};
use lora_core::init::{SeededRng, dropout_mask};

use super::config::BertConfig;
use crate::lora_linear::LoraLinear;
use crate::ops::{FrozenLayerNorm, gelu, softmax_last_dim};

pub use lora_core::bert::TARGETS;

/// Draws inverted-dropout masks in a fixed order from one seeded stream.
pub struct MaskSource {
    rng: SeededRng,
}

impl MaskSource {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: lora_core::init::rng(seed),
        }
    }

    pub fn mask(&mut self, p: f32, rows: usize, cols: usize) -> Result<Option<Tensor>> {
        if p <= 0.0 {
            return Ok(None);
        }
        let m = dropout_mask(p, rows * cols, &mut self.rng);
        Tensor::from_vec(m, (rows, cols), &Device::Cpu).map(Some)
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    /// In the order of [`TARGETS`].
    pub linears: [LoraLinear; 6],
    pub attention_norm: FrozenLayerNorm,
    pub output_norm: FrozenLayerNorm,
}

impl Layer {
    fn linear(&self, i: usize, x: &Tensor, masks: &mut Option<&mut MaskSource>) -> Result<Tensor> {
        let l = &self.linears[i];
        let mask = match (masks.as_deref_mut(), l.lora()) {
            (Some(src), Some(lora)) => src.mask(lora.dropout, x.dim(0)?, x.dim(1)?)?,
            _ => None,
        };
        l.forward(x, mask.as_ref())
    }

    /// `x` is `[batch * seq, hidden]`; `bias` is the additive attention mask `[batch, 1, 1, seq]`.
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        cfg: &BertConfig,
        (b, t): (usize, usize),
        masks: &mut Option<&mut MaskSource>,
    ) -> Result<Tensor> {
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let split = |y: Tensor| -> Result<Tensor> { y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous() };
        let q = split(self.linear(0, x, masks)?)?;
        let k = split(self.linear(1, x, masks)?)?;
        let v = split(self.linear(2, x, masks)?)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(bias)?;
        let probs = softmax_last_dim(&scores)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, heads * d))?;
        let attn = self.linear(3, &context, masks)?;
        let h = self.attention_norm.forward(&(attn + x)?)?;
        let up = gelu(&self.linear(4, &h, masks)?)?;
        let down = self.linear(5, &up, masks)?;
        self.output_norm.forward(&(down + h)?)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    pub cfg: BertConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    pub embedding_norm: FrozenLayerNorm,
    pub layers: Vec<Layer>,
}

impl Encoder {
    /// Last hidden states `[batch * seq, hidden]` for right-padded `ids` and `mask` (`[batch * seq]`).
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        (b, t): (usize, usize),
        mut masks: Option<&mut MaskSource>,
    ) -> Result<Tensor> {
        let dev = Device::Cpu;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence length {t} exceeds the model's {} positions",
                self.cfg.max_position_embeddings
            );
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size);
        }
        let h = self.cfg.hidden_size;
        let ids_t = Tensor::from_slice(ids, b * t, &dev)?;
        let words = self.word_embeddings.index_select(&ids_t, 0)?.reshape((b, t, h))?;
        let positions = self.position_embeddings.narrow(0, 0, t)?;
        let token_type = self.token_type_embeddings.narrow(0, 0, 1)?.squeeze(0)?;
        let emb = words
            .broadcast_add(&positions)?
            .broadcast_add(&token_type)?
            .reshape((b * t, h))?;
        let mut x = self.embedding_norm.forward(&emb)?;
        let bias: Vec<f32> = mask.iter().map(|&m| if m != 0 { 0.0 } else { -1e9 }).collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), &dev)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, &self.cfg, (b, t), &mut masks)?;
        }
        Ok(x)
    }

    /// Hidden state of the first token of each sequence, `[batch, hidden]`.
    pub fn first_token(hidden: &Tensor, (b, t): (usize, usize)) -> Result<Tensor> {
        let h = hidden.dim(D::Minus1)?;
        hidden.reshape((b, t, h))?.narrow(1, 0, 1)?.reshape((b, h))
    }

    pub fn parameter_count(&self) -> usize {
        let mut n = self.word_embeddings.elem_count()
            + self.position_embeddings.elem_count()
            + self.token_type_embeddings.elem_count()
            + 2 * self.cfg.hidden_size;
        for l in &self.layers {
            for lin in &l.linears {
                n += lin.weight().elem_count() + lin.bias().map_or(0, |b| b.elem_count());
            }
            n += 4 * self.cfg.hidden_size;
        }
        n
    }
}

/// Mean of the hidden states over real tokens, L2-normalised (sentence-transformers' pooling).
pub fn mean_pool_normalised(hidden: &Tensor, mask: &[u32], (b, t): (usize, usize)) -> Result<Tensor> {
    let h = hidden.dim(D::Minus1)?;
    let m: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
    let m = Tensor::from_vec(m, (b, t, 1), hidden.device())?.to_dtype(DType::F32)?;
    let summed = hidden.reshape((b, t, h))?.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
    mean.broadcast_div(&norm)
}
