//! `ViTForImageClassification` with LoRA or full training, as an [`AdapterModel`].
//!
//! Full mode (pretraining): every weight is a `Var`, named with Hugging Face's
//! key (`vit.encoder.layer.0.attention.attention.query.weight`), and
//! [`AdapterModel::save_base`] writes `config.json` and `model.safetensors`.
//! LoRA mode: that base is memory-mapped and frozen; LoRA matrices (PEFT keys)
//! and a new `classifier` head train.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput, check_param_values};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{derive_seed, kaiming_uniform, normal, rng};
use lora_core::registry::ModelEntry;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::vit::{
    BaseInit as Init, PATCH_TARGET, TARGETS, VitClassifierSpec, VitConfig, VitMode, VitStart, check_targets, peft_info,
};
use lora_core::{Batch, Error, HostTensor, ImageBatch, LoraSpec, Result, inventory};

use super::model::{Block, Linear, Norm, Vit};
use crate::bert::classifier::{MmapWeights, WeightSource};
use crate::bert::encoder::MaskSource;
use crate::error::IntoCore;
use crate::lora_linear::{LoraLinear, LoraWeights};
use crate::ops::FrozenLayerNorm;

const PEFT_PREFIX: &str = "base_model.model.";
pub use lora_core::vit::{CONFIG_FILE, WEIGHTS_FILE};

/// Registers trainable tensors in [`AdapterModel::params`] order.
#[derive(Default)]
struct Params {
    infos: Vec<ParamInfo>,
    vars: Vec<Var>,
}

impl Params {
    fn add(&mut self, name: String, values: Vec<f32>, shape: &[usize], decay: bool) -> Result<Tensor> {
        let var = Var::from_vec(values, shape, &Device::Cpu).core()?;
        self.infos.push(ParamInfo {
            name,
            shape: shape.to_vec(),
            weight_decay: decay,
        });
        let t = var.as_tensor().clone();
        self.vars.push(var);
        Ok(t)
    }
}

