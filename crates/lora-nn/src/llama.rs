//! `LlamaForCausalLM` with LoRA over a quantized GGUF base, written once:
//! RMS-norm pre-norm blocks, grouped-query attention with rotate-half RoPE,
//! a SwiGLU feed-forward, and an output projection tied to the token embedding
//! (or `output.weight`). The base matrices stay in their stored blocks
//! ([`TensorOps::quantized`]); the token embedding is decoded row by row.
//!
//! The model implements the core's `AdapterModel` itself (not through
//! [`crate::Model`]): its evaluation returns token sums, and it decodes
//! incrementally with a key/value cache for generation.

use std::sync::Arc;

use lora_core::adapter::{AdapterModel, CausalDecoder, EvalSums, ModelSummary, PeftInfo, StepOutput};
use lora_core::calibration::InputStatistics;
use lora_core::init::{derive_seed, rng};
use lora_core::llama::{LlamaConfig, TARGETS, gguf_name, hf_name, peft_info, resolve_targets};
use lora_core::{Batch, Error, HostTensor, LoraSpec, ParamInfo, Result, Targets, TokenBatch};

use crate::checkpoint::Chain;
use crate::dropout::MaskSource;
use crate::gguf::{GgufFile, QuantView, unpermute_rows};
use crate::linear::LoraWeights;
use crate::ops::{Mask, TensorOps};
use crate::params::ParamStore;

/// Key prefix of every adapter tensor: PEFT wraps `LlamaForCausalLM` as `base_model.model`.
const PEFT_PREFIX: &str = "base_model.model.";

/// Called with a linear's index in [`TARGETS`] and its input `[rows, in]`.
type Observer<'a, O> = dyn FnMut(usize, &<O as TensorOps>::T) -> Result<()> + 'a;
/// As [`Observer`], with the layer's index first.
type LayerObserver<'a, O> = dyn FnMut(usize, usize, &<O as TensorOps>::T) -> Result<()> + 'a;

/// The linears of a layer that read one input, by index in [`TARGETS`]:
/// q, k, v; o; gate, up; down.
const SITES: [&[usize]; 4] = [&[0, 1, 2], &[3], &[4, 5], &[6]];

/// A frozen quantized matrix that may carry a LoRA adapter.
#[derive(Clone)]
pub struct QuantLinear<O: TensorOps> {
    base: O::Q,
    lora: Option<LoraWeights<O>>,
    /// `W + scale * B A`, decoded, while merged; the quantized base is kept untouched.
    merged: Option<O::W>,
}

impl<O: TensorOps> QuantLinear<O> {
    pub fn new(base: O::Q) -> Self {
        Self {
            base,
            lora: None,
            merged: None,
        }
    }

    /// `x [rows, in]` -> `[rows, out]`.
    pub fn forward(&self, ops: &O, x: &O::T, masks: Option<&mut MaskSource>) -> Result<O::T> {
        if let Some(m) = &self.merged {
            return ops.frozen_linear(x, m, None);
        }
        let base = ops.quantized_linear(x, &self.base)?;
        match &self.lora {
            Some(l) => l.add_update(ops, &base, x, masks),
            None => Ok(base),
        }
    }

    fn merge(&mut self, ops: &O) -> Result<()> {
        if self.merged.is_none()
            && let Some(l) = &self.lora
        {
            self.merged = Some(ops.weight_add(&ops.dequantize(&self.base)?, &l.delta(ops)?)?);
        }
        Ok(())
    }
}

pub struct Layer<O: TensorOps> {
    /// In the order of [`TARGETS`].
    linears: Vec<QuantLinear<O>>,
    attn_norm: O::W,
    ffn_norm: O::W,
}

/// The keys and values of every layer for the positions decoded so far.
pub struct KvCache<O: TensorOps> {
    layers: Vec<Option<(O::T, O::T)>>,
    len: usize,
}

