//! `ViTForImageClassification` with LoRA or full training, as an [`AdapterModel`].
//!
//! The candle backend's ViT, number for number: the same parameter names,
//! order and shapes, the same initial values from the same seed (the base in
//! full mode, LoRA `A` and the head from `lora_core::init` streams), the same
//! dropout masks, the same saved base and adapter files.
//!
//! Full mode (pretraining): every weight trains, named with Hugging Face's key
//! (`vit.encoder.layer.0.attention.attention.query.weight`), and
//! [`AdapterModel::save_base`] writes `config.json` and `model.safetensors`.
//! LoRA mode: that base is loaded frozen; LoRA matrices (PEFT keys) and a new
//! `classifier` head train.

use std::path::{Path, PathBuf};

use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{SeededRng, derive_seed, kaiming_uniform, normal, rng};
use lora_core::registry::ModelEntry;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::vit::{
    BaseInit as Init, PATCH_TARGET, TARGETS, VitClassifierSpec, VitConfig, VitMode, WEIGHTS_FILE, check_targets,
    peft_info,
};
use lora_core::{Batch, Error, HostTensor, ImageBatch, LoraSpec, Result, inventory};

use super::model::{Block, Norm, Vit};
use crate::loss::{cross_entropy, soft_cross_entropy};
use crate::lora_linear::{LoraLinear, LoraWeights, MaskSource};
use crate::ops::FrozenLayerNorm;
use crate::weights::{SafetensorsWeights, WeightSource, host};

const PEFT_PREFIX: &str = "base_model.model.";

