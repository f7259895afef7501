//! `BertForSequenceClassification` with LoRA, written once: Hugging Face's
//! `BertModel` (embeddings, post-layer-norm blocks), a frozen pooler on the
//! first token, and a classifier trained in full and saved as a module to save.

use lora_core::adapter::{ModelSummary, ParamInfo, PeftInfo};
use lora_core::bert::{BertConfig, TARGETS, check_rank, peft_info, resolve_targets};
use lora_core::init::{CounterMask, derive_seed, normal, rng};
use lora_core::{Batch, Error, HostTensor, LoraSpec, Result, TextBatch};

use crate::dropout::MaskSource;
use crate::linear::{LoraLinear, LoraWeights};
use crate::model::{Architecture, Model, Rows, check_labels};
use crate::ops::{AttentionGeometry, FrozenNorm, Heads, Mask, TensorOps};
use crate::params::ParamStore;
use crate::weights::WeightSource;

/// Key prefix of every adapter tensor: PEFT wraps the model as `base_model.model`,
/// and the sequence-classification model holds the encoder under `bert`.
const PEFT_PREFIX: &str = "base_model.model.";

pub struct LayerNorm<O: TensorOps> {
    gamma: O::W,
    beta: O::W,
}

pub struct Layer<O: TensorOps> {
    /// In the order of [`TARGETS`].
    linears: Vec<LoraLinear<O>>,
    attention_norm: LayerNorm<O>,
    output_norm: LayerNorm<O>,
}

pub struct Bert<O: TensorOps> {
    cfg: BertConfig,
    word_embeddings: O::W,
    position_embeddings: O::W,
    token_type_embeddings: O::W,
    embedding_norm: LayerNorm<O>,
    layers: Vec<Layer<O>>,
    pooler: (O::W, O::W),
    classifier: (O::Leaf, O::Leaf),
    classifier_dropout: f32,
    targets: Vec<&'static str>,
}

pub type BertClassifier<O> = Model<O, Bert<O>>;

/// Builds the classifier from base weights (with or without the `bert.` prefix),
/// inserts LoRA layers and initialises the adapter and the head from `seed`.
pub fn build<O: TensorOps>(
    ops: O,
    cfg: BertConfig,
    weights: &dyn WeightSource,
    lora: &LoraSpec,
    num_labels: usize,
    classifier_dropout: f32,
    seed: u64,
) -> Result<BertClassifier<O>> {
    let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let w = |name: &str| ops.weight(weights.view(&format!("{prefix}{name}"))?);
    let ln = |name: &str| -> Result<LayerNorm<O>> {
        Ok(LayerNorm {
            gamma: w(&format!("{name}.weight"))?,
            beta: w(&format!("{name}.bias"))?,
        })
    };
    let targets = resolve_targets(lora)?;
    let mut init = rng(derive_seed(seed, "lora-init", 0));
    let mut store = ParamStore::default();
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let mut linears = Vec::with_capacity(TARGETS.len());
        for (name, path, _) in TARGETS {
            let full = format!("encoder.layer.{i}.{path}");
            let mut lin = LoraLinear::new(w(&format!("{full}.weight"))?, Some(w(&format!("{full}.bias"))?));
            if targets.contains(&name) {
                let (out, inp) = lin.dims(&ops);
                let lora = &lora.for_module(&full);
                check_rank(lora, &full, inp, out)?;
                let key = format!("{PEFT_PREFIX}bert.{full}");
                let shapes = [vec![lora.r, inp], vec![out, lora.r]];
                let weights = LoraWeights::register(&ops, &mut store, &key, lora, (inp, out), shapes, &mut init)?;
                lin = lin.with_lora(weights);
            }
            linears.push(lin);
        }
        layers.push(Layer {
            linears,
            attention_norm: ln(&format!("encoder.layer.{i}.attention.output.LayerNorm"))?,
            output_norm: ln(&format!("encoder.layer.{i}.output.LayerNorm"))?,
        });
    }
    // Hugging Face initialises a new head with N(0, 0.02) weights and zero bias.
    let h = cfg.hidden_size;
    let mut head_rng = rng(derive_seed(seed, "head-init", 0));
    let head_w = ParamInfo::new(format!("{PEFT_PREFIX}classifier.weight"), vec![num_labels, h], true);
    let head_b = ParamInfo::new(format!("{PEFT_PREFIX}classifier.bias"), vec![num_labels], false);
    let classifier = (
        store.add(&ops, head_w, normal(0.02, num_labels * h, &mut head_rng))?,
        store.add(&ops, head_b, vec![0.0; num_labels])?,
    );
    let bert = Bert {
        word_embeddings: w("embeddings.word_embeddings.weight")?,
        position_embeddings: w("embeddings.position_embeddings.weight")?,
        token_type_embeddings: w("embeddings.token_type_embeddings.weight")?,
        embedding_norm: ln("embeddings.LayerNorm")?,
        pooler: (w("pooler.dense.weight")?, w("pooler.dense.bias")?),
        layers,
        classifier,
        classifier_dropout,
        targets,
        cfg,
    };
    Ok(Model::new(ops, bert, store, num_labels))
}