impl<O: TensorOps> KvCache<O> {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Llama<O: TensorOps> {
    pub ops: O,
    pub cfg: LlamaConfig,
    file: Arc<GgufFile>,
    layers: Vec<Layer<O>>,
    output_norm: O::W,
    lm_head: O::Q,
    store: ParamStore<O>,
    peft: PeftInfo,
    cache: Option<KvCache<O>>,
    /// Recompute each layer in the backward pass ([`crate::checkpoint`]).
    pub checkpointing: bool,
}

/// Where the tokens of a batch sit: `b` rows of `t` tokens from position
/// `start`, or packed rows whose conversations (segments) each restart at
/// position 0 and attend only within themselves.
struct Geometry<'a> {
    b: usize,
    t: usize,
    /// One per index (`t`), shared by the rows, or one per token (`b * t`) when packed.
    positions: Vec<u32>,
    /// The batch's attention mask when it holds several segments in a row.
    segments: Option<&'a [u32]>,
}

impl<'a> Geometry<'a> {
    fn plain(b: usize, t: usize, start: usize) -> Self {
        Self {
            b,
            t,
            positions: (start as u32..(start + t) as u32).collect(),
            segments: None,
        }
    }

    /// A training or evaluation batch: packed when some mask value exceeds 1
    /// (the mask numbers each row's conversations 1, 2, ...; 0 is padding).
    fn of(batch: &'a TokenBatch) -> Self {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let mask = &batch.attention_mask;
        if mask.iter().all(|&m| m <= 1) {
            return Self::plain(b, t, 0);
        }
        let mut positions = Vec::with_capacity(b * t);
        for row in mask.chunks_exact(t.max(1)) {
            let mut p = 0;
            for (j, &m) in row.iter().enumerate() {
                if j > 0 && m != row[j - 1] {
                    p = 0;
                }
                positions.push(p);
                p += 1;
            }
        }
        Self {
            b,
            t,
            positions,
            segments: Some(mask),
        }
    }
}

