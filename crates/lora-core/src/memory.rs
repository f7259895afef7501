//! The memory planner's arithmetic: the predicted peak resident memory of a
//! training run from the model's dimensions, the tokens of an example, the
//! micro-batch, the precision and checkpointing. Backend-independent numbers
//! come from the shapes; what each backend keeps alive per activation is a
//! [`Profile`] measured on this project's own kernels (see ARCHITECTURE.md,
//! "Memory and precision"). Validation rules, `lora plan` and
//! `batch-size = "auto"` all use [`predict`].

use serde::{Deserialize, Serialize};

use crate::adapter::{DType, ModelOptions};

const MIB: f64 = (1u64 << 20) as f64;

/// The dimensions of a transformer classifier that decide its activations.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelShape {
    pub blocks: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Frozen base values (every weight of the base, for a LoRA model; none in full training).
    pub frozen_values: usize,
    /// Of which in matrices (kept in the narrow type with `dtype = "bf16"`; vectors stay f32).
    pub frozen_matrix_values: usize,
    /// Trainable values (LoRA matrices, head; every weight in full training).
    pub trainable: usize,
    /// Examples read into memory before training (texts, or images as f32 pixels), in bytes.
    pub data_bytes: u64,
    /// The tokens of every example, when the model fixes them (patches plus the
    /// class token of an image model); text models take them from the data.
    pub tokens: Option<usize>,
    /// What a causal language model adds (`None` for a classifier).
    pub decoder: Option<Decoder>,
}

/// The terms of a causal language model over a quantized GGUF base: its output
/// projection onto the vocabulary (logits for every target token, and the
/// projection's matrix decoded while it multiplies), and its base kept in the
/// stored blocks where the backend computes with them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Decoder {
    pub vocab: usize,
    /// Bytes of the base's tensors as stored (quantized blocks).
    pub stored_bytes: u64,
    /// Bytes of the model file, memory-mapped and read once at load (resident).
    pub file_bytes: u64,
}

/// What one backend keeps for a [`Decoder`]'s terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderProfile {
    /// The frozen matrices stay in their stored blocks (else decoded to f32 at load).
    pub keeps_quantized: bool,
    /// A decoder block's activations relative to the profile's MiniLM-fitted
    /// block: LoRA with dropout on seven linears, the rotary embedding's copies,
    /// the key/value heads repeated for grouped-query attention, SwiGLU.
    pub block_scale: f64,
    /// f32 copies of the `[tokens, vocab]` logits alive at the loss (logits,
    /// softmax, gradient, the product's transient).
    pub logit_copies: f64,
    /// Decoded copies of the `[vocab, hidden]` output projection alive at once
    /// (candle decodes it for each product, forward and backward).
    pub head_decoded: f64,
}

/// What one backend keeps alive, in f32 values, per block and example, for
/// each token times hidden unit, token times feed-forward unit, and attention
/// score (heads x tokens x tokens); and its fixed cost (binary, allocator,
/// runtime), in bytes. Evaluation keeps `eval_share` of a training pass's
/// activations at the same batch (a graph of tracked tensors, or none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub backend: &'static str,
    pub fixed_bytes: f64,
    pub per_hidden: f64,
    pub per_intermediate: f64,
    pub per_score: f64,
    pub eval_share: f64,
    /// Blocks' worth of activations alive at once under checkpointing: the
    /// recomputed block and its backward pass's own buffers.
    pub checkpoint_blocks: f64,
    pub decoder: DecoderProfile,
}

/// Fitted on MiniLM-L6 with LoRA r=8 on query and value (`lora bench` at
/// 8x64, 32x128 and 32x512 tokens, one process per case); see ARCHITECTURE.md.
pub const PROFILES: [Profile; 2] = [
    Profile {
        backend: "candle",
        fixed_bytes: 68.0 * MIB,
        per_hidden: 14.2,
        per_intermediate: 3.0,
        per_score: 7.7,
        // candle's parameters are always-tracked `Var`s, so an evaluation
        // batch keeps its whole graph until the logits are read.
        eval_share: 1.05,
        checkpoint_blocks: 2.0,
        // Fitted on SmolLM2-135M (configs/chat-smollm2.toml with and without
        // checkpointing); see ARCHITECTURE.md, "Causal language model".
        decoder: DecoderProfile {
            keeps_quantized: true,
            block_scale: BLOCK_SCALE_CANDLE,
            logit_copies: 4.0,
            head_decoded: 2.0,
        },
    },
    Profile {
        backend: "burn",
        fixed_bytes: 53.0 * MIB,
        per_hidden: 7.4,
        per_intermediate: 2.0,
        per_score: 1.62,
        // Evaluation tracks no parameter, so it builds no graph: about one
        // block's activations are alive at a time (estimated, not fitted).
        eval_share: 0.2,
        // Measured: at 32 x 512 checkpointing saved only 14% on burn (5.2
        // against 6.0 GiB); about five blocks' worth stay alive, which the
        // planner reflects instead of assuming one.
        checkpoint_blocks: 5.0,
        // Not fitted: burn decodes the base at load; its block and logit terms
        // are taken as candle's (an estimate, not a measurement).
        decoder: DecoderProfile {
            keeps_quantized: false,
            block_scale: BLOCK_SCALE_CANDLE,
            logit_copies: 4.0,
            head_decoded: 0.0,
        },
    },
];

