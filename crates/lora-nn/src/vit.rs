//! `ViTForImageClassification`, written once: patch embedding, class token,
//! pre-norm blocks, final layer norm and a classification head. In full mode
//! (pretraining) every weight trains; in LoRA mode a saved base is frozen,
//! LoRA goes on the targeted linears (the patch embedding included) and the
//! head is new.

use std::path::Path;

use lora_core::adapter::{ModelSummary, ParamInfo, PeftInfo};
use lora_core::init::{SeededRng, derive_seed, normal, rng};
use lora_core::vit::{BaseInit, PATCH_TARGET, TARGETS, VitConfig, VitMode, patchify, peft_info, resolve_targets};
use lora_core::{Batch, Error, HostTensor, ImageBatch, LoraSpec, Result};

use crate::dropout::MaskSource;
use crate::linear::{Linear, LoraLinear, LoraWeights, Norm, TrainedLinear};
use crate::model::{Architecture, Model, Rows};
use crate::ops::{Heads, Mask, TensorOps};
use crate::params::ParamStore;
use crate::weights::WeightSource;

const PEFT_PREFIX: &str = "base_model.model.";

/// A base tensor used whole (class token, position embeddings): frozen or trained.
enum Tensor<O: TensorOps> {
    Frozen(O::W),
    Trained(O::Leaf),
}

impl<O: TensorOps> Tensor<O> {
    fn get(&self, ops: &O) -> Result<O::T> {
        match self {
            Tensor::Frozen(w) => ops.constant(w),
            Tensor::Trained(l) => Ok(ops.use_leaf(l)),
        }
    }
}

struct Block<O: TensorOps> {
    norm_before: Norm<O>,
    /// In the order of `lora_core::vit::TARGETS`.
    linears: Vec<Linear<O>>,
    norm_after: Norm<O>,
}

pub struct Vit<O: TensorOps> {
    cfg: VitConfig,
    /// `[hidden, channels * patch * patch]` (the conv kernel, flattened).
    patch: Linear<O>,
    /// `[1, 1, hidden]`.
    cls_token: Tensor<O>,
    /// `[1, tokens, hidden]`.
    position: Tensor<O>,
    blocks: Vec<Block<O>>,
    final_norm: Norm<O>,
    head: (O::Leaf, O::Leaf),
    targets: Vec<&'static str>,
    mode: VitMode,
    /// Base (non-trainable) numbers, for the summary.
    frozen: usize,
}

pub type VitClassifier<O> = Model<O, Vit<O>>;

/// Where a network's base weights come from.
enum Base<'a> {
    /// A new model: weights drawn from the seed, all trainable.
    New(Box<SeededRng>),
    /// A saved base, frozen.
    Saved(&'a dyn WeightSource),
}

/// Draws (full mode) or loads (LoRA mode) the base tensors, keeping count.
struct Builder<'a, O: TensorOps> {
    ops: O,
    base: Base<'a>,
    store: ParamStore<O>,
    frozen: usize,
    eps: f64,
    hidden: usize,
}

impl<O: TensorOps> Builder<'_, O> {
    /// A base tensor with file shape `shape` (computed as `compute`): drawn and
    /// trained (full), or loaded and frozen (LoRA).
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        compute: &[usize],
        init: BaseInit,
        decay: bool,
    ) -> Result<Tensor<O>> {
        match &mut self.base {
            Base::New(r) => {
                let values = init.values(shape.iter().product(), r);
                let info = ParamInfo::new(name, shape.to_vec(), decay).with_compute_shape(compute.to_vec());
                Ok(Tensor::Trained(self.store.add(&self.ops, info, values)?))
            }
            Base::Saved(w) => {
                let view = w.view(name)?;
                if view.shape != shape {
                    return Err(Error::Data(format!(
                        "base weight `{name}` has shape {:?}, the config says {shape:?}",
                        view.shape
                    )));
                }
                self.frozen += view.numel();
                let values = view.to_f32();
                Ok(Tensor::Frozen(self.ops.weight_from_host(values, compute)?))
            }
        }
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, file_shape: &[usize]) -> Result<Linear<O>> {
        let w = self.tensor(
            &format!("{name}.weight"),
            file_shape,
            &[out, inp],
            BaseInit::Normal,
            true,
        )?;
        let b = self.tensor(&format!("{name}.bias"), &[out], &[out], BaseInit::Zeros, false)?;
        Ok(match (w, b) {
            (Tensor::Trained(w), Tensor::Trained(b)) => Linear::Trained(TrainedLinear { w, b }),
            (Tensor::Frozen(w), Tensor::Frozen(b)) => Linear::Frozen(LoraLinear::new(w, Some(b))),
            _ => unreachable!("one base gives one kind"),
        })
    }

    fn norm(&mut self, name: &str) -> Result<Norm<O>> {
        let h = self.hidden;
        let g = self.tensor(&format!("{name}.weight"), &[h], &[h], BaseInit::Ones, false)?;
        let b = self.tensor(&format!("{name}.bias"), &[h], &[h], BaseInit::Zeros, false)?;
        let eps = self.eps;
        Ok(match (g, b) {
            (Tensor::Trained(gamma), Tensor::Trained(beta)) => Norm::Trained { gamma, beta, eps },
            (Tensor::Frozen(gamma), Tensor::Frozen(beta)) => Norm::Frozen { gamma, beta, eps },
            _ => unreachable!("one base gives one kind"),
        })
    }
}