/// One trainable tensor, reached by [`VitClassifier::visit`] in `params` order.
enum Param<'a> {
    One(&'a mut Tensor<1>),
    Two(&'a mut Tensor<2>),
}

impl Param<'_> {
    fn read(&self) -> Result<Vec<f32>> {
        match self {
            Param::One(t) => host((*t).clone()),
            Param::Two(t) => host((*t).clone()),
        }
    }

    fn numel(&self) -> usize {
        match self {
            Param::One(t) => t.dims().iter().product(),
            Param::Two(t) => t.dims().iter().product(),
        }
    }

    /// New values in the tensor's own shape: a patch-embedding weight or adapter
    /// is a matrix here but carries the Conv2d shape in its `ParamInfo`.
    fn write(self, values: Vec<f32>, device: &Device) {
        match self {
            Param::One(t) => *t = Tensor::from_data(TensorData::new(values, t.dims()), device),
            Param::Two(t) => *t = Tensor::from_data(TensorData::new(values, t.dims()), device),
        }
    }

    /// Makes the tensor a fresh autodiff leaf that keeps its gradient.
    fn track(self) {
        match self {
            Param::One(t) => *t = t.clone().autodiff().require_grad(),
            Param::Two(t) => *t = t.clone().autodiff().require_grad(),
        }
    }

    fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Result<Vec<f32>>> {
        match self {
            Param::One(t) => t.grad(grads).map(host),
            Param::Two(t) => t.grad(grads).map(host),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VitClassifier {
    vit: Vit,
    /// `[num_labels, hidden]`.
    head_w: Tensor<2>,
    /// `[num_labels]`.
    head_b: Tensor<1>,
    params: Vec<ParamInfo>,
    targets: Vec<&'static str>,
    mode: VitMode,
    num_labels: usize,
    /// Base (non-trainable) parameter count, for the summary.
    frozen_parameters: usize,
}

/// Where a network's base weights come from.
enum Base<'a> {
    /// A new model: weights drawn from the seed, all trainable.
    New(&'a mut SeededRng),
    /// A saved base, frozen.
    Saved(&'a dyn WeightSource),
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

    /// Builds the tensors in the candle backend's order, so that a new model
    /// draws the same numbers and the parameters come in the same order.
    fn build(
        cfg: VitConfig,
        base: Base,
        targets: &[&'static str],
        lora: Option<&LoraSpec>,
        num_labels: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.check().map_err(Error::Data)?;
        if num_labels == 0 {
            return Err(Error::Data("the classifier needs at least one class".into()));
        }
        let mode = match base {
            Base::New(_) => VitMode::Full,
            Base::Saved(_) => VitMode::Lora,
        };
        let device = crate::device();
        let mut lora_rng = rng(derive_seed(seed, "lora-init", 0));
        let h = cfg.hidden_size;
        let mut bld = Builder {
            base,
            params: Vec::new(),
            frozen: 0,
            eps: cfg.layer_norm_eps,
            hidden: h,
            device: device.clone(),
        };

        let (c, p, pd) = (cfg.num_channels, cfg.patch_size, cfg.patch_dim());
        let pw = bld.values(
            "vit.embeddings.patch_embeddings.projection.weight",
            &[h, c, p, p],
            Init::Normal,
            true,
        )?;
        let pb = bld.vector("vit.embeddings.patch_embeddings.projection.bias", h, Init::Zeros, false)?;
        let mut patch = LoraLinear::new(bld.matrix(pw, [h, pd]), Some(pb));
        if let (true, Some(lora)) = (targets.contains(&PATCH_TARGET.0), lora) {
            lora_core::bert::check_rank(lora, PATCH_TARGET.1, pd, h)?;
            // PEFT's Conv2d LoRA shapes in the file; the tensors stay matrices.
            let file_shapes = [vec![lora.r, c, p, p], vec![h, lora.r, 1, 1]];
            patch = patch.with_lora(bld.lora(PATCH_TARGET.1, lora, pd, h, &mut lora_rng, file_shapes));
        }
        let cls = bld.values("vit.embeddings.cls_token", &[1, 1, h], Init::Normal, false)?;
        let cls_token = bld.matrix(cls, [1, h]);
        let pos = bld.values(
            "vit.embeddings.position_embeddings",
            &[1, cfg.seq_len(), h],
            Init::Normal,
            false,
        )?;
        let position = bld.matrix(pos, [cfg.seq_len(), h]);

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
                let mut lin = bld.linear(&full, out, inp)?;
                if let (true, Some(lora)) = (targets.contains(&name), lora) {
                    lora_core::bert::check_rank(lora, &full, inp, out)?;
                    let shapes = [vec![lora.r, inp], vec![out, lora.r]];
                    lin = lin.with_lora(bld.lora(&full, lora, inp, out, &mut lora_rng, shapes));
                }
                linears.push(lin);
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
        bld.register(head_name("weight"), vec![num_labels, h], true);
        let head_w = Tensor::from_data(
            TensorData::new(normal(0.02, num_labels * h, &mut head_rng), [num_labels, h]),
            &device,
        );
        bld.register(head_name("bias"), vec![num_labels], false);
        let head_b = Tensor::zeros([num_labels], &device);

        let model = Self {
            vit: Vit {
                cfg,
                device,
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
        };
        // The walk over the tensors must meet them in the order they were registered.
        let mut sizes = Vec::new();
        model.clone().visit(&mut |p| sizes.push(p.numel()));
        let want: Vec<usize> = model.params.iter().map(ParamInfo::numel).collect();
        if sizes != want {
            return Err(Error::Other(format!(
                "internal: the ViT's trainable tensors ({sizes:?}) do not follow its parameter list ({want:?})"
            )));
        }
        Ok(model)
    }

    /// Every trainable tensor, in the order of [`AdapterModel::params`]: in full
    /// mode every base weight in Hugging Face's module order, in LoRA mode the
    /// adapters (the patch embedding's first); then the head.
    fn visit(&mut self, f: &mut dyn FnMut(Param)) {
        let full = self.mode == VitMode::Full;
        let vit = &mut self.vit;
        let linear = |l: &mut LoraLinear, f: &mut dyn FnMut(Param)| {
            if full {
                f(Param::Two(l.weight_mut()));
                if let Some(b) = l.bias_mut() {
                    f(Param::One(b));
                }
            } else if let Some(lora) = l.lora_mut() {
                f(Param::Two(&mut lora.a));
                f(Param::Two(&mut lora.b));
            }
        };
        let norm = |n: &mut Norm, f: &mut dyn FnMut(Param)| {
            if let Norm::Trained { gamma, beta, .. } = n {
                f(Param::One(gamma));
                f(Param::One(beta));
            }
        };
        linear(&mut vit.patch, f);
        if full {
            f(Param::Two(&mut vit.cls_token));
            f(Param::Two(&mut vit.position));
        }
        for block in &mut vit.blocks {
            norm(&mut block.norm_before, f);
            for l in &mut block.linears {
                linear(l, f);
            }
            norm(&mut block.norm_after, f);
        }
        norm(&mut vit.final_norm, f);
        f(Param::Two(&mut self.head_w));
        f(Param::One(&mut self.head_b));
    }

    fn images<'b>(&self, batch: &'b Batch) -> Result<&'b ImageBatch> {
        let Batch::Image(b) = batch else {
            return Err(Error::Other("the ViT classifier takes image batches".into()));
        };
        self.vit.cfg.check_images(b)?;
        Ok(b)
    }

    /// Logits `[batch, labels]` from the class token's final hidden state.
    fn logits(&self, b: &ImageBatch, masks: Option<&mut MaskSource>) -> Tensor<2> {
        let (n, h) = (b.batch_size, self.vit.cfg.hidden_size);
        let t = self.vit.cfg.seq_len();
        let hidden = self.vit.forward(&b.pixels, n, masks);
        let cls = hidden.reshape([n, t, h]).narrow(1, 0, 1).reshape([n, h]);
        linear(cls, self.head_w.clone().transpose(), Some(self.head_b.clone()))
    }
}

/// Draws (full mode) or loads (LoRA mode) the base tensors, keeping count.
struct Builder<'a> {
    base: Base<'a>,
    params: Vec<ParamInfo>,
    frozen: usize,
    eps: f64,
    hidden: usize,
    device: Device,
}

impl Builder<'_> {
    fn register(&mut self, name: String, shape: Vec<usize>, decay: bool) {
        self.params.push(ParamInfo {
            name,
            shape,
            weight_decay: decay,
        });
    }

    fn trained(&self) -> bool {
        matches!(self.base, Base::New(_))
    }

    /// A base tensor's values: drawn and registered as trainable (full), or
    /// loaded, checked against the configuration and counted as frozen (LoRA).
    fn values(&mut self, name: &str, shape: &[usize], init: Init, decay: bool) -> Result<Vec<f32>> {
        match &mut self.base {
            Base::New(r) => {
                let values = init.values(shape.iter().product(), r);
                self.register(name.to_string(), shape.to_vec(), decay);
                Ok(values)
            }
            Base::Saved(w) => {
                let t = w.get(name)?;
                if t.shape != shape {
                    return Err(Error::Data(format!(
                        "base weight `{name}` has shape {:?}, the config says {shape:?}",
                        t.shape
                    )));
                }
                self.frozen += t.data.len();
                Ok(t.data)
            }
        }
    }

    fn matrix(&self, values: Vec<f32>, dims: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, dims), &self.device)
    }

    fn vector(&mut self, name: &str, n: usize, init: Init, decay: bool) -> Result<Tensor<1>> {
        let v = self.values(name, &[n], init, decay)?;
        Ok(Tensor::from_data(TensorData::new(v, [n]), &self.device))
    }

    /// LoRA matrices for the module at `path`: `A` Kaiming-uniform `[r, in]`, `B`
    /// zero `[out, r]`, registered under PEFT's keys with `shapes` as written to the file.
    fn lora(
        &mut self,
        path: &str,
        lora: &LoraSpec,
        inp: usize,
        out: usize,
        rng: &mut SeededRng,
        shapes: [Vec<usize>; 2],
    ) -> LoraWeights {
        let a = kaiming_uniform(inp, lora.r * inp, rng);
        let [sa, sb] = shapes;
        self.register(format!("{PEFT_PREFIX}{path}.lora_A.weight"), sa, true);
        self.register(format!("{PEFT_PREFIX}{path}.lora_B.weight"), sb, true);
        LoraWeights {
            a: self.matrix(a, [lora.r, inp]),
            b: Tensor::zeros([out, lora.r], &self.device),
            scale: lora.scale(),
            dropout: lora.dropout,
        }
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<LoraLinear> {
        let w = self.values(&format!("{name}.weight"), &[out, inp], Init::Normal, true)?;
        let w = self.matrix(w, [out, inp]);
        let b = self.vector(&format!("{name}.bias"), out, Init::Zeros, false)?;
        Ok(LoraLinear::new(w, Some(b)))
    }

    fn norm(&mut self, name: &str) -> Result<Norm> {
        let h = self.hidden;
        let g = self.values(&format!("{name}.weight"), &[h], Init::Ones, false)?;
        let b = self.values(&format!("{name}.bias"), &[h], Init::Zeros, false)?;
        if self.trained() {
            let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [h]), &self.device);
            Ok(Norm::trained(t(g), t(b), self.eps))
        } else {
            Ok(Norm::Frozen(FrozenLayerNorm::new(g, b, self.eps)))
        }
    }
}