/// Where a network's base weights come from.
enum Base<'a> {
    /// A new model: weights drawn from the seed, all trainable.
    New(&'a mut lora_core::init::SeededRng),
    /// A saved base, frozen.
    Saved(&'a dyn WeightSource),
}

pub struct VitClassifier {
    vit: Vit,
    head_w: Tensor,
    head_b: Tensor,
    params: Params,
    targets: Vec<&'static str>,
    mode: VitMode,
    num_labels: usize,
    /// Base (non-trainable) parameter count, for the summary.
    frozen_parameters: usize,
}

impl VitClassifier {
    /// A new model whose every weight trains (pretraining from scratch).
    pub fn new_full(cfg: VitConfig, num_labels: usize, seed: u64) -> Result<Self> {
        let mut r = rng(derive_seed(seed, "vit-init", 0));
        Self::build(cfg, Base::New(&mut r), &[], None, num_labels, seed)
    }

    /// A saved base, frozen, with LoRA on `lora`'s targets and a new head.
    pub fn from_base(
        cfg: VitConfig,
        weights: &dyn WeightSource,
        lora: &LoraSpec,
        num_labels: usize,
        seed: u64,
    ) -> Result<Self> {
        let targets = lora_core::vit::resolve_targets(lora)?;
        Self::build(cfg, Base::Saved(weights), &targets, Some(lora), num_labels, seed)
    }

    fn build(
        cfg: VitConfig,
        base: Base,
        targets: &[&'static str],
        lora: Option<&LoraSpec>,
        num_labels: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.check().map_err(Error::Data)?;
        let mode = match base {
            Base::New(_) => VitMode::Full,
            Base::Saved(_) => VitMode::Lora,
        };
        let trained = mode == VitMode::Full;
        let mut lora_rng = rng(derive_seed(seed, "lora-init", 0));
        let h = cfg.hidden_size;
        let mut bld = Builder {
            base,
            params: Params::default(),
            frozen: 0,
            trained,
            eps: cfg.layer_norm_eps,
            hidden: h,
        };

        let (c, p) = (cfg.num_channels, cfg.patch_size);
        let pw = bld
            .tensor(
                "vit.embeddings.patch_embeddings.projection.weight",
                &[h, c, p, p],
                Init::Normal,
                true,
            )?
            .reshape((h, cfg.patch_dim()))
            .core()?;
        let pb = bld.tensor(
            "vit.embeddings.patch_embeddings.projection.bias",
            &[h],
            Init::Zeros,
            false,
        )?;
        let patch = if trained {
            Linear::Trained { w: pw, b: pb }
        } else {
            let mut lin = LoraLinear::new(pw, Some(pb));
            if let (true, Some(lora)) = (targets.contains(&PATCH_TARGET.0), lora) {
                let (out, inp) = (h, cfg.patch_dim());
                let lora = &lora.for_module(PATCH_TARGET.1);
                lora_core::bert::check_rank(lora, PATCH_TARGET.1, inp, out)?;
                // PEFT's Conv2d LoRA shapes in the file; the variables stay matrices.
                let file_shapes = [vec![lora.r, c, p, p], vec![out, lora.r, 1, 1]];
                lin = lin.with_lora(bld.lora(PATCH_TARGET.1, lora, inp, out, &mut lora_rng, file_shapes)?);
            }
            Linear::Frozen(lin)
        };
        let cls_token = bld.tensor("vit.embeddings.cls_token", &[1, 1, h], Init::Normal, false)?;
        let position = bld.tensor(
            "vit.embeddings.position_embeddings",
            &[1, cfg.seq_len(), h],
            Init::Normal,
            false,
        )?;

        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let prefix = format!("vit.encoder.layer.{i}");
            let norm_before = bld.norm(&format!("{prefix}.layernorm_before"))?;
            let mut linears = Vec::with_capacity(6);
            for (name, path, _) in TARGETS {
                let full = format!("{prefix}.{path}");
                let (out, inp) = match name {
                    "intermediate.dense" => (cfg.intermediate_size, h),
                    "output.dense" => (h, cfg.intermediate_size),
                    _ => (h, h),
                };
                let (w, b) = bld.linear(&full, out, inp)?;
                if trained {
                    linears.push(Linear::Trained { w, b });
                    continue;
                }
                let mut lin = LoraLinear::new(w, Some(b));
                if let (true, Some(lora)) = (targets.contains(&name), lora) {
                    let lora = &lora.for_module(&full);
                    lora_core::bert::check_rank(lora, &full, inp, out)?;
                    let shapes = [vec![lora.r, inp], vec![out, lora.r]];
                    lin = lin.with_lora(bld.lora(&full, lora, inp, out, &mut lora_rng, shapes)?);
                }
                linears.push(Linear::Frozen(lin));
            }
            let norm_after = bld.norm(&format!("{prefix}.layernorm_after"))?;
            blocks.push(Block {
                norm_before,
                linears: linears
                    .try_into()
                    .map_err(|_| Error::Other("six linears per block".into()))?,
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
        let head_w = bld.params.add(
            head_name("weight"),
            normal(0.02, num_labels * h, &mut head_rng),
            &[num_labels, h],
            true,
        )?;
        let head_b = bld
            .params
            .add(head_name("bias"), vec![0.0; num_labels], &[num_labels], false)?;

        Ok(Self {
            vit: Vit {
                cfg,
                patch,
                cls_token,
                position,
                blocks,
                final_norm,
            },
            head_w,
            head_b,
            params: bld.params,
            targets: targets.to_vec(),
            mode,
            num_labels,
            frozen_parameters: bld.frozen,
        })
    }

    fn images<'b>(&self, batch: &'b Batch) -> Result<&'b ImageBatch> {
        let Batch::Image(b) = batch else {
            return Err(Error::Other("the ViT classifier takes image batches".into()));
        };
        self.vit.cfg.check_images(b)?;
        Ok(b)
    }

    fn logits(&self, b: &ImageBatch, masks: Option<&mut MaskSource>) -> candle_core::Result<Tensor> {
        let hidden = self.vit.forward(&b.pixels, b.batch_size, masks)?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        cls.matmul(&self.head_w.t()?)?.broadcast_add(&self.head_b)
    }

    fn for_each_lora(&mut self, mut f: impl FnMut(&mut LoraLinear) -> candle_core::Result<()>) -> Result<()> {
        if let Some(l) = self.vit.patch.frozen_mut() {
            f(l).core()?;
        }
        for block in &mut self.vit.blocks {
            for lin in &mut block.linears {
                if let Some(l) = lin.frozen_mut() {
                    f(l).core()?;
                }
            }
        }
        Ok(())
    }
}

/// Draws (full mode) or loads (LoRA mode) the base tensors, keeping count.
struct Builder<'a> {
    base: Base<'a>,
    params: Params,
    frozen: usize,
    trained: bool,
    eps: f64,
    hidden: usize,
}

impl Builder<'_> {
    /// A base tensor: drawn and trained (full), or loaded and frozen (LoRA).
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init, decay: bool) -> Result<Tensor> {
        match &mut self.base {
            Base::New(r) => {
                let values = init.values(shape.iter().product(), r);
                self.params.add(name.to_string(), values, shape, decay)
            }
            Base::Saved(w) => {
                let t = w.get(name)?;
                if t.dims() != shape {
                    return Err(Error::Data(format!(
                        "base weight `{name}` has shape {:?}, the config says {shape:?}",
                        t.dims()
                    )));
                }
                self.frozen += t.elem_count();
                Ok(t)
            }
        }
    }

    /// LoRA matrices for the module at `path`: `A` Kaiming-uniform `[r, in]`, `B`
    /// zero `[out, r]`, registered under PEFT's keys with `shapes` as written to the file.
    fn lora(
        &mut self,
        path: &str,
        lora: &LoraSpec,
        inp: usize,
        out: usize,
        rng: &mut lora_core::init::SeededRng,
        shapes: [Vec<usize>; 2],
    ) -> Result<LoraWeights> {
        let a = kaiming_uniform(inp, lora.r * inp, rng);
        let a = Var::from_vec(a, (lora.r, inp), &Device::Cpu).core()?;
        let b = Var::zeros((out, lora.r), DType::F32, &Device::Cpu).core()?;
        let [sa, sb] = shapes;
        for (suffix, var, shape) in [("lora_A", &a, sa), ("lora_B", &b, sb)] {
            self.params.infos.push(ParamInfo {
                name: format!("{PEFT_PREFIX}{path}.{suffix}.weight"),
                shape,
                weight_decay: true,
            });
            self.params.vars.push(var.clone());
        }
        Ok(LoraWeights {
            a,
            b,
            scale: lora.scale(),
            dropout: lora.dropout,
        })
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
        let w = self.tensor(&format!("{name}.weight"), &[out, inp], Init::Normal, true)?;
        let b = self.tensor(&format!("{name}.bias"), &[out], Init::Zeros, false)?;
        Ok((w, b))
    }

    fn norm(&mut self, name: &str) -> Result<Norm> {
        let h = self.hidden;
        let g = self.tensor(&format!("{name}.weight"), &[h], Init::Ones, false)?;
        let b = self.tensor(&format!("{name}.bias"), &[h], Init::Zeros, false)?;
        if self.trained {
            Ok(Norm::Trained {
                gamma: g,
                beta: b,
                eps: self.eps,
            })
        } else {
            Ok(Norm::Frozen(FrozenLayerNorm::new(&g, &b, self.eps).core()?))
        }
    }
}

