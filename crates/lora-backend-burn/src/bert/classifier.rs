//! `BertForSequenceClassification` with LoRA: the encoder, a frozen pooler on
//! the first token, and a fully trained classifier saved as a module to save.
//! Parameter names, order, initialisation and dropout masks are the candle
//! backend's, so that both backends give the same numbers from the same seed.

use std::path::{Path, PathBuf};

use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};
use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput, check_param_values};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{derive_seed, kaiming_uniform, normal, rng};
use lora_core::registry::ModelEntry;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::{Batch, Error, HostTensor, LoraSpec, Result, TextBatch, inventory};
use lora_core::{ModelOptions, Task};

use super::config::BertConfig;
use super::encoder::{Encoder, Layer, MaskSource, TARGETS, mean_pool_normalised};
use crate::lora_linear::{LoraLinear, LoraWeights};
use crate::loss::cross_entropy;
use crate::ops::FrozenLayerNorm;
use crate::weights::{SafetensorsWeights, WeightSource, host, tensor};
use lora_core::bert::{ClassifierSpec, check_rank, resolve_targets};

/// Key prefix of every adapter tensor: PEFT wraps the model as `base_model.model`,
/// and the sequence-classification model holds the encoder under `bert`.
const PEFT_PREFIX: &str = "base_model.model.";

/// Where a trainable parameter lives, in the order of `params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// LoRA `A` of `layers[.0].linears[.1]`.
    A(usize, usize),
    /// LoRA `B` of `layers[.0].linears[.1]`.
    B(usize, usize),
    HeadWeight,
    HeadBias,
}

#[derive(Debug, Clone)]
pub struct BertClassifier {
    encoder: Encoder,
    pooler: (Tensor<2>, Tensor<1>),
    /// `[num_labels, hidden]`.
    classifier_weight: Tensor<2>,
    /// `[num_labels]`.
    classifier_bias: Tensor<1>,
    classifier_dropout: f32,
    slots: Vec<Slot>,
    params: Vec<ParamInfo>,
    targets: Vec<&'static str>,
    num_labels: usize,
}

impl BertClassifier {
    /// Builds the model from base weights (with or without the `bert.` prefix),
    /// inserts LoRA layers and initialises the adapter and head from `seed`.
    pub fn new(
        cfg: BertConfig,
        weights: &dyn WeightSource,
        lora: &LoraSpec,
        num_labels: usize,
        classifier_dropout: f32,
        seed: u64,
    ) -> Result<Self> {
        let device = crate::device();
        let dev = &device;
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w2 = |name: &str, dims: [usize; 2]| -> Result<Tensor<2>> {
            let full = format!("{prefix}{name}");
            tensor(weights.get(&full)?, &full, dims, dev)
        };
        let w1 = |name: &str, n: usize| -> Result<Tensor<1>> {
            let full = format!("{prefix}{name}");
            tensor(weights.get(&full)?, &full, [n], dev)
        };
        let ln = |name: &str| -> Result<FrozenLayerNorm> {
            let vector = |suffix: &str| -> Result<Vec<f32>> {
                let full = format!("{prefix}{name}.{suffix}");
                let t = weights.get(&full)?;
                match t.shape.as_slice() {
                    &[n] if n == cfg.hidden_size => Ok(t.data),
                    s => Err(Error::Data(format!(
                        "weight `{full}` has shape {s:?}, expected [{}]",
                        cfg.hidden_size
                    ))),
                }
            };
            Ok(FrozenLayerNorm::new(
                vector("weight")?,
                vector("bias")?,
                cfg.layer_norm_eps,
            ))
        };
        let targets = resolve_targets(lora)?;
        let mut init = rng(derive_seed(seed, "lora-init", 0));
        let mut slots = Vec::new();
        let mut params = Vec::new();

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let mut linears = Vec::with_capacity(6);
            for (j, (name, path, _)) in TARGETS.into_iter().enumerate() {
                let full = format!("encoder.layer.{i}.{path}");
                let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
                let (out_dim, in_dim) = match name {
                    "intermediate.dense" => (inter, h),
                    "output.dense" => (h, inter),
                    _ => (h, h),
                };
                let weight = w2(&format!("{full}.weight"), [out_dim, in_dim])?;
                let mut lin = LoraLinear::new(weight, Some(w1(&format!("{full}.bias"), out_dim)?));
                if targets.contains(&name) {
                    let lora = &lora.for_module(&full);
                    check_rank(lora, &full, in_dim, out_dim)?;
                    let a = kaiming_uniform(in_dim, lora.r * in_dim, &mut init);
                    let a = Tensor::from_data(TensorData::new(a, [lora.r, in_dim]), dev);
                    let b = Tensor::zeros([out_dim, lora.r], dev);
                    for (suffix, slot, shape) in [
                        ("lora_A", Slot::A(i, j), vec![lora.r, in_dim]),
                        ("lora_B", Slot::B(i, j), vec![out_dim, lora.r]),
                    ] {
                        params.push(ParamInfo::new(
                            format!("{PEFT_PREFIX}bert.{full}.{suffix}.weight"),
                            shape,
                            true,
                        ));
                        slots.push(slot);
                    }
                    lin = lin.with_lora(LoraWeights {
                        a,
                        b,
                        scale: lora.scale(),
                        dropout: lora.dropout,
                    });
                }
                linears.push(lin);
            }
            layers.push(Layer {
                linears: linears
                    .try_into()
                    .map_err(|_| Error::Other("six linears per layer".into()))?,
                attention_norm: ln(&format!("encoder.layer.{i}.attention.output.LayerNorm"))?,
                output_norm: ln(&format!("encoder.layer.{i}.output.LayerNorm"))?,
            });
        }
        let h = cfg.hidden_size;
        let encoder = Encoder {
            word_embeddings: w2("embeddings.word_embeddings.weight", [cfg.vocab_size, h])?,
            position_embeddings: w2(
                "embeddings.position_embeddings.weight",
                [cfg.max_position_embeddings, h],
            )?,
            token_type_embeddings: w2("embeddings.token_type_embeddings.weight", [cfg.type_vocab_size, h])?,
            embedding_norm: ln("embeddings.LayerNorm")?,
            layers,
            cfg: cfg.clone(),
            device: device.clone(),
        };
        let pooler = (w2("pooler.dense.weight", [h, h])?, w1("pooler.dense.bias", h)?);