impl AdapterModel for VitClassifier {
    fn backend(&self) -> &'static str {
        crate::BACKEND
    }

    fn summary(&self) -> ModelSummary {
        let trainable: usize = self.params.iter().map(ParamInfo::numel).sum();
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
        &self.params
    }

    fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.params.len());
        self.clone().visit(&mut |p| out.push(p.read()));
        out.into_iter().collect()
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        if values.len() != self.params.len() {
            return Err(Error::Other(format!(
                "expected {} parameter tensors, got {}",
                self.params.len(),
                values.len()
            )));
        }
        for (info, v) in self.params.iter().zip(values) {
            if v.len() != info.numel() {
                return Err(Error::Other(format!(
                    "{}: expected {} values, got {}",
                    info.name,
                    info.numel(),
                    v.len()
                )));
            }
        }
        let device = self.vit.device.clone();
        let mut values = values.iter();
        self.visit(&mut |p| p.write(values.next().expect("counted above").clone(), &device));
        Ok(())
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        let b = self.images(batch)?;
        check_targets(b, self.num_labels)?;
        let mut model = self.clone();
        model.visit(&mut |p| p.track());
        let mut masks = MaskSource::new(dropout_seed, &self.vit.device);
        let logits = model.logits(b, Some(&mut masks));
        let loss = match &b.soft_labels {
            None => cross_entropy(logits, &b.labels),
            Some(soft) => soft_cross_entropy(logits, soft),
        };
        let grads = loss.backward();
        let mut out = Vec::with_capacity(self.params.len());
        let infos = self.params.iter();
        let mut zeros = infos.map(|i| vec![0.0; i.numel()]);
        model.visit(&mut |p| {
            let zero = zeros.next().expect("one per parameter");
            out.push(p.grad(&grads).unwrap_or(Ok(zero)));
        });
        let grads = out.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(StepOutput {
            loss: host(loss.inner())?[0],
            grads,
        })
    }

    fn predict(&self, batch: &Batch) -> Result<HostTensor> {
        let b = self.images(batch)?;
        Ok(HostTensor::new(
            vec![b.batch_size, self.num_labels],
            host(self.logits(b, None))?,
        ))
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        let b = self.images(batch)?;
        let hidden = self.vit.forward(&b.pixels, b.batch_size, None);
        Ok(HostTensor::new(
            vec![b.batch_size, self.vit.cfg.seq_len(), self.vit.cfg.hidden_size],
            host(hidden)?,
        ))
    }

    fn merge(&mut self) -> Result<()> {
        self.vit.linears_mut().for_each(LoraLinear::merge);
        Ok(())
    }

    fn unmerge(&mut self) -> Result<()> {
        self.vit.linears_mut().for_each(LoraLinear::unmerge);
        Ok(())
    }

    /// Full mode: `config.json` and `model.safetensors` (every weight, head
    /// included, under Hugging Face's keys), written atomically.
    fn save_base(&self, dir: &Path) -> Result<bool> {
        if self.mode != VitMode::Full {
            return Ok(false);
        }
        let values = self.read_params()?;
        lora_core::vit::write_base(dir, &self.vit.cfg, self.num_labels, &self.params, &values)?;
        Ok(true)
    }
}

/// `[model] type = "vit-classifier"` on the burn backend: the shared schema of
/// [`VitClassifierSpec`], built into this backend's model.
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
        self.spec.check_lora(lora)?;
        let (dir, cfg) = self.spec.files(ctx)?;
        let model = match (self.spec.mode, dir) {
            (VitMode::Full, None) => VitClassifier::new_full(cfg, num_labels, ctx.seed)?,
            (VitMode::Lora, Some(dir)) => {
                let weights = SafetensorsWeights::open(&dir.join(WEIGHTS_FILE))?;
                VitClassifier::from_base(cfg, &weights, lora, num_labels, ctx.seed)?
            }
            (VitMode::Full, Some(_)) => {
                return Err(Error::Other(
                    "continuing full training from a saved base is not supported yet; use mode = \"lora\"".into(),
                ));
            }
            (VitMode::Lora, None) => return Err(Error::Other("mode = \"lora\" needs `path`".into())),
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