/// A new model whose every weight trains (pretraining from scratch).
pub fn new_full<O: TensorOps>(ops: O, cfg: VitConfig, num_labels: usize, seed: u64) -> Result<VitClassifier<O>> {
    let r = rng(derive_seed(seed, "vit-init", 0));
    build(ops, cfg, Base::New(Box::new(r)), &[], None, num_labels, seed)
}

/// A saved base, frozen, with LoRA on `lora`'s targets and a new head.
pub fn from_base<O: TensorOps>(
    ops: O,
    cfg: VitConfig,
    weights: &dyn WeightSource,
    lora: &LoraSpec,
    num_labels: usize,
    seed: u64,
) -> Result<VitClassifier<O>> {
    let targets = resolve_targets(lora)?;
    build(ops, cfg, Base::Saved(weights), &targets, Some(lora), num_labels, seed)
}

fn build<O: TensorOps>(
    ops: O,
    cfg: VitConfig,
    base: Base,
    targets: &[&'static str],
    lora: Option<&LoraSpec>,
    num_labels: usize,
    seed: u64,
) -> Result<VitClassifier<O>> {
    cfg.check().map_err(Error::Data)?;
    let mode = match base {
        Base::New(_) => VitMode::Full,
        Base::Saved(_) => VitMode::Lora,
    };
    let mut lora_rng = rng(derive_seed(seed, "lora-init", 0));
    let h = cfg.hidden_size;
    let mut bld = Builder {
        ops: ops.clone(),
        base,
        store: ParamStore::default(),
        frozen: 0,
        eps: cfg.layer_norm_eps,
        hidden: h,
    };
    // Adds LoRA to a frozen linear when its module is targeted.
    let mut adapt = |bld: &mut Builder<O>,
                     lin: Linear<O>,
                     (name, path): (&str, &str),
                     file_shapes: &dyn Fn(usize) -> [Vec<usize>; 2]|
     -> Result<Linear<O>> {
        let (Linear::Frozen(l), true, Some(lora)) = (&lin, targets.contains(&name), lora) else {
            return Ok(lin);
        };
        let (out, inp) = l.dims(&ops);
        let lora = &lora.for_module(path);
        lora_core::bert::check_rank(lora, path, inp, out)?;
        let key = format!("{PEFT_PREFIX}{path}");
        let weights = LoraWeights::register(
            &ops,
            &mut bld.store,
            &key,
            lora,
            (inp, out),
            file_shapes(lora.r),
            &mut lora_rng,
        )?;
        Ok(Linear::Frozen(l.clone().with_lora(weights)))
    };

    let (c, p) = (cfg.num_channels, cfg.patch_size);
    let patch = bld.linear(PATCH_TARGET.1, h, cfg.patch_dim(), &[h, c, p, p])?;
    // PEFT's Conv2d LoRA shapes in the file; the parameters compute as matrices.
    let patch = adapt(&mut bld, patch, (PATCH_TARGET.0, PATCH_TARGET.1), &|r| {
        [vec![r, c, p, p], vec![h, r, 1, 1]]
    })?;
    let cls_token = bld.tensor(
        "vit.embeddings.cls_token",
        &[1, 1, h],
        &[1, 1, h],
        BaseInit::Normal,
        false,
    )?;
    let t = cfg.seq_len();
    let position = bld.tensor(
        "vit.embeddings.position_embeddings",
        &[1, t, h],
        &[1, t, h],
        BaseInit::Normal,
        false,
    )?;

    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let prefix = format!("vit.encoder.layer.{i}");
        let norm_before = bld.norm(&format!("{prefix}.layernorm_before"))?;
        let mut linears = Vec::with_capacity(TARGETS.len());
        for (name, path, _) in TARGETS {
            let full = format!("{prefix}.{path}");
            let (out, inp) = match name {
                "intermediate.dense" => (cfg.intermediate_size, h),
                "output.dense" => (h, cfg.intermediate_size),
                _ => (h, h),
            };
            let lin = bld.linear(&full, out, inp, &[out, inp])?;
            linears.push(adapt(&mut bld, lin, (name, &full), &|r| [vec![r, inp], vec![out, r]])?);
        }
        let norm_after = bld.norm(&format!("{prefix}.layernorm_after"))?;
        blocks.push(Block {
            norm_before,
            linears,
            norm_after,
        });
    }
    let final_norm = bld.norm("vit.layernorm")?;

    // The head is always new and always trains: a LoRA run adapts to new classes.
    let mut head_rng = rng(derive_seed(seed, "head-init", 0));
    let head_name = |n: &str| match mode {
        VitMode::Full => format!("classifier.{n}"),
        VitMode::Lora => format!("{PEFT_PREFIX}classifier.{n}"),
    };
    let head_w = ParamInfo::new(head_name("weight"), vec![num_labels, h], true);
    let head_b = ParamInfo::new(head_name("bias"), vec![num_labels], false);
    let head = (
        bld.store
            .add(&ops, head_w, normal(0.02, num_labels * h, &mut head_rng))?,
        bld.store.add(&ops, head_b, vec![0.0; num_labels])?,
    );
    let vit = Vit {
        cfg,
        patch,
        cls_token,
        position,
        blocks,
        final_norm,
        head,
        targets: targets.to_vec(),
        mode,
        frozen: bld.frozen,
    };
    Ok(Model::new(ops, vit, bld.store, num_labels))
}