/// Causal attention kept within segments: key `j` for query `i` of a row when
/// `j <= i` and both belong to the same conversation. Composed from the
/// operations like [`crate::ops::default_attention`], with a `[b, 1, t, t]` bias.
fn segment_attention<O: TensorOps>(
    ops: &O,
    (q, k, v): (&O::T, &O::T, &O::T),
    segments: &[u32],
    scale: f64,
) -> Result<O::T> {
    let (qd, kd) = (ops.dims(q), ops.dims(k));
    let (b, heads, t, hd) = (qd[0], qd[1], qd[2], qd[3]);
    let group = heads / kd[1];
    let repeat = |x: &O::T| -> Result<O::T> {
        let x = ops.reshape(x, &[b, kd[1], 1, t, hd])?;
        let x = ops.broadcast_as(&x, &[b, kd[1], group, t, hd])?;
        ops.reshape(&x, &[b, heads, t, hd])
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = ops.scale(&ops.matmul(q, &ops.transpose(&k, 2, 3)?)?, scale)?;
    let mut bias = Vec::with_capacity(b * t * t);
    for row in segments.chunks_exact(t) {
        for i in 0..t {
            bias.extend((0..t).map(|j| if j <= i && row[j] == row[i] { 0.0 } else { -1e9 }));
        }
    }
    let scores = ops.broadcast_add(&scores, &ops.tensor(bias, &[b, 1, t, t])?)?;
    ops.matmul(&ops.softmax_last_dim(&scores)?, &v)
}

/// Builds the decoder from a GGUF file, inserts LoRA layers where `lora` says
/// and initialises the adapter from `seed`.
pub fn build<O: TensorOps>(
    ops: O,
    file: Arc<GgufFile>,
    cfg: LlamaConfig,
    lora: &LoraSpec,
    seed: u64,
) -> Result<Llama<O>> {
    let targets = if lora.target_modules.is_empty() {
        Vec::new()
    } else {
        resolve_targets(lora, &cfg)?
    };
    let mut init = rng(derive_seed(seed, "lora-init", 0));
    let mut store = ParamStore::default();
    let gain = |name: &str| -> Result<O::W> {
        let v = file.vector(name)?;
        let n = v.len();
        ops.weight_from_host(v, &[n])
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let mut linears = Vec::with_capacity(TARGETS.len());
        for (module, _, _) in TARGETS {
            let view = file.matrix(&gguf_name(i, module))?;
            let heads = match module {
                "q_proj" => Some(cfg.num_heads),
                "k_proj" => Some(cfg.num_kv_heads),
                _ => None,
            };
            let base = match heads {
                Some(h) => {
                    let rows = unpermute_rows(view.bytes, view.shape[0], h);
                    ops.quantized(QuantView { bytes: &rows, ..view })?
                }
                None => ops.quantized(view)?,
            };
            let mut lin = QuantLinear::new(base);
            if targets.contains(&(i, module)) {
                let full = hf_name(i, module);
                let spec = lora.for_module(&full);
                let (out, inp) = cfg.linear_dims(module);
                let key = format!("{PEFT_PREFIX}{full}");
                let shapes = [vec![spec.r, inp], vec![out, spec.r]];
                lin.lora = Some(LoraWeights::register(
                    &ops,
                    &mut store,
                    &key,
                    &spec,
                    (inp, out),
                    shapes,
                    &mut init,
                )?);
            }
            linears.push(lin);
        }
        layers.push(Layer {
            linears,
            attn_norm: gain(&format!("blk.{i}.attn_norm.weight"))?,
            ffn_norm: gain(&format!("blk.{i}.ffn_norm.weight"))?,
        });
    }
    let head_name = if cfg.tied_embeddings {
        "token_embd.weight"
    } else {
        "output.weight"
    };
    let lm_head = ops.quantized(file.matrix(head_name)?)?;
    lora_core::lora::check_patterns(lora, store.infos().iter().map(|p| p.name.as_str()))?;
    Ok(Llama {
        output_norm: gain("output_norm.weight")?,
        peft: peft_info(lora, &targets),
        ops,
        cfg,
        file,
        layers,
        lm_head,
        store,
        cache: None,
        checkpointing: false,
    })
}

/// Rows `rows` (ascending) of `x [n, d]`, as one narrow per run of consecutive rows.
fn select_rows<O: TensorOps>(ops: &O, x: &O::T, rows: &[usize]) -> Result<O::T> {
    let n = ops.dims(x)[0];
    if rows.len() == n {
        return Ok(x.clone());
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let mut j = i + 1;
        while j < rows.len() && rows[j] == rows[j - 1] + 1 {
            j += 1;
        }
        parts.push(ops.narrow(x, 0, rows[i], j - i)?);
        i = j;
    }
    match parts.len() {
        1 => Ok(parts.pop().expect("one part")),
        _ => ops.cat(&parts.iter().collect::<Vec<_>>(), 0),
    }
}

fn tokens(batch: &Batch) -> Result<&TokenBatch> {
    match batch {
        Batch::Tokens(t) => Ok(t),
        _ => Err(Error::Other("the causal language model takes token batches".into())),
    }
}

impl<O: TensorOps> Llama<O> {
    /// Rows of the token embedding, decoded from their blocks.
    fn embed(&self, ids: &[u32]) -> Result<O::T> {
        let table = self.file.matrix("token_embd.weight")?;
        let rows = table.rows_to_f32(ids)?;
        self.ops.tensor(rows, &[ids.len(), self.cfg.hidden_size])
    }

    /// One block over `x [b * t, d]` at positions `start..start + t`, with the
    /// layer's cache when decoding.
    fn layer(
        &self,
        l: &Layer<O>,
        x: &O::T,
        g: &Geometry<'_>,
        cache: Option<&mut Option<(O::T, O::T)>>,
        masks: &mut Option<&mut MaskSource>,
        mut observe: Option<&mut Observer<'_, O>>,
    ) -> Result<O::T> {
        let ops = &self.ops;
        let c = &self.cfg;
        let (heads, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim());
        let (b, t, positions) = (g.b, g.t, &g.positions);
        let mut linear = |i: usize, x: &O::T| {
            // q, k, v read one input, gate and up another: each site is seen once.
            if let Some(f) = observe.as_deref_mut()
                && SITES.iter().any(|s| s[0] == i)
            {
                f(i, x)?;
            }
            l.linears[i].forward(ops, x, masks.as_deref_mut())
        };
        let h = ops.rms_norm(x, &l.attn_norm, c.rms_eps)?;
        let split = |y: O::T, n: usize| ops.transpose(&ops.reshape(&y, &[b, t, n, hd])?, 1, 2);
        let q = ops.rope(&split(linear(0, &h)?, heads)?, positions, c.rope_theta)?;
        let mut k = ops.rope(&split(linear(1, &h)?, kv)?, positions, c.rope_theta)?;
        let mut v = split(linear(2, &h)?, kv)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = ops.cat(&[pk, &k], 2)?;
                v = ops.cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let att = match g.segments {
            Some(segments) => segment_attention(ops, (&q, &k, &v), segments, scale)?,
            None => ops.attention(&q, &k, &v, Mask::Causal, scale)?,
        };
        let att = ops.reshape(&ops.transpose(&att, 1, 2)?, &[b * t, heads * hd])?;
        let x = ops.add(x, &linear(3, &att)?)?;
        let h = ops.rms_norm(&x, &l.ffn_norm, c.rms_eps)?;
        let gate = ops.silu(&linear(4, &h)?)?;
        let up = linear(5, &h)?;
        ops.add(&x, &linear(6, &ops.mul(&gate, &up)?)?)
    }

    /// The final hidden states `[b * t, d]` of `ids [b * t]`.
    ///
    /// Without `masks` (evaluation, generation) each layer's output is cut from
    /// the graph that made it, where the backend can: candle's parameters are
    /// always-tracked variables, so an evaluation pass would otherwise keep
    /// every layer's intermediates until its logits are read.
    fn hidden(
        &self,
        ids: &[u32],
        g: &Geometry<'_>,
        mut cache: Option<&mut KvCache<O>>,
        mut masks: Option<&mut MaskSource>,
        mut observe: Option<&mut LayerObserver<'_, O>>,
    ) -> Result<O::T> {
        let untracked = masks.is_none() && self.ops.checkpointing();
        let mut x = self.embed(ids)?;
        for (i, l) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let mut seen = observe.as_deref_mut().map(|f| move |j: usize, x: &O::T| f(i, j, x));
            x = self.layer(
                l,
                &x,
                g,
                slot,
                &mut masks,
                seen.as_mut().map(|f| f as &mut Observer<'_, O>),
            )?;
            if untracked {
                x = self.ops.detach(&x)?;
            }
        }
        self.ops.rms_norm(&x, &self.output_norm, self.cfg.rms_eps)
    }

    /// Logits `[rows, vocab]` of the final hidden states `h` at the positions
    /// whose target has a weight, with those targets and weights.
    fn head_logits(&self, h: &O::T, b: &TokenBatch) -> Result<(O::T, Vec<u32>, Vec<f32>)> {
        let rows: Vec<usize> = (0..b.weights.len()).filter(|&i| b.weights[i] != 0.0).collect();
        let h = select_rows(&self.ops, h, &rows)?;
        let targets = rows.iter().map(|&i| b.targets[i]).collect();
        let weights = rows.iter().map(|&i| b.weights[i]).collect();
        Ok((self.ops.quantized_linear(&h, &self.lm_head)?, targets, weights))
    }

    /// The weighted mean cross-entropy of the final hidden states `h`.
    fn loss_of(&self, h: &O::T, b: &TokenBatch) -> Result<O::T> {
        let (logits, ids, weights) = self.head_logits(h, b)?;
        self.ops.cross_entropy(
            &logits,
            Targets::Tokens {
                ids: &ids,
                weights: &weights,
            },
        )
    }

    /// Logits `[rows, vocab]` of the positions whose target has a weight, with
    /// those targets and weights: the output projection and the loss skip
    /// prompt and padding positions. With `masks`, in training mode (dropout).
    pub fn target_logits(&self, b: &TokenBatch, masks: Option<&mut MaskSource>) -> Result<(O::T, Vec<u32>, Vec<f32>)> {
        let h = self.hidden(&b.input_ids, &Geometry::of(b), None, masks, None)?;
        self.head_logits(&h, b)
    }

    fn check(&self, b: &TokenBatch) -> Result<()> {
        let n = b.batch_size * b.seq_len;
        if [
            b.input_ids.len(),
            b.attention_mask.len(),
            b.targets.len(),
            b.weights.len(),
        ] != [n; 4]
        {
            return Err(Error::Data(format!(
                "a token batch of {} x {} has {} ids, {} mask values, {} targets and {} weights",
                b.batch_size,
                b.seq_len,
                b.input_ids.len(),
                b.attention_mask.len(),
                b.targets.len(),
                b.weights.len()
            )));
        }
        if b.seq_len > self.cfg.context_length {
            return Err(Error::Data(format!(
                "sequence length {} exceeds the model's context of {} tokens",
                b.seq_len, self.cfg.context_length
            )));
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = b.input_ids.iter().chain(&b.targets).find(|&&i| i >= vocab) {
            return Err(Error::Data(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// Forward the new tokens `ids` of one sequence through the cache; returns
    /// the logits of the last position.
    pub fn step(&self, cache: &mut KvCache<O>, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Other("nothing to decode".into()));
        }
        let start = cache.len;
        if start + ids.len() > self.cfg.context_length {
            return Err(Error::Data(format!(
                "{} tokens exceed the model's context of {}",
                start + ids.len(),
                self.cfg.context_length
            )));
        }
        let t = ids.len();
        let h = self.hidden(ids, &Geometry::plain(1, t, start), Some(cache), None, None)?;
        cache.len += t;
        let last = self.ops.narrow(&h, 0, t - 1, 1)?;
        self.ops.to_host(&self.ops.quantized_linear(&last, &self.lm_head)?)
    }

    /// Mean negative log-likelihood of `ids[1..]` given their prefixes (one sequence).
    pub fn nll(&self, ids: &[u32]) -> Result<f64> {
        let n = ids.len();
        if n < 2 {
            return Err(Error::Data("the NLL needs at least two tokens".into()));
        }
        let batch = TokenBatch {
            batch_size: 1,
            seq_len: n - 1,
            input_ids: ids[..n - 1].to_vec(),
            attention_mask: vec![1; n - 1],
            targets: ids[1..].to_vec(),
            weights: vec![1.0; n - 1],
        };
        let s = self.token_sums(&batch)?;
        Ok(s.loss_sum / s.weight)
    }

    fn token_sums(&self, b: &TokenBatch) -> Result<EvalSums> {
        self.check(b)?;
        let mut sums = EvalSums::default();
        if b.weights.iter().all(|&w| w == 0.0) {
            return Ok(sums);
        }
        let (logits, targets, weights) = self.target_logits(b, None)?;
        let logits = self.ops.to_host(&logits)?;
        let vocab = self.cfg.vocab_size;
        for ((row, &target), &w) in logits.chunks_exact(vocab).zip(&targets).zip(&weights) {
            let (w, target) = (w as f64, target as usize);
            sums.loss_sum += w * lora_core::adapter::cross_entropy(row, target);
            sums.weight += w;
            if lora_core::adapter::argmax(row) == target {
                sums.correct += w;
            }
        }
        Ok(sums)
    }

    fn for_each_lora(&mut self, f: &mut dyn FnMut(&mut QuantLinear<O>) -> Result<()>) -> Result<()> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears.iter_mut())
            .try_for_each(f)
    }
}

impl<O: TensorOps> AdapterModel for Llama<O> {
    fn backend(&self) -> &'static str {
        self.ops.backend()
    }

    fn summary(&self) -> ModelSummary {
        let total = self
            .file
            .header
            .tensors
            .iter()
            .map(|t| t.numel() as usize)
            .sum::<usize>();
        ModelSummary {
            architecture: "LlamaForCausalLM".into(),
            total_parameters: total + self.store.numel(),
            trainable_parameters: self.store.numel(),
            num_labels: self.cfg.vocab_size,
            hidden_size: self.cfg.hidden_size,
            max_positions: self.cfg.context_length,
        }
    }

    fn peft_info(&self) -> PeftInfo {
        self.peft.clone()
    }

    fn memory_shape(&self) -> Option<lora_core::memory::ModelShape> {
        let h = &self.file.header;
        let values = |t: &lora_core::gguf::TensorInfo| t.numel() as usize;
        Some(lora_core::memory::ModelShape {
            blocks: self.cfg.num_layers,
            hidden: self.cfg.hidden_size,
            heads: self.cfg.num_heads,
            intermediate: self.cfg.intermediate_size,
            frozen_values: h.tensors.iter().map(values).sum(),
            frozen_matrix_values: h.tensors.iter().filter(|t| t.dims.len() >= 2).map(values).sum(),
            trainable: self.store.numel(),
            data_bytes: 0,
            tokens: None,
            decoder: Some(lora_core::memory::Decoder {
                vocab: self.cfg.vocab_size,
                stored_bytes: h.tensors.iter().filter_map(|t| t.nbytes()).sum(),
                file_bytes: h.file_len,
            }),
        })
    }

    fn params(&self) -> &[ParamInfo] {
        self.store.infos()
    }

    fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.store.read(&self.ops)
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        self.store.write(&self.ops, values)
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        let b = tokens(batch)?;
        self.check(b)?;
        if b.weights.iter().all(|&w| w == 0.0) {
            return Err(Error::Data("a training batch without a target token".into()));
        }
        if self.checkpointing {
            return crate::checkpoint::train_step(&self.ops, &*self, &self.store, batch, dropout_seed);
        }
        let ops = &self.ops;
        ops.track(self.store.leaves());
        let mut masks = MaskSource::new(dropout_seed);
        let h = self.hidden(&b.input_ids, &Geometry::of(b), None, Some(&mut masks), None)?;
        let loss = self.loss_of(&h, b)?;
        drop(h);
        let value = ops.to_host(&loss)?;
        let grads = ops.backward(&loss)?;
        Ok(StepOutput {
            loss: value
                .first()
                .copied()
                .ok_or_else(|| Error::Other("the loss is empty".into()))?,
            weight: batch.targets().weight(),
            grads: self.store.grads(ops, &grads)?,
        })
    }

    fn predict(&self, _batch: &Batch) -> Result<HostTensor> {
        Err(Error::Unsupported {
            backend: self.ops.backend(),
            feature: "class prediction with a causal language model",
        })
    }

    fn eval_step(&self, batch: &Batch) -> Result<EvalSums> {
        self.token_sums(tokens(batch)?)
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        let b = tokens(batch)?;
        self.check(b)?;
        let h = self.hidden(&b.input_ids, &Geometry::of(b), None, None, None)?;
        Ok(HostTensor::new(
            vec![b.batch_size, b.seq_len, self.cfg.hidden_size],
            self.ops.to_host(&h)?,
        ))
    }

    fn merge(&mut self) -> Result<()> {
        let ops = self.ops.clone();
        self.for_each_lora(&mut |l| l.merge(&ops))
    }

    fn unmerge(&mut self) -> Result<()> {
        self.for_each_lora(&mut |l| {
            l.merged = None;
            Ok(())
        })
    }

    fn decoder(&mut self) -> Option<&mut dyn CausalDecoder> {
        Some(self)
    }
}