        // Hugging Face initialises a new head with N(0, 0.02) weights and zero bias.
        let mut head_rng = rng(derive_seed(seed, "head-init", 0));
        let cw = Tensor::from_data(
            TensorData::new(normal(0.02, num_labels * h, &mut head_rng), [num_labels, h]),
            dev,
        );
        let cb = Tensor::zeros([num_labels], dev);
        params.push(ParamInfo::new(
            format!("{PEFT_PREFIX}classifier.weight"),
            vec![num_labels, h],
            true,
        ));
        params.push(ParamInfo::new(
            format!("{PEFT_PREFIX}classifier.bias"),
            vec![num_labels],
            false,
        ));
        slots.push(Slot::HeadWeight);
        slots.push(Slot::HeadBias);

        Ok(Self {
            encoder,
            pooler,
            classifier_weight: cw,
            classifier_bias: cb,
            classifier_dropout,
            slots,
            params,
            targets,
            num_labels,
        })
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    fn text(batch: &Batch) -> Result<&TextBatch> {
        match batch {
            Batch::Text(t) => Ok(t),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Other("the BERT classifier takes text batches".into())),
        }
    }

    fn logits(&self, batch: &TextBatch, mut masks: Option<&mut MaskSource>) -> Result<Tensor<2>> {
        let dims = (batch.batch_size, batch.seq_len);
        let hidden = self
            .encoder
            .forward(&batch.input_ids, &batch.attention_mask, dims, masks.as_deref_mut())?;
        let first = Encoder::first_token(hidden, dims);
        let pooled = linear(first, self.pooler.0.clone().transpose(), Some(self.pooler.1.clone())).tanh();
        let pooled = match masks.and_then(|src| src.mask(self.classifier_dropout, dims.0, self.encoder.cfg.hidden_size))
        {
            Some(m) => pooled * m,
            None => pooled,
        };
        Ok(linear(
            pooled,
            self.classifier_weight.clone().transpose(),
            Some(self.classifier_bias.clone()),
        ))
    }

    /// Sentence embeddings: mean over real tokens, L2-normalised (sentence-transformers).
    pub fn sentence_embeddings(&self, batch: &Batch) -> Result<HostTensor> {
        let b = Self::text(batch)?;
        let dims = (b.batch_size, b.seq_len);
        let hidden = self.encoder.forward(&b.input_ids, &b.attention_mask, dims, None)?;
        let pooled = mean_pool_normalised(hidden, &b.attention_mask, dims);
        Ok(HostTensor::new(
            vec![b.batch_size, self.encoder.cfg.hidden_size],
            host(pooled)?,
        ))
    }

    fn lora_at(&self, layer: usize, linear: usize) -> &LoraWeights {
        self.encoder.layers[layer].linears[linear]
            .lora()
            .expect("slots point at LoRA layers")
    }

    fn lora_at_mut(&mut self, layer: usize, linear: usize) -> &mut LoraWeights {
        self.encoder.layers[layer].linears[linear]
            .lora_mut()
            .expect("slots point at LoRA layers")
    }

    /// The value of one trainable parameter as a host vector (PEFT layout, row-major).
    fn read_slot(&self, slot: Slot) -> Result<Vec<f32>> {
        match slot {
            Slot::A(l, i) => host(self.lora_at(l, i).a.clone()),
            Slot::B(l, i) => host(self.lora_at(l, i).b.clone()),
            Slot::HeadWeight => host(self.classifier_weight.clone()),
            Slot::HeadBias => host(self.classifier_bias.clone()),
        }
    }

    /// A copy of the model whose trainable parameters are fresh autodiff leaves.
    fn tracked(&self) -> Self {
        let mut m = self.clone();
        for layer in &mut m.encoder.layers {
            for lin in &mut layer.linears {
                if let Some(l) = lin.lora_mut() {
                    *l = l.tracked();
                }
            }
        }
        m.classifier_weight = m.classifier_weight.autodiff().require_grad();
        m.classifier_bias = m.classifier_bias.autodiff().require_grad();
        m
    }

    fn check_labels(&self, b: &TextBatch) -> Result<()> {
        if b.labels.len() != b.batch_size {
            return Err(Error::Data(format!(
                "batch of {} sequences has {} labels",
                b.batch_size,
                b.labels.len()
            )));
        }
        if let Some(bad) = b.labels.iter().find(|&&l| l as usize >= self.num_labels) {
            return Err(Error::Data(format!(
                "label {bad} is outside the {} classes of the model",
                self.num_labels
            )));
        }
        Ok(())
    }

    fn for_each_linear(&mut self, mut f: impl FnMut(&mut LoraLinear)) {
        for layer in &mut self.encoder.layers {
            for lin in &mut layer.linears {
                f(lin);
            }
        }
    }
}