const BLOCK_SCALE_CANDLE: f64 = 3.6;

/// What an image data pipeline costs beyond its pixels (its producer thread,
/// rayon's workers and their allocator heaps, decoding buffers): fitted on one
/// run of `configs/pretrain-vit-fashion.toml` on candle (see ARCHITECTURE.md).
pub const IMAGE_PIPELINE_BYTES: u64 = 103 << 20;

/// The profile of `backend` (candle's for a backend without one).
pub fn profile(backend: &str) -> Profile {
    PROFILES
        .iter()
        .copied()
        .find(|p| p.backend == backend)
        .unwrap_or(PROFILES[0])
}

/// A predicted peak, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prediction {
    pub fixed: f64,
    pub data: f64,
    pub weights: f64,
    /// Parameters, gradients and optimizer state (host buffers).
    pub training_state: f64,
    /// The larger of a training micro-step's and an evaluation batch's activations.
    pub activations: f64,
    pub total: f64,
}

/// The micro-batch of a step and the tokens of its longest example (patches
/// plus the class token for an image model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    pub batch: usize,
    pub tokens: usize,
}

/// f32 values one block keeps per example at `tokens`.
fn per_block(p: &Profile, m: &ModelShape, tokens: usize) -> f64 {
    let t = tokens as f64;
    let scale = if m.decoder.is_some() {
        p.decoder.block_scale
    } else {
        1.0
    };
    scale
        * (t * (p.per_hidden * m.hidden as f64 + p.per_intermediate * m.intermediate as f64)
            + p.per_score * (m.heads as f64) * t * t)
}

/// Bytes of a decoder's output projection at `rows` target tokens: the logits'
/// copies and the decoded matrix.
pub fn head_bytes(p: &Profile, m: &ModelShape, rows: usize) -> f64 {
    m.decoder.map_or(0.0, |d| {
        let v = d.vocab as f64;
        4.0 * (p.decoder.logit_copies * rows as f64 * v + p.decoder.head_decoded * v * m.hidden as f64)
    })
}

/// Activation bytes of a training micro-step.
pub fn step_activations(p: &Profile, m: &ModelShape, step: StepShape, checkpointing: bool) -> f64 {
    let block = per_block(p, m, step.tokens) * step.batch as f64;
    let blocks = m.blocks.max(1) as f64;
    let values = if checkpointing {
        // The kept input of every block, plus one block recomputed at a time.
        blocks * (step.batch * step.tokens * m.hidden) as f64 + p.checkpoint_blocks * block
    } else {
        blocks * block
    };
    4.0 * values + head_bytes(p, m, step.batch * step.tokens)
}

/// The predicted peak of a run training at `step` and evaluating at `eval`.
pub fn predict(
    p: &Profile,
    m: &ModelShape,
    step: StepShape,
    eval: Option<StepShape>,
    options: ModelOptions,
    optimizer_buffers: usize,
) -> Prediction {
    let narrow = match options.dtype {
        DType::F32 => 4.0,
        DType::Bf16 | DType::F16 => 2.0,
    };
    let vectors = m.frozen_values.saturating_sub(m.frozen_matrix_values) as f64;
    let weights = match m.decoder {
        // The blocks copied out of the mapped file, or decoded at load; the
        // mapped file itself is resident too, having been read once.
        Some(d) if p.decoder.keeps_quantized => (d.stored_bytes + d.file_bytes) as f64,
        Some(d) => narrow * m.frozen_matrix_values as f64 + 4.0 * vectors + d.file_bytes as f64,
        None => narrow * m.frozen_matrix_values as f64 + 4.0 * vectors,
    };
    // Parameters, their gradient, the accumulated gradient, the last good copy
    // and the optimizer's buffers, each f32.
    let training_state = 4.0 * m.trainable as f64 * (4 + optimizer_buffers) as f64;
    let train = step_activations(p, m, step, options.gradient_checkpointing);
    let eval = eval.map_or(0.0, |e| match m.decoder {
        // The decoder's evaluation cuts each layer from its graph: one block at a time.
        Some(_) => 4.0 * per_block(p, m, e.tokens) * e.batch as f64 + head_bytes(p, m, e.batch * e.tokens),
        None => p.eval_share * 4.0 * m.blocks.max(1) as f64 * per_block(p, m, e.tokens) * e.batch as f64,
    });
    let activations = train.max(eval);
    let data = m.data_bytes as f64;
    Prediction {
        fixed: p.fixed_bytes,
        data,
        weights,
        training_state,
        activations,
        total: p.fixed_bytes + data + weights + training_state + activations,
    }
}