/// Cross-entropy against one-hot `labels`, or against `soft` target rows (mixup, cutmix).
fn loss(logits: &Tensor, b: &ImageBatch, num_labels: usize) -> candle_core::Result<Tensor> {
    match &b.soft_labels {
        None => {
            let labels = Tensor::from_slice(&b.labels, b.batch_size, &Device::Cpu)?;
            candle_nn::loss::cross_entropy(logits, &labels)
        }
        Some(soft) => {
            let targets = Tensor::from_slice(soft, (b.batch_size, num_labels), &Device::Cpu)?;
            let logp = candle_nn::ops::log_softmax(logits, 1)?;
            (targets * logp)?.sum_all()?.neg()? / b.batch_size as f64
        }
    }
}

impl AdapterModel for VitClassifier {
    fn backend(&self) -> &'static str {
        crate::BACKEND
    }

    fn summary(&self) -> ModelSummary {
        let trainable: usize = self.params.infos.iter().map(|p| p.numel()).sum();
        ModelSummary {
            architecture: "ViTForImageClassification".into(),
            total_parameters: self.frozen_parameters + trainable,
            trainable_parameters: trainable,
            num_labels: self.num_labels,
            hidden_size: self.vit.cfg.hidden_size,
            max_positions: self.vit.cfg.seq_len(),
        }
    }

    fn peft_info(&self) -> PeftInfo {
        peft_info(&self.targets)
    }

    fn params(&self) -> &[ParamInfo] {
        &self.params.infos
    }

    fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.params
            .vars
            .iter()
            .map(|v| v.as_tensor().flatten_all().and_then(|t| t.to_vec1()).core())
            .collect()
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        check_param_values(&self.params.infos, values)?;
        for (var, v) in self.params.vars.iter().zip(values) {
            // The variable's own shape: a patch-embedding adapter is a matrix here
            // but carries PEFT's Conv2d shape in its `ParamInfo`.
            var.set(&Tensor::from_slice(v, var.shape(), &Device::Cpu).core()?)
                .core()?;
        }
        Ok(())
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        let b = self.images(batch)?;
        check_targets(b, self.num_labels)?;
        let mut masks = MaskSource::new(dropout_seed);
        let logits = self.logits(b, Some(&mut masks)).core()?;
        let loss = loss(&logits, b, self.num_labels).core()?;
        let grads = loss.backward().core()?;
        let mut out = Vec::with_capacity(self.params.vars.len());
        for (var, info) in self.params.vars.iter().zip(&self.params.infos) {
            out.push(match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all().and_then(|g| g.to_vec1()).core()?,
                None => vec![0.0; info.numel()],
            });
        }
        Ok(StepOutput {
            loss: loss.to_scalar::<f32>().core()?,
            grads: out,
        })
    }

    fn predict(&self, batch: &Batch) -> Result<HostTensor> {
        let b = self.images(batch)?;
        let logits = self.logits(b, None).core()?;
        Ok(HostTensor::new(
            vec![b.batch_size, self.num_labels],
            logits.flatten_all().core()?.to_vec1().core()?,
        ))
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        let b = self.images(batch)?;
        let hidden = self.vit.forward(&b.pixels, b.batch_size, None).core()?;
        Ok(HostTensor::new(
            hidden.dims().to_vec(),
            hidden.flatten_all().core()?.to_vec1().core()?,
        ))
    }

    fn merge(&mut self) -> Result<()> {
        self.for_each_lora(|l| l.merge())
    }

    fn unmerge(&mut self) -> Result<()> {
        self.for_each_lora(|l| {
            l.unmerge();
            Ok(())
        })
    }

    /// Full mode: `config.json` and `model.safetensors` (every weight, head
    /// included, under Hugging Face's keys), written atomically.
    fn save_base(&self, dir: &Path) -> Result<bool> {
        if self.mode != VitMode::Full {
            return Ok(false);
        }
        let values = self.read_params()?;
        lora_core::vit::write_base(dir, &self.vit.cfg, self.num_labels, &self.params.infos, &values)?;
        Ok(true)
    }
}