/// The base model's own dropout of `x` in training (`masks` given); `x` in evaluation.
fn base_dropout<O: TensorOps>(ops: &O, masks: &mut Option<&mut MaskSource>, x: &O::T, p: f32) -> Result<O::T> {
    match masks.as_deref_mut() {
        Some(m) => m.base(ops, x, p),
        None => Ok(x.clone()),
    }
}

/// The counter mask [`base_dropout`] would draw next (in training), or `None`.
fn hidden_counter(masks: &mut Option<&mut MaskSource>, p: f32) -> Option<CounterMask> {
    masks.as_deref_mut().and_then(|m| m.counter(p))
}

fn text(batch: &Batch) -> Result<&TextBatch> {
    match batch {
        Batch::Text(t) => Ok(t),
        #[allow(unreachable_patterns)]
        _ => Err(Error::Other("the BERT classifier takes text batches".into())),
    }
}

impl<O: TensorOps> Bert<O> {
    fn norm(&self, ops: &O, n: &LayerNorm<O>, x: &O::T) -> Result<O::T> {
        ops.layer_norm(x, &n.gamma, &n.beta, self.cfg.layer_norm_eps)
    }

    /// `x` is `[batch * seq, hidden]`; the output is that, or `[batch, hidden]`
    /// for [`Rows::First`].
    fn layer<'a>(
        &self,
        ops: &O,
        l: &'a Layer<O>,
        x: &O::T,
        b: &TextBatch,
        masks: &mut Option<&mut MaskSource>,
        rows: Rows,
    ) -> Result<O::T> {
        let (bs, t) = (b.batch_size, b.seq_len);
        let (heads, d) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let linear = |i: usize, x: &O::T, masks: &mut Option<&mut MaskSource>| {
            l.linears[i].forward(ops, x, masks.as_deref_mut())
        };
        let shape = Heads {
            batch: bs,
            queries: if rows == Rows::First { 1 } else { t },
            keys: t,
            heads,
            kv_heads: heads,
            head_dim: d,
        };
        let scale = 1.0 / (d as f64).sqrt();
        // Hugging Face's dropout in training: on the attention probabilities, and
        // on each sublayer's output before the residual sum and the norm.
        let (p_attn, p_hidden) = (self.cfg.attention_probs_dropout_prob, self.cfg.hidden_dropout_prob);
        let eps = self.cfg.layer_norm_eps;
        let (an, on) = (&l.attention_norm, &l.output_norm);
        let norm = |n: &'a LayerNorm<O>| FrozenNorm {
            gamma: &n.gamma,
            beta: &n.beta,
            eps,
        };
        let attention_mask = Mask::Padding(&b.attention_mask);
        // Frozen sublayer ends go to the fused operations; a sublayer whose
        // output linear has an unmerged LoRA update is composed. The masks are
        // drawn in the same order either way (q, k, v's LoRA dropout, the
        // attention's, the hidden one; a frozen linear draws none).
        let h = match l.linears[3].frozen().filter(|_| rows == Rows::All) {
            Some(out) => {
                let project = |i: usize, masks: &mut Option<&mut MaskSource>| {
                    l.linears[i].projection(ops, x, masks.as_deref_mut())
                };
                let projections = [project(0, masks), project(1, masks), project(2, masks)];
                let geometry = AttentionGeometry {
                    heads: shape,
                    mask: attention_mask,
                    scale,
                    attention_dropout: masks.as_deref_mut().and_then(|m| m.counter(p_attn)),
                    hidden_dropout: hidden_counter(masks, p_hidden),
                };
                ops.attention_sublayer(x, projections, geometry, out, norm(an))?
            }
            None => {
                let x_q = match rows {
                    Rows::All => x.clone(),
                    Rows::First => self.first_tokens(ops, x, b)?,
                };
                let (q, k, v) = (linear(0, &x_q, masks)?, linear(1, x, masks)?, linear(2, x, masks)?);
                let attn_mask = masks.as_deref_mut().and_then(|m| m.counter(p_attn));
                let context = ops.attention_rows(&q, &k, &v, shape, attention_mask, scale, attn_mask)?;
                let attn = linear(3, &context, masks)?;
                let attn = base_dropout(ops, masks, &attn, p_hidden)?;
                ops.add_layer_norm(&attn, &x_q, &an.gamma, &an.beta, eps)?
            }
        };
        if let (Some(up), Some(down)) = (l.linears[4].frozen(), l.linears[5].frozen()) {
            let hidden_mask = hidden_counter(masks, p_hidden);
            return ops.feed_forward(&h, up, down, norm(on), hidden_mask);
        }
        let up = ops.gelu(&linear(4, &h, masks)?)?;
        let down = linear(5, &up, masks)?;
        let down = base_dropout(ops, masks, &down, p_hidden)?;
        ops.add_layer_norm(&down, &h, &on.gamma, &on.beta, eps)
    }

    /// The embeddings' output `[batch * seq, hidden]`: the first block's input.
    fn embeddings(&self, ops: &O, b: &TextBatch, mut masks: Option<&mut MaskSource>) -> Result<O::T> {
        let (bs, t, h) = (b.batch_size, b.seq_len, self.cfg.hidden_size);
        let words = ops.reshape(&ops.embedding(&self.word_embeddings, &b.input_ids)?, &[bs, t, h])?;
        let positions: Vec<u32> = (0..t as u32).collect();
        let positions = ops.embedding(&self.position_embeddings, &positions)?;
        let token_type = ops.embedding(&self.token_type_embeddings, &[0])?;
        let emb = ops.broadcast_add(&ops.broadcast_add(&words, &positions)?, &token_type)?;
        let x = self.norm(ops, &self.embedding_norm, &ops.reshape(&emb, &[bs * t, h])?)?;
        base_dropout(ops, &mut masks, &x, self.cfg.hidden_dropout_prob)
    }

    /// Last hidden states: `[batch * seq, hidden]`, or `[batch, hidden]` (the
    /// first tokens') for [`Rows::First`].
    fn encode(&self, ops: &O, b: &TextBatch, mut masks: Option<&mut MaskSource>, last: Rows) -> Result<O::T> {
        let mut x = self.embeddings(ops, b, masks.as_deref_mut())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let rows = Rows::of_block(i, self.layers.len(), last);
            x = self.layer(ops, layer, &x, b, &mut masks, rows)?;
        }
        Ok(x)
    }

    /// Each sequence's first token of `x [batch * seq, hidden]`, `[batch, hidden]`.
    fn first_tokens(&self, ops: &O, x: &O::T, b: &TextBatch) -> Result<O::T> {
        Rows::first_tokens(ops, x, [b.batch_size, b.seq_len, self.cfg.hidden_size])
    }

    /// Pooler, dropout and classifier on the last hidden states, all of them
    /// or only the first tokens' (the last block's [`Rows::First`]).
    fn classify(&self, ops: &O, hidden: &O::T, b: &TextBatch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        let first = if ops.dims(hidden)[0] == b.batch_size {
            hidden.clone()
        } else {
            self.first_tokens(ops, hidden, b)?
        };
        let pooled = ops.tanh(&ops.frozen_linear(&first, &self.pooler.0, Some(&self.pooler.1))?)?;
        let pooled = match masks {
            Some(src) => src.apply(ops, &pooled, self.classifier_dropout)?,
            None => pooled,
        };
        let (w, bias) = &self.classifier;
        ops.linear(&pooled, &ops.use_leaf(w), &ops.use_leaf(bias))
    }
}