impl AdapterModel for BertClassifier {
    fn backend(&self) -> &'static str {
        crate::BACKEND
    }

    fn summary(&self) -> ModelSummary {
        let cfg = &self.encoder.cfg;
        let trainable: usize = self.params.iter().map(|p| p.numel()).sum();
        ModelSummary {
            architecture: "BertForSequenceClassification".into(),
            total_parameters: self.encoder.parameter_count() + cfg.hidden_size * (cfg.hidden_size + 1) + trainable,
            trainable_parameters: trainable,
            num_labels: self.num_labels,
            hidden_size: cfg.hidden_size,
            max_positions: cfg.max_position_embeddings,
        }
    }

    fn peft_info(&self) -> PeftInfo {
        lora_core::bert::peft_info(&self.targets)
    }

    fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.slots.iter().map(|&s| self.read_slot(s)).collect()
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        check_param_values(&self.params, values)?;
        let dev = self.encoder.device.clone();
        for (i, v) in values.iter().enumerate() {
            let data = TensorData::new(v.clone(), self.params[i].shape.clone());
            match self.slots[i] {
                Slot::A(l, j) => self.lora_at_mut(l, j).a = Tensor::from_data(data, &dev),
                Slot::B(l, j) => self.lora_at_mut(l, j).b = Tensor::from_data(data, &dev),
                Slot::HeadWeight => self.classifier_weight = Tensor::from_data(data, &dev),
                Slot::HeadBias => self.classifier_bias = Tensor::from_data(data, &dev),
            }
        }
        Ok(())
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        let b = Self::text(batch)?;
        self.check_labels(b)?;
        let model = self.tracked();
        let mut masks = MaskSource::new(dropout_seed, &self.encoder.device);
        let logits = model.logits(b, Some(&mut masks))?;
        let loss = cross_entropy(logits, &b.labels);
        let grads = loss.backward();
        let mut out = Vec::with_capacity(self.params.iter().map(ParamInfo::numel).sum());
        for (&slot, info) in self.slots.iter().zip(&self.params) {
            let g = match slot {
                Slot::A(l, i) => model.lora_at(l, i).a.grad(&grads).map(host),
                Slot::B(l, i) => model.lora_at(l, i).b.grad(&grads).map(host),
                Slot::HeadWeight => model.classifier_weight.grad(&grads).map(host),
                Slot::HeadBias => model.classifier_bias.grad(&grads).map(host),
            };
            match g {
                Some(g) => out.extend(g?),
                None => out.resize(out.len() + info.numel(), 0.0),
            }
        }
        let loss = host(loss.inner())?;
        Ok(StepOutput {
            loss: loss[0],
            weight: batch.targets().weight(),
            grads: out,
        })
    }

    fn predict(&self, batch: &Batch) -> Result<HostTensor> {
        let b = Self::text(batch)?;
        let logits = self.logits(b, None)?;
        Ok(HostTensor::new(vec![b.batch_size, self.num_labels], host(logits)?))
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        let b = Self::text(batch)?;
        let dims = (b.batch_size, b.seq_len);
        let hidden = self.encoder.forward(&b.input_ids, &b.attention_mask, dims, None)?;
        Ok(HostTensor::new(
            vec![b.batch_size, b.seq_len, self.encoder.cfg.hidden_size],
            host(hidden)?,
        ))
    }

    fn merge(&mut self) -> Result<()> {
        self.for_each_linear(|l| l.merge());
        Ok(())
    }

    fn unmerge(&mut self) -> Result<()> {
        self.for_each_linear(|l| l.unmerge());
        Ok(())
    }
}