/// `[model] type = "vit-classifier"` on the candle backend.
#[derive(Debug, Clone)]
pub struct VitClassifierConfig {
    pub spec: VitClassifierSpec,
}

impl ModelStage for VitClassifierConfig {
    fn resolved(&self) -> serde_json::Value {
        self.spec.resolved()
    }

    fn tokenizer(&self, _ctx: &StageContext) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    fn build(&self, ctx: &StageContext, lora: &LoraSpec, num_labels: usize) -> Result<Box<dyn AdapterModel>> {
        let model = match self.spec.start(ctx, lora)? {
            VitStart::New(cfg) => VitClassifier::new_full(cfg, num_labels, ctx.seed)?,
            VitStart::Saved { cfg, weights } => {
                let weights = MmapWeights::open(&weights)?;
                VitClassifier::from_base(cfg, &weights, lora, num_labels, ctx.seed)?
            }
        };
        Ok(Box::new(model))
    }

    fn base_model_name(&self, ctx: &StageContext) -> Result<String> {
        self.spec.base_model_name(ctx)
    }
}

fn build(c: &Component) -> std::result::Result<Box<dyn ModelStage>, Diagnostics> {
    Ok(Box::new(VitClassifierConfig {
        spec: VitClassifierSpec::from_component(c)?,
    }))
}