fn images(batch: &Batch) -> Result<&ImageBatch> {
    match batch {
        Batch::Image(b) => Ok(b),
        _ => Err(Error::Other("the ViT classifier takes image batches".into())),
    }
}

impl<O: TensorOps> Vit<O> {
    /// `x` is `[batch * tokens, hidden]`; the output is that, or `[batch,
    /// hidden]` (the class tokens') for [`Rows::First`].
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        ops: &O,
        blk: &Block<O>,
        x: &O::T,
        (b, t): (usize, usize),
        masks: &mut Option<&mut MaskSource>,
        rows: Rows,
    ) -> Result<O::T> {
        let (heads, d) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let mut linear = |i: usize, x: &O::T| blk.linears[i].forward(ops, x, masks.as_deref_mut());
        let h = blk.norm_before.forward(ops, x)?;
        let (x, h_q, queries) = match rows {
            Rows::All => (x.clone(), h.clone(), t),
            Rows::First => (self.class_tokens(ops, x, b)?, self.class_tokens(ops, &h, b)?, 1),
        };
        let (q, k, v) = (linear(0, &h_q)?, linear(1, &h)?, linear(2, &h)?);
        let shape = Heads {
            batch: b,
            queries,
            keys: t,
            heads,
            kv_heads: heads,
            head_dim: d,
        };
        let ctx = ops.attention_rows(&q, &k, &v, shape, Mask::None, 1.0 / (d as f64).sqrt(), None)?;
        let x = ops.add(&x, &linear(3, &ctx)?)?;
        let h = blk.norm_after.forward(ops, &x)?;
        let up = ops.gelu(&linear(4, &h)?)?;
        ops.add(&x, &linear(5, &up)?)
    }

    /// Patch, class and position embeddings `[batch * tokens, hidden]`: the first block's input.
    fn embeddings(&self, ops: &O, b: &ImageBatch) -> Result<O::T> {
        let cfg = &self.cfg;
        let (n, h, batch) = (cfg.grid() * cfg.grid(), cfg.hidden_size, b.batch_size);
        let patches = ops.tensor(patchify(&b.pixels, batch, cfg), &[batch * n, cfg.patch_dim()])?;
        let emb = ops.reshape(&self.patch.forward(ops, &patches, None)?, &[batch, n, h])?;
        let cls = ops.broadcast_as(&self.cls_token.get(ops)?, &[batch, 1, h])?;
        let x = ops.broadcast_add(&ops.cat(&[&cls, &emb], 1)?, &self.position.get(ops)?)?;
        ops.reshape(&x, &[batch * (n + 1), h])
    }

    fn tokens(&self) -> usize {
        self.cfg.grid() * self.cfg.grid() + 1
    }

    /// Each image's class token of `x [batch * tokens, hidden]`, `[batch, hidden]`.
    fn class_tokens(&self, ops: &O, x: &O::T, batch: usize) -> Result<O::T> {
        Rows::first_tokens(ops, x, [batch, self.tokens(), self.cfg.hidden_size])
    }

    /// The final norm on the last block's output: `[batch, tokens, hidden]`, or
    /// `[batch, 1, hidden]` when that block computed the class tokens alone.
    fn finish(&self, ops: &O, x: &O::T, batch: usize) -> Result<O::T> {
        let rows = ops.dims(x)[0];
        ops.reshape(
            &self.final_norm.forward(ops, x)?,
            &[batch, rows / batch.max(1), self.cfg.hidden_size],
        )
    }

    /// Final hidden states `[batch, tokens, hidden]`, or `[batch, 1, hidden]`
    /// for [`Rows::First`].
    fn encode(&self, ops: &O, b: &ImageBatch, mut masks: Option<&mut MaskSource>, last: Rows) -> Result<O::T> {
        let mut x = self.embeddings(ops, b)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let rows = Rows::of_block(i, self.blocks.len(), last);
            x = self.block(ops, blk, &x, (b.batch_size, self.tokens()), &mut masks, rows)?;
        }
        self.finish(ops, &x, b.batch_size)
    }

    /// The classifier on the class token of the final hidden states.
    fn classify(&self, ops: &O, hidden: &O::T, batch: usize) -> Result<O::T> {
        let cls = ops.reshape(&ops.narrow(hidden, 1, 0, 1)?, &[batch, self.cfg.hidden_size])?;
        ops.linear(&cls, &ops.use_leaf(&self.head.0), &ops.use_leaf(&self.head.1))
    }
}