/// `[model] type = "bert-classifier"` on the burn backend: the shared schema
/// of [`lora_core::bert::ClassifierSpec`], built into this backend's model.
#[derive(Debug, Clone)]
pub struct BertClassifierConfig {
    pub spec: ClassifierSpec,
}

impl BertClassifierConfig {
    /// Loads the model from its folder.
    pub fn load(
        &self,
        dir: &Path,
        cfg: BertConfig,
        lora: &LoraSpec,
        num_labels: usize,
        seed: u64,
    ) -> Result<BertClassifier> {
        let weights = SafetensorsWeights::open(&dir.join("model.safetensors"))?;
        BertClassifier::new(cfg, &weights, lora, num_labels, self.spec.classifier_dropout, seed)
    }
}

impl ModelStage for BertClassifierConfig {
    fn resolved(&self) -> serde_json::Value {
        self.spec.resolved()
    }

    fn tokenizer(&self, ctx: &StageContext) -> Result<Option<PathBuf>> {
        self.spec.tokenizer(ctx)
    }

    fn facts(&self, ctx: &StageContext) -> Result<Option<lora_core::rules::ModelFacts>> {
        self.spec.facts(ctx)
    }

    fn build(
        &self,
        ctx: &StageContext,
        lora: &LoraSpec,
        task: &Task,
        options: &ModelOptions,
    ) -> Result<Box<dyn AdapterModel>> {
        options.check("burn", &[lora_core::DType::F32], false)?;
        let num_labels = task.require_classes("bert-classifier")?;
        let (dir, cfg) = self.spec.files(ctx)?;
        Ok(Box::new(self.load(&dir, cfg, lora, num_labels, ctx.seed)?))
    }

    fn base_model_name(&self, ctx: &StageContext) -> Result<String> {
        self.spec.base_model_name(ctx)
    }
}

fn build(c: &Component) -> std::result::Result<Box<dyn ModelStage>, Diagnostics> {
    Ok(Box::new(BertClassifierConfig {
        spec: ClassifierSpec::from_component(c)?,
    }))
}