/// The decoder as a chain of its layers, for gradient checkpointing: the
/// embedding has no parameter, and the loss is the head's on target rows.
impl<O: TensorOps> Chain<O> for Llama<O> {
    fn blocks(&self) -> usize {
        self.layers.len()
    }

    fn embed(&self, _ops: &O, batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        Llama::embed(self, &tokens(batch)?.input_ids)
    }

    fn block(&self, _ops: &O, i: usize, x: &O::T, batch: &Batch, mut masks: Option<&mut MaskSource>) -> Result<O::T> {
        let b = tokens(batch)?;
        self.layer(&self.layers[i], x, &Geometry::of(b), None, &mut masks, None)
    }

    fn loss(&self, ops: &O, x: &O::T, batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        let h = ops.rms_norm(x, &self.output_norm, self.cfg.rms_eps)?;
        self.loss_of(&h, tokens(batch)?)
    }
}

impl<O: TensorOps> CausalDecoder for Llama<O> {
    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn reset(&mut self) {
        self.cache = Some(KvCache::new(self.cfg.num_layers));
    }

    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.cache.take().unwrap_or_else(|| KvCache::new(self.cfg.num_layers));
        let out = self.step(&mut cache, ids);
        self.cache = Some(cache);
        out
    }

    fn input_statistics(&mut self, ids: &[u32], stats: &mut InputStatistics) -> Result<()> {
        if ids.is_empty() || ids.len() > self.cfg.context_length {
            return Err(Error::Data(format!(
                "a calibration sequence of {} tokens (the context holds {})",
                ids.len(),
                self.cfg.context_length
            )));
        }
        let ops = self.ops.clone();
        let mut gram = |layer: usize, i: usize, x: &O::T| -> Result<()> {
            let site = SITES.iter().find(|s| s[0] == i).expect("observed sites only");
            let names: Vec<String> = site.iter().map(|&j| gguf_name(layer, TARGETS[j].0)).collect();
            let dim = *ops.dims(x).last().unwrap_or(&0);
            let xtx = ops.to_host(&ops.matmul(&ops.transpose(x, 0, 1)?, x)?)?;
            stats.add(&names, dim, &xtx, ids.len())
        };
        self.hidden(ids, &Geometry::plain(1, ids.len(), 0), None, None, Some(&mut gram))?;
        stats.sequences += 1;
        Ok(())
    }
}