impl<O: TensorOps> Architecture<O> for Bert<O> {
    fn check_batch(&self, batch: &Batch, num_labels: usize) -> Result<()> {
        let b = text(batch)?;
        if b.seq_len > self.cfg.max_position_embeddings {
            return Err(Error::Data(format!(
                "sequence length {} exceeds the model's {} positions",
                b.seq_len, self.cfg.max_position_embeddings
            )));
        }
        let n = b.batch_size * b.seq_len;
        if b.input_ids.len() != n || b.attention_mask.len() != n {
            return Err(Error::Data(format!(
                "a batch of {} x {} tokens has {} ids and {} mask values",
                b.batch_size,
                b.seq_len,
                b.input_ids.len(),
                b.attention_mask.len()
            )));
        }
        if let Some(bad) = b.input_ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Data(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        check_labels(&b.labels, num_labels)
    }

    fn logits(&self, ops: &O, batch: &Batch, mut masks: Option<&mut MaskSource>) -> Result<O::T> {
        let b = text(batch)?;
        let first = self.encode(ops, b, masks.as_deref_mut(), Rows::First)?;
        self.classify(ops, &first, b, masks)
    }

    fn blocks(&self) -> usize {
        self.layers.len()
    }

    fn embed(&self, ops: &O, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        self.embeddings(ops, text(batch)?, masks)
    }

    fn block(&self, ops: &O, i: usize, x: &O::T, batch: &Batch, mut masks: Option<&mut MaskSource>) -> Result<O::T> {
        let rows = Rows::of_block(i, self.layers.len(), Rows::First);
        self.layer(ops, &self.layers[i], x, text(batch)?, &mut masks, rows)
    }

    fn head(&self, ops: &O, x: &O::T, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        self.classify(ops, x, text(batch)?, masks)
    }

    fn hidden_states(&self, ops: &O, batch: &Batch) -> Result<HostTensor> {
        let b = text(batch)?;
        let hidden = self.encode(ops, b, None, Rows::All)?;
        Ok(HostTensor::new(
            vec![b.batch_size, b.seq_len, self.cfg.hidden_size],
            ops.to_host(&hidden)?,
        ))
    }

    fn for_each_lora(&mut self, f: &mut dyn FnMut(&mut LoraLinear<O>) -> Result<()>) -> Result<()> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears.iter_mut())
            .try_for_each(f)
    }

    fn summary(&self, ops: &O, trainable: usize, num_labels: usize) -> ModelSummary {
        let h = self.cfg.hidden_size;
        let n = |w: &O::W| ops.weight_dims(w).iter().product::<usize>();
        let mut total =
            n(&self.word_embeddings) + n(&self.position_embeddings) + n(&self.token_type_embeddings) + 2 * h;
        for l in &self.layers {
            total += l.linears.iter().map(|lin| lin.base_numel(ops)).sum::<usize>() + 4 * h;
        }
        ModelSummary {
            architecture: "BertForSequenceClassification".into(),
            total_parameters: total + h * (h + 1) + trainable,
            trainable_parameters: trainable,
            num_labels,
            hidden_size: h,
            max_positions: self.cfg.max_position_embeddings,
        }
    }

    fn peft_info(&self) -> PeftInfo {
        peft_info(&self.targets)
    }

    fn memory_shape(&self, ops: &O, trainable: usize) -> Option<lora_core::memory::ModelShape> {
        let n = |w: &O::W| ops.weight_dims(w).iter().product::<usize>();
        let h = self.cfg.hidden_size;
        let mut matrices = n(&self.word_embeddings) + n(&self.position_embeddings) + n(&self.token_type_embeddings);
        matrices += n(&self.pooler.0);
        let mut vectors = 2 * h + n(&self.pooler.1);
        for l in &self.layers {
            for lin in &l.linears {
                matrices += n(lin.weight());
                vectors += lin.base_numel(ops) - n(lin.weight());
            }
            vectors += 4 * h;
        }
        Some(lora_core::memory::ModelShape {
            blocks: self.layers.len(),
            hidden: h,
            heads: self.cfg.num_attention_heads,
            intermediate: self.cfg.intermediate_size,
            frozen_values: matrices + vectors,
            frozen_matrix_values: matrices,
            trainable,
            data_bytes: 0,
            tokens: None,
            decoder: None,
        })
    }
}