inventory::submit! {
    ModelEntry {
        backend: crate::BACKEND,
        name: "bert-classifier",
        summary: "BERT-family encoder with LoRA and a sequence-classification head (BertForSequenceClassification layout)",
        build,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 20,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: "gelu".into(),
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
        }
    }

    /// Random base weights with Hugging Face's names (no `bert.` prefix, like MiniLM).
    fn tiny_weights(cfg: &BertConfig) -> HashMap<String, HostTensor> {
        let mut r = rng(99);
        let mut m = HashMap::new();
        let mut put = |name: String, shape: Vec<usize>, std: f32| {
            let n = shape.iter().product();
            m.insert(name, HostTensor::new(shape, normal(std, n, &mut r)));
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        put("embeddings.word_embeddings.weight".into(), vec![cfg.vocab_size, h], 1.0);
        put(
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
            0.1,
        );
        put("embeddings.token_type_embeddings.weight".into(), vec![2, h], 0.1);
        put("pooler.dense.weight".into(), vec![h, h], 0.3);
        put("pooler.dense.bias".into(), vec![h], 0.1);
        let mut lns = vec!["embeddings.LayerNorm".to_string()];
        for l in 0..cfg.num_hidden_layers {
            for (_, path, _) in TARGETS {
                let (o, inp) = match path {
                    "intermediate.dense" => (i, h),
                    "output.dense" => (h, i),
                    _ => (h, h),
                };
                put(format!("encoder.layer.{l}.{path}.weight"), vec![o, inp], 0.3);
                put(format!("encoder.layer.{l}.{path}.bias"), vec![o], 0.1);
            }
            lns.push(format!("encoder.layer.{l}.attention.output.LayerNorm"));
            lns.push(format!("encoder.layer.{l}.output.LayerNorm"));
        }
        for ln in lns {
            m.insert(format!("{ln}.weight"), HostTensor::new(vec![h], vec![1.1; h]));
            m.insert(format!("{ln}.bias"), HostTensor::new(vec![h], vec![0.05; h]));
        }
        m
    }

    fn spec(targets: &[&str], rs: bool) -> LoraSpec {
        LoraSpec {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: rs,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            target_modules_location: None,
            patterns_location: None,
        }
    }

    fn text_batch() -> TextBatch {
        TextBatch {
            batch_size: 2,
            seq_len: 5,
            input_ids: vec![1, 5, 7, 9, 2, 1, 4, 2, 0, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            labels: vec![0, 2],
        }
    }

    fn batch() -> Batch {
        Batch::Text(text_batch())
    }

    fn model(targets: &[&str]) -> BertClassifier {
        let cfg = tiny_config();
        BertClassifier::new(cfg.clone(), &tiny_weights(&cfg), &spec(targets, false), 3, 0.0, 7).unwrap()
    }

    /// Random non-zero values for every trainable parameter, so that B != 0.
    fn perturb(m: &mut BertClassifier) {
        let mut r = rng(5);
        let v: Vec<Vec<f32>> = m.params().iter().map(|p| normal(0.2, p.numel(), &mut r)).collect();
        m.write_params(&v).unwrap();
    }

    const ALL: [&str; 6] = [
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ];

    #[test]
    fn lora_model_equals_base_model_at_initialisation() {
        let with = model(&["query", "value", "intermediate.dense", "output.dense"]);
        let without = model(&[]);
        let a = with.hidden_states(&batch()).unwrap();
        let b = without.hidden_states(&batch()).unwrap();
        assert_eq!(a.shape, vec![2, 5, 8]);
        assert_eq!(a.data, b.data);
        assert_eq!(
            with.predict(&batch()).unwrap().data,
            without.predict(&batch()).unwrap().data
        );
    }

    #[test]
    fn parameters_follow_peft_names_order_and_initialisation() {
        let m = model(&["value", "query"]);
        let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
        let prefix = "base_model.model.bert.encoder.layer";
        assert_eq!(
            names,
            vec![
                format!("{prefix}.0.attention.self.query.lora_A.weight"),
                format!("{prefix}.0.attention.self.query.lora_B.weight"),
                format!("{prefix}.0.attention.self.value.lora_A.weight"),
                format!("{prefix}.0.attention.self.value.lora_B.weight"),
                format!("{prefix}.1.attention.self.query.lora_A.weight"),
                format!("{prefix}.1.attention.self.query.lora_B.weight"),
                format!("{prefix}.1.attention.self.value.lora_A.weight"),
                format!("{prefix}.1.attention.self.value.lora_B.weight"),
                "base_model.model.classifier.weight".into(),
                "base_model.model.classifier.bias".into(),
            ]
        );
        assert_eq!(m.params()[0].shape, vec![2, 8]);
        assert_eq!(m.params()[1].shape, vec![8, 2]);
        assert!(m.params()[..9].iter().all(|p| p.weight_decay) && !m.params()[9].weight_decay);
        // One Kaiming-uniform stream for every A, in layer/module order; B and the head bias zero.
        let values = m.read_params().unwrap();
        let mut init = rng(derive_seed(7, "lora-init", 0));
        for i in [0, 2, 4, 6] {
            assert_eq!(values[i], kaiming_uniform(8, 16, &mut init), "{}", names[i]);
            assert!(values[i + 1].iter().all(|&x| x == 0.0));
        }
        assert_eq!(values[8], normal(0.02, 24, &mut rng(derive_seed(7, "head-init", 0))));
        assert_eq!(values[9], vec![0.0; 3]);
    }

    #[test]
    fn write_then_read_returns_the_same_values_in_peft_layout() {
        let mut m = model(&ALL);
        perturb(&mut m);
        let mut r = rng(5);
        let want: Vec<Vec<f32>> = m.params().iter().map(|p| normal(0.2, p.numel(), &mut r)).collect();
        assert_eq!(m.read_params().unwrap(), want);
        // A is [r, in] row-major: row 0 of layer 0's query A multiplies the input directly.
        let a = &m.encoder.layers[0].linears[0].lora().unwrap().a;
        assert_eq!(a.dims(), [2, 8]);
        assert!(m.write_params(&want[..3]).is_err());
    }

    #[test]
    fn merged_equals_unmerged_within_1e_5() {
        let mut m = model(&ALL);
        perturb(&mut m);
        let before = m.predict(&batch()).unwrap();
        m.merge().unwrap();
        let merged = m.predict(&batch()).unwrap();
        for (a, b) in before.data.iter().zip(&merged.data) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        m.unmerge().unwrap();
        assert_eq!(m.predict(&batch()).unwrap().data, before.data);
    }

    #[test]
    fn gradients_reach_lora_and_classifier_and_nothing_else() {
        let mut m = model(&ALL);
        perturb(&mut m);
        let out = m.train_step(&batch(), 1).unwrap();
        let out_grads = out.split_grads(m.params());
        assert_eq!(out_grads.len(), m.params().len());
        // 2 layers x 6 modules x (A, B) + classifier weight and bias.
        assert_eq!(m.params().len(), 26);
        for (g, info) in out_grads.iter().zip(m.params()) {
            assert_eq!(g.len(), info.numel(), "{}", info.name);
            let norm: f32 = g.iter().map(|x| x * x).sum();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "zero or non-finite gradient for {}",
                info.name
            );
        }
        // Base weights are plain tensors: never autodiff, never leaves.
        let enc = &m.encoder;
        let mut base = vec![
            &enc.word_embeddings,
            &enc.position_embeddings,
            &enc.token_type_embeddings,
            &m.pooler.0,
        ];
        for layer in &enc.layers {
            for lin in &layer.linears {
                base.push(lin.weight());
            }
        }
        assert!(base.iter().all(|t| !t.is_autodiff() && !t.is_require_grad()));
        // The step leaves the stored parameters untracked.
        assert!(!m.classifier_weight.is_autodiff());
    }

    #[test]
    fn the_loss_is_the_mean_cross_entropy_of_the_predicted_logits() {
        let mut m = model(&["query", "value"]);
        perturb(&mut m);
        let logits = m.predict(&batch()).unwrap();
        let labels = [0usize, 2];
        let mut want = 0f64;
        for (i, &l) in labels.iter().enumerate() {
            let row: Vec<f64> = logits.row(i).iter().map(|&x| f64::from(x)).collect();
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            want += lse - row[l];
        }
        want /= 2.0;
        let got = m.train_step(&batch(), 3).unwrap().loss;
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// The analytic gradient against central differences of the loss, on a few entries of each kind.
    #[test]
    fn gradients_match_finite_differences() {
        let mut m = model(&["query", "output.dense"]);
        perturb(&mut m);
        let base = m.read_params().unwrap();
        let grads = m.train_step(&batch(), 0).unwrap().split_grads(m.params());
        let eps = 1e-2f32;
        for (p, k) in [(0, 3), (1, 5), (2, 7), (3, 1), (5, 2), (8, 11), (9, 1)] {
            let mut loss_at = |delta: f32| {
                let mut v = base.clone();
                v[p][k] += delta;
                m.write_params(&v).unwrap();
                f64::from(m.train_step(&batch(), 0).unwrap().loss)
            };
            let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * f64::from(eps));
            let analytic = f64::from(grads[p][k]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "{}[{k}]: numeric {numeric} vs analytic {analytic}",
                m.params()[p].name
            );
        }
    }

    #[test]
    fn dropout_masks_are_a_function_of_the_seed() {
        let cfg = tiny_config();
        let mut s = spec(&["query", "intermediate.dense"], false);
        s.dropout = 0.3;
        let mut m = BertClassifier::new(cfg.clone(), &tiny_weights(&cfg), &s, 3, 0.2, 7).unwrap();
        perturb(&mut m);
        let a = m.train_step(&batch(), 11).unwrap();
        let b = m.train_step(&batch(), 11).unwrap();
        let c = m.train_step(&batch(), 12).unwrap();
        assert_eq!(a.loss, b.loss);
        assert_eq!(a.grads, b.grads);
        assert_ne!(a.loss, c.loss);
    }

    /// The masks are drawn as the candle backend draws them: per layer, per targeted
    /// module in module order, `[batch * seq, in]`, then the head's `[batch, hidden]`;
    /// while merged too (the stream does not depend on the merge state).
    #[test]
    fn dropout_masks_follow_the_module_order() {
        let cfg = tiny_config();
        let mut s = spec(&["output.dense", "query"], false);
        s.dropout = 0.5;
        let mut m = BertClassifier::new(cfg.clone(), &tiny_weights(&cfg), &s, 3, 0.25, 7).unwrap();
        perturb(&mut m);
        let seed = 21;
        for merged in [false, true] {
            if merged {
                m.merge().unwrap();
            }
            let mut src = MaskSource::new(seed, &m.encoder.device);
            m.tracked().logits(&text_batch(), Some(&mut src)).unwrap();
            let (h, i, rows) = (cfg.hidden_size, cfg.intermediate_size, 10);
            assert_eq!(src.drawn, vec![[rows, h], [rows, i], [rows, h], [rows, i], [2, h]]);
            // The stream was consumed by exactly these draws, in this order.
            let mut r = rng(seed);
            for [rows, cols] in &src.drawn[..4] {
                dropout_mask(0.5, rows * cols, &mut r);
            }
            dropout_mask(0.25, 2 * h, &mut r);
            let next: Vec<f32> = src.mask(0.5, 1, 32).unwrap().into_data().try_into_vec().unwrap();
            assert_eq!(next, dropout_mask(0.5, 32, &mut r));
        }
        // No dropout at all: nothing is drawn.
        let plain = model(&["query"]);
        let mut src = MaskSource::new(seed, &plain.encoder.device);
        plain.logits(&text_batch(), Some(&mut src)).unwrap();
        assert!(src.drawn.is_empty());
    }

    use lora_core::init::dropout_mask;

    #[test]
    fn rslora_scales_by_alpha_over_sqrt_r() {
        let cfg = tiny_config();
        let w = tiny_weights(&cfg);
        let plain = BertClassifier::new(cfg.clone(), &w, &spec(&["query"], false), 3, 0.0, 7).unwrap();
        let rs = BertClassifier::new(cfg, &w, &spec(&["query"], true), 3, 0.0, 7).unwrap();
        let scale = |m: &BertClassifier| m.encoder.layers[0].linears[0].lora().unwrap().scale;
        assert_eq!(scale(&plain), 2.0);
        assert!((scale(&rs) - 4.0 / 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn unknown_target_modules_list_the_valid_ones() {
        let cfg = tiny_config();
        let err = BertClassifier::new(cfg.clone(), &tiny_weights(&cfg), &spec(&["quary"], false), 3, 0.0, 7)
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("did you mean `query`"), "{text}");
        assert!(text.contains("intermediate.dense"), "{text}");
        let dup = BertClassifier::new(
            cfg.clone(),
            &tiny_weights(&cfg),
            &spec(&["query", "query"], false),
            3,
            0.0,
            7,
        )
        .err()
        .unwrap();
        assert!(dup.to_string().contains("listed twice"), "{dup}");
    }

    #[test]
    fn rank_above_the_layer_is_rejected_with_the_valid_range() {
        let cfg = tiny_config();
        let mut s = spec(&["query"], false);
        s.r = 9;
        let err = BertClassifier::new(cfg.clone(), &tiny_weights(&cfg), &s, 3, 0.0, 7)
            .err()
            .unwrap();
        assert!(err.to_string().contains("Valid range: 1 <= rank <= 8"), "{err}");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut m = model(&["query"]);
        let mut b = text_batch();
        b.input_ids[3] = 20;
        assert!(
            m.predict(&Batch::Text(b))
                .unwrap_err()
                .to_string()
                .contains("outside the vocabulary")
        );
        let mut b = text_batch();
        b.labels = vec![0, 3];
        assert!(m.train_step(&Batch::Text(b), 0).is_err());
    }

    #[test]
    fn weights_that_do_not_fit_the_configuration_are_errors() {
        let cfg = tiny_config();
        let mut w = tiny_weights(&cfg);
        w.insert(
            "encoder.layer.1.intermediate.dense.weight".into(),
            HostTensor::new(vec![8, 16], vec![0.0; 128]),
        );
        let err = BertClassifier::new(cfg.clone(), &w, &spec(&["query"], false), 3, 0.0, 7)
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs [16, 8]"), "{err}");
        let mut w = tiny_weights(&cfg);
        w.remove("pooler.dense.bias");
        let err = BertClassifier::new(cfg, &w, &spec(&[], false), 3, 0.0, 7)
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing weight `"), "{err}");
        // A `bert.` prefix (BertForSequenceClassification checkpoints) is found as well.
        let cfg = tiny_config();
        let prefixed: HashMap<String, HostTensor> = tiny_weights(&cfg)
            .into_iter()
            .map(|(k, v)| (format!("bert.{k}"), v))
            .collect();
        let a = BertClassifier::new(cfg.clone(), &prefixed, &spec(&["query"], false), 3, 0.0, 7).unwrap();
        let b = model(&["query"]);
        assert_eq!(a.predict(&batch()).unwrap(), b.predict(&batch()).unwrap());
    }

    fn pipeline(model: &str) -> lora_core::config::PipelineConfig {
        let text = format!(
            "[run]\nname = \"t\"\noutput-dir = \"out\"\n[data]\ntype = \"csv\"\npath = \"x.csv\"\n\
             [model]\n{model}\n[lora]\nr = 8\nalpha = 16\ntarget-modules = [\"query\"]\n[train]\n[eval]\n"
        );
        lora_core::config::PipelineConfig::parse(Path::new("p.toml"), text).unwrap()
    }

    #[test]
    fn the_model_is_registered_for_the_burn_backend_with_candles_schema() {
        let p = pipeline("type = \"bert-classifier\"\npath = \"m\"");
        let stage = lora_core::registry::build_model(&p.model, "burn").unwrap();
        assert_eq!(
            stage.resolved(),
            serde_json::json!({"type": "bert-classifier", "path": "m", "classifier-dropout": 0.1, "base-model-name": null})
        );
        let p = pipeline("type = \"bert-classifier\"\npath = \"m\"\nclassifier-dropout = 1.5");
        let err = lora_core::registry::build_model(&p.model, "burn").err().unwrap();
        assert_eq!(err.0[0].code, "model::invalid-dropout");
        let p = pipeline("type = \"bert-classifier\"\npath = \"m\"\ndropout = 0.1");
        let err = lora_core::registry::build_model(&p.model, "burn").err().unwrap();
        assert_eq!(err.0[0].code, "config::unknown-key");
    }

    #[test]
    fn ambiguous_output_dense_is_written_as_a_regex_for_peft() {
        let m = model(&["value", "output.dense"]);
        assert_eq!(
            m.peft_info().target_modules,
            serde_json::json!(r".*\.layer\.\d+\.(attention\.self\.value|output\.dense)")
        );
        assert_eq!(
            model(&["value", "query"]).peft_info().target_modules,
            serde_json::json!(["query", "value"])
        );
    }

    /// The real MiniLM of ASSETS.md, when it is in the asset cache: the golden sentence embedding.
    #[test]
    fn minilm_gives_the_golden_sentence_embedding() {
        let Some(home) = std::env::var_os("HOME") else {
            eprintln!("note: HOME is not set; skipping the MiniLM golden test");
            return;
        };
        let dir = PathBuf::from(home).join(".cache/lora-scripts/assets/all-minilm-l6-v2");
        if !dir.join("model.safetensors").exists() {
            eprintln!(
                "note: {} is missing; skipping the MiniLM golden test (run `cargo xtask fetch`)",
                dir.display()
            );
            return;
        }
        let cfg = BertConfig::from_file(&dir.join("config.json")).unwrap();
        let weights = SafetensorsWeights::open(&dir.join("model.safetensors")).unwrap();
        let m = BertClassifier::new(cfg, &weights, &spec(&["query", "value"], false), 2, 0.1, 42).unwrap();
        let ids = vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
        let text = TextBatch {
            batch_size: 1,
            seq_len: ids.len(),
            attention_mask: vec![1; ids.len()],
            input_ids: ids,
            labels: vec![],
        };
        let e = m.sentence_embeddings(&Batch::Text(text.clone())).unwrap();
        assert_eq!(e.shape, vec![1, 384]);
        let golden = [0.03324157f32, 0.00440607, -0.00627695, 0.04837872, -0.13870225];
        for (got, want) in e.data.iter().zip(golden) {
            assert!((got - want).abs() < 1e-4, "{:?} vs {golden:?}", &e.data[..5]);
        }
        // Padding does not change the embedding of the real tokens.
        let mut padded = text;
        padded.seq_len = 11;
        padded.input_ids.extend([0, 0, 0]);
        padded.attention_mask.extend([0, 0, 0]);
        let p = m.sentence_embeddings(&Batch::Text(padded)).unwrap();
        for (a, b) in p.data.iter().zip(&e.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
