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
use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput, check_param_values};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{SeededRng, derive_seed, kaiming_uniform, normal, rng};
use lora_core::registry::ModelEntry;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::vit::{
    BaseInit as Init, PATCH_TARGET, TARGETS, VitClassifierSpec, VitConfig, VitMode, VitStart, check_targets, peft_info,
};
use lora_core::{Batch, Error, HostTensor, ImageBatch, LoraSpec, Result, inventory};
use lora_core::{ModelOptions, Task};

use super::model::{Block, Norm, Vit};
use crate::lora_linear::{LoraLinear, LoraWeights, MaskSource};
use crate::loss::{cross_entropy, soft_cross_entropy};
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
            let lora = &lora.for_module(PATCH_TARGET.1);
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
                    let lora = &lora.for_module(&full);
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
            if let Some((gamma, beta)) = &mut n.affine {
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
        self.params.push(ParamInfo::new(name, shape, decay));
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
        let a_info = ParamInfo::new(format!("{PEFT_PREFIX}{path}.lora_A.weight"), sa, true);
        let b_info = ParamInfo::new(format!("{PEFT_PREFIX}{path}.lora_B.weight"), sb, true);
        self.params.push(a_info.with_compute_shape(vec![lora.r, inp]));
        self.params.push(b_info.with_compute_shape(vec![out, lora.r]));
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
            Ok(Norm::frozen(FrozenLayerNorm::new(g, b, self.eps)))
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
        check_param_values(&self.params, values)?;
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
        let grads = out.into_iter().collect::<Result<Vec<_>>>()?.concat();
        Ok(StepOutput {
            loss: host(loss.inner())?[0],
            weight: batch.targets().weight(),
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

    fn build(
        &self,
        ctx: &StageContext,
        lora: &LoraSpec,
        task: &Task,
        options: &ModelOptions,
    ) -> Result<Box<dyn AdapterModel>> {
        options.check("burn", &[lora_core::DType::F32], false)?;
        let num_labels = task.require_classes("vit-classifier")?;
        let model = match self.spec.start(ctx, lora)? {
            VitStart::New(cfg) => VitClassifier::new_full(cfg, num_labels, ctx.seed)?,
            VitStart::Saved { cfg, weights } => {
                let weights = SafetensorsWeights::open(&weights)?;
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
    use lora_core::vit::WEIGHTS_FILE;

    fn tiny() -> VitConfig {
        let mut cfg: VitConfig = serde_json::from_value(serde_json::json!({
            "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16
        }))
        .unwrap();
        cfg.layer_norm_eps = 1e-6;
        cfg
    }

    fn image_batch(n: usize, seed: u64) -> ImageBatch {
        let mut r = rng(seed);
        ImageBatch {
            batch_size: n,
            channels: 1,
            height: 8,
            width: 8,
            pixels: normal(1.0, n * 64, &mut r),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            soft_labels: None,
        }
    }

    fn batch(n: usize, seed: u64) -> Batch {
        Batch::Image(image_batch(n, seed))
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
            for (v, g) in p.iter_mut().zip(&out.split_grads(m.params())) {
                v.iter_mut().zip(g).for_each(|(v, g)| *v -= lr * g);
            }
            m.write_params(&p).unwrap();
        }
        (first, last)
    }

    /// A saved base from a new (untrained) full model, and its weights.
    fn saved_base() -> (VitClassifier, tempfile::TempDir, SafetensorsWeights) {
        let full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(full.save_base(dir.path()).unwrap());
        let weights = SafetensorsWeights::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
        (full, dir, weights)
    }

    /// Random non-zero values for every trainable parameter, so that B != 0.
    fn perturb(m: &mut VitClassifier, std: f32) {
        let mut r = rng(5);
        let v: Vec<Vec<f32>> = m
            .read_params()
            .unwrap()
            .iter()
            .map(|p| p.iter().zip(normal(std, p.len(), &mut r)).map(|(a, b)| a + b).collect())
            .collect();
        m.write_params(&v).unwrap();
    }

    #[test]
    fn a_new_model_draws_hugging_face_names_shapes_and_values_from_the_seed() {
        let m = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let p = m.params();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names[..6],
            [
                "vit.embeddings.patch_embeddings.projection.weight",
                "vit.embeddings.patch_embeddings.projection.bias",
                "vit.embeddings.cls_token",
                "vit.embeddings.position_embeddings",
                "vit.encoder.layer.0.layernorm_before.weight",
                "vit.encoder.layer.0.layernorm_before.bias",
            ]
        );
        assert_eq!(names[6], "vit.encoder.layer.0.attention.attention.query.weight");
        assert_eq!(
            names[names.len() - 4..],
            [
                "vit.layernorm.weight",
                "vit.layernorm.bias",
                "classifier.weight",
                "classifier.bias"
            ]
        );
        // 4 embedding tensors, 2 layers x (2 norms x 2 + 6 linears x 2), final norm, head.
        assert_eq!(p.len(), 4 + 2 * 16 + 2 + 2);
        assert_eq!(
            p[0].shape,
            [8, 1, 4, 4],
            "the patch projection is stored as a Conv2d kernel"
        );
        assert_eq!(
            (p[2].shape.as_slice(), p[3].shape.as_slice()),
            (&[1, 1, 8][..], &[1, 5, 8][..])
        );
        let decays: Vec<bool> = p[..8].iter().map(|p| p.weight_decay).collect();
        assert_eq!(decays, [true, false, false, false, false, false, true, false]);
        // One stream for the base in tensor order (zeros and ones draw nothing), another for the head.
        let v = m.read_params().unwrap();
        let mut r = rng(derive_seed(1, "vit-init", 0));
        assert_eq!(v[0], Init::Normal.values(128, &mut r));
        assert_eq!(v[1], vec![0.0; 8]);
        assert_eq!(v[2], Init::Normal.values(8, &mut r));
        assert_eq!(v[3], Init::Normal.values(40, &mut r));
        assert_eq!(v[4], vec![1.0; 8]);
        assert_eq!(v[6], Init::Normal.values(64, &mut r));
        assert_eq!(
            v[v.len() - 2],
            normal(0.02, 24, &mut rng(derive_seed(1, "head-init", 0)))
        );
        let s = m.summary();
        assert_eq!(s.trainable_parameters, s.total_parameters);
        assert_eq!(s.max_positions, 5);
    }

    #[test]
    fn full_training_learns_and_the_saved_base_reloads_frozen_to_the_same_outputs() {
        let mut full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let b = batch(6, 2);
        let (first, last) = sgd(&mut full, &b, 80, 1.0);
        assert!(last < first * 0.7, "loss {first} -> {last}");
        // Every base weight got a gradient.
        let g = full.train_step(&b, 0).unwrap().split_grads(full.params());
        assert!(g.iter().all(|g| g.iter().any(|v| *v != 0.0)));

        let dir = tempfile::tempdir().unwrap();
        assert!(full.save_base(dir.path()).unwrap());
        let cfg = VitConfig::from_file(&dir.path().join(lora_core::vit::CONFIG_FILE)).unwrap();
        assert_eq!(cfg, tiny());
        let weights = SafetensorsWeights::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
        let adapted = VitClassifier::from_base(cfg, &weights, &lora(&["query", "value"]), 3, 1).unwrap();
        assert!(!adapted.save_base(dir.path()).unwrap(), "a LoRA model writes no base");
        let (a, f) = (adapted.hidden_states(&b).unwrap(), full.hidden_states(&b).unwrap());
        assert_eq!(a.shape, [6, 5, 8]);
        for (x, y) in a.data.iter().zip(&f.data) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        // The stored parameters stay untracked after a step.
        assert!(!full.head_w.is_autodiff() && !full.vit.cls_token.is_autodiff());
    }

    #[test]
    fn lora_mode_trains_only_the_adapter_and_the_head_and_merges_exactly() {
        let (full, _dir, weights) = saved_base();
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
        // A from the LoRA stream in module order, B zero.
        let v = m.read_params().unwrap();
        let mut r = rng(derive_seed(3, "lora-init", 0));
        assert_eq!(v[0], kaiming_uniform(8, 16, &mut r));
        assert!(v[1].iter().all(|&x| x == 0.0));
        assert_eq!(v[2], kaiming_uniform(8, 16, &mut r));
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
        let (_full, _dir, weights) = saved_base();
        let mut m =
            VitClassifier::from_base(tiny(), &weights, &lora(&["query", "patch_embeddings.projection"]), 3, 3).unwrap();
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

    /// The analytic gradient against central differences of the loss, on entries of
    /// every kind of tensor: patch, class token, positions, norms, linears, head.
    #[test]
    fn gradients_match_finite_differences_in_both_modes() {
        let (_full, _dir, weights) = saved_base();
        let mut adapted = VitClassifier::from_base(
            tiny(),
            &weights,
            &lora(&["patch_embeddings.projection", "key", "output.dense"]),
            3,
            3,
        )
        .unwrap();
        perturb(&mut adapted, 0.3);
        let mut full = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        perturb(&mut full, 0.3);
        let b = batch(4, 7);
        for m in [&mut adapted, &mut full] {
            let base = m.read_params().unwrap();
            let grads = m.train_step(&b, 0).unwrap().split_grads(m.params());
            let eps = 1e-2f32;
            for p in 0..base.len() {
                let k = (p * 7) % base[p].len();
                let mut loss_at = |delta: f32| {
                    let mut v = base.clone();
                    v[p][k] += delta;
                    m.write_params(&v).unwrap();
                    f64::from(m.train_step(&b, 0).unwrap().loss)
                };
                let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * f64::from(eps));
                let analytic = f64::from(grads[p][k]);
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                    "{}[{k}]: numeric {numeric} vs analytic {analytic}",
                    m.params()[p].name
                );
            }
            m.write_params(&base).unwrap();
        }
    }

    /// Masks are drawn as the candle backend draws them: per block, per adapted linear
    /// in module order, `[batch * tokens, in]`; none for the patch embedding.
    #[test]
    fn dropout_masks_follow_the_module_order() {
        let (_full, _dir, weights) = saved_base();
        let mut s = lora(&["output.dense", "query", "patch_embeddings.projection"]);
        s.dropout = 0.5;
        let m = VitClassifier::from_base(tiny(), &weights, &s, 3, 3).unwrap();
        let mut src = MaskSource::new(21, &m.vit.device);
        m.logits(&image_batch(2, 1), Some(&mut src));
        assert_eq!(src.drawn, vec![[10, 8], [10, 16], [10, 8], [10, 16]]);
        let mut m = m;
        let b = batch(2, 1);
        perturb(&mut m, 0.2);
        let (x, y, z) = (
            m.train_step(&b, 11).unwrap(),
            m.train_step(&b, 11).unwrap(),
            m.train_step(&b, 12).unwrap(),
        );
        assert_eq!((x.loss, &x.grads), (y.loss, &y.grads));
        assert_ne!(x.loss, z.loss);
    }

    #[test]
    fn soft_labels_equal_hard_labels_when_one_hot() {
        let mut m = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let mut b = image_batch(4, 9);
        let hard = m.train_step(&Batch::Image(b.clone()), 0).unwrap();
        let mut soft = vec![0.0; 12];
        for (i, &l) in b.labels.iter().enumerate() {
            soft[i * 3 + l as usize] = 1.0;
        }
        b.soft_labels = Some(soft);
        let s = m.train_step(&Batch::Image(b), 0).unwrap();
        assert!((hard.loss - s.loss).abs() < 1e-5, "{} vs {}", hard.loss, s.loss);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut m = VitClassifier::new_full(tiny(), 3, 1).unwrap();
        let err = |m: &mut VitClassifier, b: ImageBatch| {
            let p = m.predict(&Batch::Image(b.clone())).err().map(|e| e.to_string());
            let t = m.train_step(&Batch::Image(b), 0).unwrap_err().to_string();
            (p, t)
        };
        let mut b = image_batch(4, 9);
        b.height = 4;
        let (p, t) = err(&mut m, b);
        assert!(t.contains("takes 1x8x8 images") && t.contains("gives 1x4x8"), "{t}");
        assert_eq!(p.as_deref(), Some(t.as_str()));
        let mut b = image_batch(4, 9);
        b.pixels.pop();
        assert!(err(&mut m, b).1.contains("has 255 pixel values, expected 256"));
        let mut b = image_batch(4, 9);
        b.labels[1] = 3;
        let (p, t) = err(&mut m, b);
        assert!(p.is_none(), "prediction needs no labels");
        assert!(t.contains("label 3 is outside the 3 classes"), "{t}");
        let mut b = image_batch(4, 9);
        b.labels.pop();
        assert!(err(&mut m, b).1.contains("4 images has 3 labels"));
        let mut b = image_batch(4, 9);
        b.soft_labels = Some(vec![0.5; 10]);
        assert!(err(&mut m, b).1.contains("soft labels hold 10 values"));
        let mut b = image_batch(0, 9);
        b.labels.clear();
        assert!(err(&mut m, b).1.contains("empty batch"));
        let text = Batch::Text(lora_core::TextBatch {
            batch_size: 1,
            seq_len: 1,
            input_ids: vec![1],
            attention_mask: vec![1],
            labels: vec![0],
        });
        assert!(
            m.predict(&text)
                .unwrap_err()
                .to_string()
                .contains("takes image batches")
        );
        assert!(m.write_params(&[]).is_err());
        // Weights that do not fit the configuration.
        let (_full, _dir, weights) = saved_base();
        let mut wide = tiny();
        wide.intermediate_size = 32;
        let e = VitClassifier::from_base(wide, &weights, &lora(&["query"]), 3, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("intermediate.dense.weight` has shape [16, 8], the config says [32, 8]"),
            "{e}"
        );
        let mut s = lora(&["query"]);
        s.r = 9;
        let e = VitClassifier::from_base(tiny(), &weights, &s, 3, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Valid range: 1 <= rank <= 8"), "{e}");
    }

    fn pipeline(model: &str, targets: &str) -> lora_core::config::PipelineConfig {
        let text = format!(
            "[run]\nname = \"t\"\noutput-dir = \"out\"\n[data]\ntype = \"idx\"\n\
             [model]\n{model}\n[lora]\nr = 4\nalpha = 8\ntarget-modules = {targets}\n[train]\n[eval]\n"
        );
        lora_core::config::PipelineConfig::parse(Path::new("p.toml"), text).unwrap()
    }

    #[test]
    fn the_model_is_registered_for_the_burn_backend_with_the_shared_schema() {
        let p = pipeline("type = \"vit-classifier\"\npath = \"base\"", "[\"query\"]");
        let stage = lora_core::registry::build_model(&p.model, "burn").unwrap();
        assert_eq!(stage.resolved()["mode"], "lora");
        let p = pipeline("type = \"vit-classifier\"\nmode = \"full\"\nimage-size = 28", "[]");
        let err = lora_core::registry::build_model(&p.model, "burn").err().unwrap();
        assert!(err.0[0].message.contains("missing: patch-size"), "{}", err.0[0].message);
        // Full mode refuses LoRA targets when the model is built.
        let p = pipeline(
            "type = \"vit-classifier\"\nmode = \"full\"\nimage-size = 8\npatch-size = 4\nchannels = 1\n\
             hidden-size = 8\nlayers = 1\nheads = 2\nmlp-size = 16",
            "[\"query\"]",
        );
        let stage = lora_core::registry::build_model(&p.model, "burn").unwrap();
        let ctx = StageContext {
            seed: 1,
            assets: &lora_core::stage::NoAssets,
            tokenizer: None,
        };
        let e = stage.build(&ctx, &p.lora, 3).err().unwrap().to_string();
        assert!(e.contains("target-modules must be empty"), "{e}");
    }
}