/// Opens a GGUF file and builds the decoder with LoRA from it.
pub fn load<O: TensorOps>(ops: O, path: &std::path::Path, lora: &LoraSpec, seed: u64) -> Result<Llama<O>> {
    let file = GgufFile::open(path)?;
    let cfg = LlamaConfig::from_header(&file.header)?;
    build(ops, Arc::new(file), cfg, lora, seed)
}

/// `[model] type = "llama-causal-lm"`.
pub struct CausalLmStage<O: TensorOps> {
    pub spec: lora_core::llama::CausalLmSpec,
    pub ops: O,
}

impl<O: TensorOps> CausalLmStage<O> {
    pub fn from_component(
        c: &lora_core::config::Component,
        ops: O,
    ) -> std::result::Result<Box<dyn lora_core::stage::ModelStage>, lora_core::diag::Diagnostics> {
        Ok(Box::new(Self {
            spec: lora_core::llama::CausalLmSpec::from_component(c)?,
            ops,
        }))
    }
}

impl<O: TensorOps> lora_core::stage::ModelStage for CausalLmStage<O> {
    fn resolved(&self) -> serde_json::Value {
        self.spec.resolved()
    }

    fn options(&self) -> lora_core::ModelOptions {
        lora_core::ModelOptions {
            dtype: self.spec.dtype,
            ..Default::default()
        }
    }