inventory::submit! {
    ModelEntry {
        backend: crate::BACKEND,
        name: "vit-classifier",
        summary: "Vision Transformer with a classification head (ViTForImageClassification layout): full training or LoRA",
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VitConfig {
        let mut cfg: VitConfig = serde_json::from_value(serde_json::json!({
            "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16
        }))
        .unwrap();
        cfg.layer_norm_eps = 1e-6;
        cfg
    }

    fn batch(n: usize, seed: u64) -> Batch {
        let mut r = rng(seed);
        Batch::Image(ImageBatch {
            batch_size: n,
            channels: 1,
            height: 8,
            width: 8,
            pixels: normal(1.0, n * 64, &mut r),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            soft_labels: None,
        })
    }

    fn lora(targets: &[&str]) -> LoraSpec {
        LoraSpec {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            target_modules_location: None,
            patterns_location: None,
        }
    }

    /// Plain SGD on the host, enough to see the loss fall.
    fn sgd(m: &mut dyn AdapterModel, b: &Batch, steps: usize, lr: f32) -> (f32, f32) {
        let first = m.train_step(b, 0).unwrap().loss;
        let mut last = first;
        for s in 0..steps {
            let out = m.train_step(b, s as u64).unwrap();
            last = out.loss;
            let mut p = m.read_params().unwrap();
            for (v, g) in p.iter_mut().zip(&out.grads) {
                v.iter_mut().zip(g).for_each(|(v, g)| *v -= lr * g);
            }
            m.write_params(&p).unwrap();
        }
        (first, last)
    }

    #[test]
    fn full_training_learns_and_the_saved_base_reloads_frozen_to_the_same_outputs() {
        let mut full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let s = full.summary();
        assert_eq!(s.trainable_parameters, s.total_parameters);
        assert!(
            full.params()
                .iter()
                .any(|p| p.name == "vit.encoder.layer.1.attention.attention.query.weight")
        );
        assert_eq!(
            full.params()[0].shape,
            [8, 1, 4, 4],
            "the patch projection is stored as a Conv2d kernel"
        );
        let b = batch(6, 2);
        let (first, last) = sgd(&mut full, &b, 80, 1.0);
        assert!(last < first * 0.7, "loss {first} -> {last}");
        // Every base weight got a gradient.
        let g = full.train_step(&b, 0).unwrap().grads;
        assert!(g.iter().all(|g| g.iter().any(|v| *v != 0.0)));

        let dir = tempfile::tempdir().unwrap();
        assert!(full.save_base(dir.path()).unwrap());
        let cfg = VitConfig::from_file(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(cfg, tiny());
        let weights = MmapWeights::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
        let adapted = VitClassifier::from_base(cfg, &weights, &lora(&["query", "value"]), 3, 1).unwrap();
        assert!(!adapted.save_base(dir.path()).unwrap(), "a LoRA model writes no base");
        let (a, f) = (adapted.hidden_states(&b).unwrap(), full.hidden_states(&b).unwrap());
        assert_eq!(a.shape, [6, 5, 8]);
        for (x, y) in a.data.iter().zip(&f.data) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn lora_mode_trains_only_the_adapter_and_the_head_and_merges_exactly() {
        let full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        full.save_base(dir.path()).unwrap();
        let weights = MmapWeights::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
        let mut m = VitClassifier::from_base(tiny(), &weights, &lora(&["value", "intermediate.dense"]), 4, 3).unwrap();
        let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 2 * 2 * 2 + 2);
        assert_eq!(
            names[0],
            "base_model.model.vit.encoder.layer.0.attention.attention.value.lora_A.weight"
        );
        assert_eq!(
            names[2],
            "base_model.model.vit.encoder.layer.0.intermediate.dense.lora_A.weight"
        );
        assert_eq!(*names.last().unwrap(), "base_model.model.classifier.bias");
        let s = m.summary();
        // r=2: value 2*(8+8), intermediate 2*(8+16), per layer; head 4*8+4.
        assert_eq!(s.trainable_parameters, 2 * (32 + 48) + 36);
        assert_eq!(
            s.total_parameters - s.trainable_parameters,
            full.summary().total_parameters - 3 * 8 - 3
        );

        let b = batch(8, 5);
        let (first, last) = sgd(&mut m, &b, 40, 0.5);
        assert!(last < first, "loss {first} -> {last}");
        let before = m.predict(&b).unwrap();
        m.merge().unwrap();
        let merged = m.predict(&b).unwrap();
        m.unmerge().unwrap();
        let after = m.predict(&b).unwrap();
        for (x, y) in before.data.iter().zip(&merged.data) {
            assert!((x - y).abs() < 1e-4);
        }
        assert_eq!(before, after);
    }

    #[test]
    fn the_patch_embedding_takes_lora_with_peft_conv_shapes() {
        let full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        full.save_base(dir.path()).unwrap();
        let weights = MmapWeights::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
        let mut m = VitClassifier::from_base(tiny(), &weights, &lora(&["patch_embeddings.projection"]), 3, 3).unwrap();
        let p = m.params();
        assert_eq!(
            p[0].name,
            "base_model.model.vit.embeddings.patch_embeddings.projection.lora_A.weight"
        );
        assert_eq!(
            (p[0].shape.as_slice(), p[1].shape.as_slice()),
            (&[2, 1, 4, 4][..], &[8, 2, 1, 1][..])
        );
        let b = batch(6, 4);
        let (first, last) = sgd(&mut m, &b, 30, 0.5);
        assert!(last < first, "{first} -> {last}");
        let before = m.predict(&b).unwrap();
        m.merge().unwrap();
        for (x, y) in before.data.iter().zip(&m.predict(&b).unwrap().data) {
            assert!((x - y).abs() < 1e-4);
        }
    }

    #[test]
    fn soft_labels_equal_hard_labels_when_one_hot_and_shapes_are_checked() {
        let mut m = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let Batch::Image(mut b) = batch(4, 9) else {
            unreachable!()
        };
        let hard = m.train_step(&Batch::Image(b.clone()), 0).unwrap().loss;
        let mut soft = vec![0.0; 12];
        for (i, &l) in b.labels.iter().enumerate() {
            soft[i * 3 + l as usize] = 1.0;
        }
        b.soft_labels = Some(soft);
        let s = m.train_step(&Batch::Image(b.clone()), 0).unwrap().loss;
        assert!((hard - s).abs() < 1e-5, "{hard} vs {s}");
        b.height = 4;
        let e = m.predict(&Batch::Image(b)).unwrap_err().to_string();
        assert!(e.contains("takes 1x8x8 images") && e.contains("gives 1x4x8"), "{e}");
    }
}