/// A memory budget: bytes, or a share of the memory available when the run starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Fraction(f64),
}

impl Default for Budget {
    fn default() -> Self {
        Budget::Fraction(0.8)
    }
}

impl Budget {
    /// The budget in bytes on a machine with `available` bytes free (`None`: unknown).
    pub fn bytes(self, available: Option<u64>) -> Option<u64> {
        match self {
            Budget::Bytes(b) => Some(b),
            Budget::Fraction(f) => available.map(|a| (a as f64 * f) as u64),
        }
    }

    /// `"4GiB"`, `"512MiB"`, `"2.5GB"`, `"1000000"` (bytes), or a share of the
    /// available memory in (0, 1].
    pub fn parse(text: &str) -> Option<Budget> {
        let t = text.trim();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: f64 = number.trim().parse().ok()?;
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kib" => 1024.0,
            "mib" => MIB,
            "gib" => MIB * 1024.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            _ => return None,
        };
        (n.is_finite() && n > 0.0).then_some(Budget::Bytes((n * scale) as u64))
    }
}

/// What `[train] batch-size = "auto"` asks of the planner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoBatch {
    /// Examples per optimizer step: micro-batch times accumulation.
    pub effective: usize,
    pub budget: Budget,
    /// Time the micro-batches that fit and keep the fastest per example,
    /// instead of the largest.
    pub throughput: bool,
}