    /// The GGUF file itself: its header holds the tokenizer and the chat template.
    fn tokenizer(&self, ctx: &lora_core::stage::StageContext) -> Result<Option<std::path::PathBuf>> {
        self.spec.file(ctx).map(Some)
    }

    fn facts(&self, ctx: &lora_core::stage::StageContext) -> Result<Option<lora_core::rules::ModelFacts>> {
        self.spec.facts(ctx).map(Some)
    }

    /// The GGUF file, hashed into a checkpoint's manifest.
    fn base_files(&self, ctx: &lora_core::stage::StageContext) -> Result<Vec<std::path::PathBuf>> {
        Ok(vec![self.spec.file(ctx)?])
    }

    fn build(
        &self,
        ctx: &lora_core::stage::StageContext,
        lora: &LoraSpec,
        task: &lora_core::Task,
        options: &lora_core::ModelOptions,
    ) -> Result<Box<dyn AdapterModel>> {
        options.check(self.ops.backend(), &[lora_core::DType::F32], self.ops.checkpointing())?;
        if *task != lora_core::Task::CausalLm {
            return Err(Error::Other(format!(
                "llama-causal-lm trains a causal-lm task, not {}: use a chat or text data source",
                task.name()
            )));
        }
        let mut model = load(self.ops.clone(), &self.spec.file(ctx)?, lora, ctx.seed)?;
        model.checkpointing = options.gradient_checkpointing;
        Ok(Box::new(model))
    }

    fn base_model_name(&self, ctx: &lora_core::stage::StageContext) -> Result<String> {
        self.spec.base_model_name(ctx)
    }
}