impl<O: TensorOps> Architecture<O> for Vit<O> {
    fn check_batch(&self, batch: &Batch, num_labels: usize) -> Result<()> {
        let b = images(batch)?;
        self.cfg.check_images(b)?;
        if b.labels.is_empty() && b.soft_labels.is_none() {
            return Ok(());
        }
        lora_core::vit::check_targets(b, num_labels)
    }

    fn logits(&self, ops: &O, batch: &Batch, masks: Option<&mut MaskSource>) -> Result<O::T> {
        let b = images(batch)?;
        let hidden = self.encode(ops, b, masks, Rows::First)?;
        self.classify(ops, &hidden, b.batch_size)
    }

    fn blocks(&self) -> usize {
        self.blocks.len()
    }

    fn embed(&self, ops: &O, batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        self.embeddings(ops, images(batch)?)
    }

    fn block(&self, ops: &O, i: usize, x: &O::T, batch: &Batch, mut masks: Option<&mut MaskSource>) -> Result<O::T> {
        let b = images(batch)?;
        let rows = Rows::of_block(i, self.blocks.len(), Rows::First);
        self.block(ops, &self.blocks[i], x, (b.batch_size, self.tokens()), &mut masks, rows)
    }

    fn head(&self, ops: &O, x: &O::T, batch: &Batch, _masks: Option<&mut MaskSource>) -> Result<O::T> {
        let b = images(batch)?;
        self.classify(ops, &self.finish(ops, x, b.batch_size)?, b.batch_size)
    }

    fn hidden_states(&self, ops: &O, batch: &Batch) -> Result<HostTensor> {
        let b = images(batch)?;
        let hidden = self.encode(ops, b, None, Rows::All)?;
        Ok(HostTensor::new(ops.dims(&hidden), ops.to_host(&hidden)?))
    }

    fn for_each_lora(&mut self, f: &mut dyn FnMut(&mut LoraLinear<O>) -> Result<()>) -> Result<()> {
        let linears = std::iter::once(&mut self.patch).chain(self.blocks.iter_mut().flat_map(|b| b.linears.iter_mut()));
        linears.filter_map(Linear::frozen_mut).try_for_each(f)
    }

    fn summary(&self, _ops: &O, trainable: usize, num_labels: usize) -> ModelSummary {
        ModelSummary {
            architecture: "ViTForImageClassification".into(),
            total_parameters: self.frozen + trainable,
            trainable_parameters: trainable,
            num_labels,
            hidden_size: self.cfg.hidden_size,
            max_positions: self.cfg.seq_len(),
        }
    }

    fn peft_info(&self) -> PeftInfo {
        peft_info(&self.targets)
    }

    fn memory_shape(&self, _ops: &O, trainable: usize) -> Option<lora_core::memory::ModelShape> {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        // Vectors of the base: per block two norms (4h) and the biases of q, k, v,
        // the attention output, MLP up and down (5h + i); the final norm and the patch bias.
        let vectors = self.blocks.len() * (9 * h + i) + 3 * h;
        Some(lora_core::memory::ModelShape {
            blocks: self.blocks.len(),
            hidden: h,
            heads: self.cfg.num_attention_heads,
            intermediate: i,
            frozen_values: self.frozen,
            frozen_matrix_values: self.frozen.saturating_sub(vectors),
            trainable,
            data_bytes: 0,
            tokens: Some(self.cfg.seq_len()),
            decoder: None,
        })
    }

    /// Full mode: `config.json` and `model.safetensors` (every weight, head
    /// included, under Hugging Face's keys), written atomically.
    fn save_base(&self, ops: &O, store: &ParamStore<O>, num_labels: usize, dir: &Path) -> Result<bool> {
        if self.mode != VitMode::Full {
            return Ok(false);
        }
        let values = store.read(ops)?;
        lora_core::vit::write_base(dir, &self.cfg, num_labels, store.infos(), &values)?;
        Ok(true)
    }
}