/// The largest micro-batch that divides `effective` and whose prediction fits
/// `budget`, with its prediction; `None` when not even 1 fits.
pub fn largest_fitting(
    effective: usize,
    budget: u64,
    predict_at: impl Fn(usize) -> Prediction,
) -> Option<(usize, Prediction)> {
    (1..=effective.max(1))
        .rev()
        .filter(|b| effective.is_multiple_of(*b))
        .map(|b| (b, predict_at(b)))
        .find(|(_, p)| p.total <= budget as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> ModelShape {
        ModelShape {
            blocks: 6,
            hidden: 384,
            heads: 12,
            intermediate: 1536,
            frozen_values: 22_713_728,
            frozen_matrix_values: 22_600_000,
            trainable: 74_883,
            data_bytes: 0,
            tokens: None,
            decoder: None,
        }
    }

    #[test]
    fn budgets_parse_units_and_fractions() {
        assert_eq!(Budget::parse("4GiB"), Some(Budget::Bytes(4 << 30)));
        assert_eq!(Budget::parse("512 MiB"), Some(Budget::Bytes(512 << 20)));
        assert_eq!(Budget::parse("2.5GB"), Some(Budget::Bytes(2_500_000_000)));
        assert_eq!(Budget::parse("100"), Some(Budget::Bytes(100)));
        assert_eq!(Budget::parse("4 parsecs"), None);
        assert_eq!(Budget::parse("-1GiB"), None);
        assert_eq!(Budget::Fraction(0.5).bytes(Some(1000)), Some(500));
    }

    #[test]
    fn activations_grow_linearly_in_batch_and_checkpointing_keeps_one_block() {
        let p = profile("candle");
        let m = minilm();
        let one = step_activations(&p, &m, StepShape { batch: 1, tokens: 128 }, false);
        let four = step_activations(&p, &m, StepShape { batch: 4, tokens: 128 }, false);
        assert!((four - 4.0 * one).abs() < 1e-6 * four);
        // By hand: per block and example 128 * (a_h * 384 + a_i * 1536) + a_s * 12 * 128^2 values.
        let block = 128.0 * (p.per_hidden * 384.0 + p.per_intermediate * 1536.0) + p.per_score * 12.0 * 128.0 * 128.0;
        assert!((one - 4.0 * 6.0 * block).abs() < 1e-6 * one);
        let ckpt = step_activations(&p, &m, StepShape { batch: 1, tokens: 128 }, true);
        assert!((ckpt - 4.0 * (6.0 * 128.0 * 384.0 + p.checkpoint_blocks * block)).abs() < 1e-6 * ckpt);
    }

    /// SmolLM2-135M's shape: 30 blocks, hidden 576, 9 heads, feed-forward 1536,
    /// a vocabulary of 49,152, Q4_1 blocks.
    fn smollm2() -> ModelShape {
        ModelShape {
            blocks: 30,
            hidden: 576,
            heads: 9,
            intermediate: 1536,
            frozen_values: 134_515_008,
            frozen_matrix_values: 134_480_448,
            trainable: 2_442_240,
            data_bytes: 0,
            tokens: None,
            decoder: Some(Decoder {
                vocab: 49_152,
                stored_bytes: 97_000_000,
                file_bytes: 98_362_432,
            }),
        }
    }

    #[test]
    fn a_decoder_adds_its_head_keeps_its_blocks_and_evaluates_one_block_at_a_time() {
        let p = profile("candle");
        let m = smollm2();
        let (b, t) = (2usize, 191usize);
        let d = p.decoder;
        // By hand: one block per example, scaled for the decoder.
        let block = d.block_scale
            * (191.0 * (p.per_hidden * 576.0 + p.per_intermediate * 1536.0) + p.per_score * 9.0 * 191.0 * 191.0);
        let head = 4.0 * (d.logit_copies * 382.0 * 49_152.0 + d.head_decoded * 49_152.0 * 576.0);
        let plain = step_activations(&p, &m, StepShape { batch: b, tokens: t }, false);
        assert!((plain - (4.0 * 30.0 * 2.0 * block + head)).abs() < 1e-6 * plain);
        let ckpt = step_activations(&p, &m, StepShape { batch: b, tokens: t }, true);
        let kept = 30.0 * 382.0 * 576.0;
        assert!((ckpt - (4.0 * (kept + p.checkpoint_blocks * 2.0 * block) + head)).abs() < 1e-6 * ckpt);
        let options = ModelOptions {
            dtype: DType::F32,
            gradient_checkpointing: true,
        };
        let eval = StepShape { batch: 2, tokens: 191 };
        let pred = predict(&p, &m, StepShape { batch: b, tokens: t }, Some(eval), options, 2);
        // The stored blocks and the mapped file, not 4 bytes a value.
        assert_eq!(pred.weights, 97_000_000.0 + 98_362_432.0);
        // Parameters, gradient, accumulation, last good copy and AdamW's two moments.
        assert_eq!(pred.training_state, 4.0 * 2_442_240.0 * 6.0);
        // Evaluation keeps one block and the head: below the checkpointed step here.
        assert_eq!(pred.activations, ckpt);
        assert!(4.0 * 2.0 * block + head < ckpt);
        let total = p.fixed_bytes + pred.weights + pred.training_state + ckpt;
        assert!((pred.total - total).abs() < 1.0);
        // burn decodes the base at load: 4 bytes a value (and the mapped file).
        let burn = predict(
            &profile("burn"),
            &m,
            StepShape { batch: b, tokens: t },
            None,
            options,
            2,
        );
        assert_eq!(burn.weights, 4.0 * 134_515_008.0 + 98_362_432.0);
    }

    #[test]
    fn bf16_halves_the_matrices_and_the_largest_fitting_divisor_is_chosen() {
        let p = profile("candle");
        let m = minilm();
        let at = |dtype, b| {
            let options = ModelOptions {
                dtype,
                gradient_checkpointing: false,
            };
            predict(&p, &m, StepShape { batch: b, tokens: 64 }, None, options, 2)
        };
        let (f32, bf16) = (at(DType::F32, 8), at(DType::Bf16, 8));
        assert_eq!(f32.weights - bf16.weights, 2.0 * 22_600_000.0);
        // A budget between the predictions at 8 and 16 picks 8 of the divisors of 32.
        let budget = ((at(DType::F32, 8).total + at(DType::F32, 16).total) / 2.0) as u64;
        let (b, pred) = largest_fitting(32, budget, |b| at(DType::F32, b)).unwrap();
        assert_eq!(b, 8);
        assert!(pred.total <= budget as f64);
        assert!(largest_fitting(32, 1000, |b| at(DType::F32, b)).is_none());
    }
}
