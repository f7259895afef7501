//! `BertForSequenceClassification` with LoRA: the encoder, a frozen pooler on
//! the first token, and a fully trained classifier saved as a module to save.
//! Parameter names are PEFT's adapter keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use lora_core::adapter::{AdapterModel, ModelSummary, ParamInfo, PeftInfo, StepOutput, check_param_values};
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::{derive_seed, kaiming_uniform, normal, rng};
use lora_core::registry::ModelEntry;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::{Batch, Error, HostTensor, LoraSpec, Result, inventory};

use super::config::BertConfig;
use super::encoder::{Encoder, Layer, MaskSource, TARGETS, mean_pool_normalised};
use crate::error::IntoCore;
use crate::lora_linear::{LoraLinear, LoraWeights};
use crate::ops::{FrozenLayerNorm, frozen_linear};
use lora_core::bert::{ClassifierSpec, check_rank, resolve_targets};

/// Key prefix of every adapter tensor: PEFT wraps the model as `base_model.model`,
/// and the sequence-classification model holds the encoder under `bert`.
const PEFT_PREFIX: &str = "base_model.model.";

/// Where the base weights come from: a name -> tensor lookup.
pub trait WeightSource {
    fn get(&self, name: &str) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
}

impl WeightSource for HashMap<String, Tensor> {
    fn get(&self, name: &str) -> Result<Tensor> {
        HashMap::get(self, name)
            .cloned()
            .ok_or_else(|| Error::Data(format!("missing weight `{name}`")))
    }
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}

/// Memory-mapped safetensors; tensors are read only when asked for.
pub struct MmapWeights {
    path: PathBuf,
    inner: candle_core::safetensors::MmapedSafetensors,
}

impl MmapWeights {
    pub fn open(path: &Path) -> Result<Self> {
        // SAFETY: the file is opened read-only and never written while mapped;
        // the asset cache is write-once (verified, then renamed into place).
        let inner = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .map_err(|e| Error::Data(format!("{}: cannot read safetensors: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }
}

impl WeightSource for MmapWeights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self
            .inner
            .load(name, &Device::Cpu)
            .map_err(|e| Error::Data(format!("{}: tensor `{name}`: {e}", self.path.display())))?;
        t.to_dtype(DType::F32).core()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.get(name).is_ok()
    }
}

pub struct BertClassifier {
    encoder: Encoder,
    pooler: (Tensor, Tensor),
    classifier_weight: Var,
    classifier_bias: Var,
    classifier_dropout: f32,
    /// Trainable variables in the order of `params`.
    vars: Vec<Var>,
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
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = |name: &str| weights.get(&format!("{prefix}{name}"));
        let targets = resolve_targets(lora)?;
        let mut init = rng(derive_seed(seed, "lora-init", 0));
        let mut vars = Vec::new();
        let mut params = Vec::new();
        let ln = |name: &str| -> Result<FrozenLayerNorm> {
            FrozenLayerNorm::new(
                &w(&format!("{name}.weight"))?,
                &w(&format!("{name}.bias"))?,
                cfg.layer_norm_eps,
            )
            .core()
        };

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let mut linears = Vec::with_capacity(6);
            for (name, path, _) in TARGETS {
                let full = format!("encoder.layer.{i}.{path}");
                let mut lin = LoraLinear::new(w(&format!("{full}.weight"))?, Some(w(&format!("{full}.bias"))?));
                if targets.contains(&name) {
                    let (out_dim, in_dim) = (lin.out_dim(), lin.in_dim());
                    let lora = &lora.for_module(&full);
                    check_rank(lora, &full, in_dim, out_dim)?;
                    let a = kaiming_uniform(in_dim, lora.r * in_dim, &mut init);
                    let a = Var::from_vec(a, (lora.r, in_dim), &Device::Cpu).core()?;
                    let b = Var::zeros((out_dim, lora.r), DType::F32, &Device::Cpu).core()?;
                    for (suffix, var, shape) in [
                        ("lora_A", &a, vec![lora.r, in_dim]),
                        ("lora_B", &b, vec![out_dim, lora.r]),
                    ] {
                        params.push(ParamInfo {
                            name: format!("{PEFT_PREFIX}bert.{full}.{suffix}.weight"),
                            shape,
                            weight_decay: true,
                        });
                        vars.push(var.clone());
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
        let encoder = Encoder {
            word_embeddings: w("embeddings.word_embeddings.weight")?,
            position_embeddings: w("embeddings.position_embeddings.weight")?,
            token_type_embeddings: w("embeddings.token_type_embeddings.weight")?,
            embedding_norm: ln("embeddings.LayerNorm")?,
            layers,
            cfg: cfg.clone(),
        };
        let pooler = (w("pooler.dense.weight")?, w("pooler.dense.bias")?);

        // Hugging Face initialises a new head with N(0, 0.02) weights and zero bias.
        let mut head_rng = rng(derive_seed(seed, "head-init", 0));
        let h = cfg.hidden_size;
        let cw = Var::from_vec(
            normal(0.02, num_labels * h, &mut head_rng),
            (num_labels, h),
            &Device::Cpu,
        )
        .core()?;
        let cb = Var::zeros(num_labels, DType::F32, &Device::Cpu).core()?;
        params.push(ParamInfo {
            name: format!("{PEFT_PREFIX}classifier.weight"),
            shape: vec![num_labels, h],
            weight_decay: true,
        });
        params.push(ParamInfo {
            name: format!("{PEFT_PREFIX}classifier.bias"),
            shape: vec![num_labels],
            weight_decay: false,
        });
        vars.push(cw.clone());
        vars.push(cb.clone());

        Ok(Self {
            encoder,
            pooler,
            classifier_weight: cw,
            classifier_bias: cb,
            classifier_dropout,
            vars,
            params,
            targets,
            num_labels,
        })
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    fn text(batch: &Batch) -> Result<&lora_core::TextBatch> {
        match batch {
            Batch::Text(t) => Ok(t),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Other("the BERT classifier takes text batches".into())),
        }
    }

    fn logits(&self, batch: &lora_core::TextBatch, mut masks: Option<&mut MaskSource>) -> candle_core::Result<Tensor> {
        let dims = (batch.batch_size, batch.seq_len);
        let hidden = self
            .encoder
            .forward(&batch.input_ids, &batch.attention_mask, dims, masks.as_deref_mut())?;
        let first = Encoder::first_token(&hidden, dims)?;
        let pooled = frozen_linear(&first, &self.pooler.0, Some(&self.pooler.1))?.tanh()?;
        let pooled = match masks {
            Some(src) => match src.mask(self.classifier_dropout, dims.0, self.encoder.cfg.hidden_size)? {
                Some(m) => (pooled * m)?,
                None => pooled,
            },
            None => pooled,
        };
        pooled
            .matmul(&self.classifier_weight.as_tensor().t()?)?
            .broadcast_add(self.classifier_bias.as_tensor())
    }

    /// Sentence embeddings: mean over real tokens, L2-normalised (sentence-transformers).
    pub fn sentence_embeddings(&self, batch: &Batch) -> Result<HostTensor> {
        let b = Self::text(batch)?;
        let dims = (b.batch_size, b.seq_len);
        let hidden = self
            .encoder
            .forward(&b.input_ids, &b.attention_mask, dims, None)
            .core()?;
        let pooled = mean_pool_normalised(&hidden, &b.attention_mask, dims).core()?;
        Ok(HostTensor::new(
            vec![b.batch_size, self.encoder.cfg.hidden_size],
            pooled.flatten_all().core()?.to_vec1().core()?,
        ))
    }

    fn for_each_linear(&mut self, mut f: impl FnMut(&mut LoraLinear) -> candle_core::Result<()>) -> Result<()> {
        for layer in &mut self.encoder.layers {
            for lin in &mut layer.linears {
                f(lin).core()?;
            }
        }
        Ok(())
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
        self.vars
            .iter()
            .map(|v| v.as_tensor().flatten_all().and_then(|t| t.to_vec1()).core())
            .collect()
    }

    fn write_params(&mut self, values: &[Vec<f32>]) -> Result<()> {
        check_param_values(&self.params, values)?;
        for ((var, info), v) in self.vars.iter().zip(&self.params).zip(values) {
            let t = Tensor::from_slice(v, info.shape.as_slice(), &Device::Cpu).core()?;
            var.set(&t).core()?;
        }
        Ok(())
    }

    fn train_step(&mut self, batch: &Batch, dropout_seed: u64) -> Result<StepOutput> {
        let b = Self::text(batch)?;
        let mut masks = MaskSource::new(dropout_seed);
        let logits = self.logits(b, Some(&mut masks)).core()?;
        let labels = Tensor::from_slice(&b.labels, b.batch_size, &Device::Cpu).core()?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).core()?;
        let grads = loss.backward().core()?;
        let mut out = Vec::with_capacity(self.vars.len());
        for (var, info) in self.vars.iter().zip(&self.params) {
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
        let b = Self::text(batch)?;
        let logits = self.logits(b, None).core()?;
        Ok(HostTensor::new(
            vec![b.batch_size, self.num_labels],
            logits.flatten_all().core()?.to_vec1().core()?,
        ))
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostTensor> {
        let b = Self::text(batch)?;
        let dims = (b.batch_size, b.seq_len);
        let hidden = self
            .encoder
            .forward(&b.input_ids, &b.attention_mask, dims, None)
            .core()?;
        Ok(HostTensor::new(
            vec![b.batch_size, b.seq_len, self.encoder.cfg.hidden_size],
            hidden.flatten_all().core()?.to_vec1().core()?,
        ))
    }

    fn merge(&mut self) -> Result<()> {
        self.for_each_linear(|l| l.merge())
    }

    fn unmerge(&mut self) -> Result<()> {
        self.for_each_linear(|l| {
            l.unmerge();
            Ok(())
        })
    }
}

/// `[model] type = "bert-classifier"` on the candle backend: the shared schema
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
        let weights = MmapWeights::open(&dir.join("model.safetensors"))?;
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

    fn build(&self, ctx: &StageContext, lora: &LoraSpec, num_labels: usize) -> Result<Box<dyn AdapterModel>> {
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
    use super::*;
    use lora_core::TextBatch;

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
    fn tiny_weights(cfg: &BertConfig) -> HashMap<String, Tensor> {
        let mut r = rng(99);
        let mut m = HashMap::new();
        let mut put = |name: String, shape: Vec<usize>, std: f32| {
            let n = shape.iter().product();
            let v = normal(std, n, &mut r);
            m.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
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
            m.insert(
                format!("{ln}.weight"),
                (Tensor::ones(h, DType::F32, &Device::Cpu).unwrap() * 1.1).unwrap(),
            );
            m.insert(
                format!("{ln}.bias"),
                (Tensor::ones(h, DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap(),
            );
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

    fn batch() -> Batch {
        Batch::Text(TextBatch {
            batch_size: 2,
            seq_len: 5,
            input_ids: vec![1, 5, 7, 9, 2, 1, 4, 2, 0, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            labels: vec![0, 2],
        })
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

    #[test]
    fn lora_model_equals_base_model_at_initialisation() {
        let with = model(&["query", "value", "intermediate.dense", "output.dense"]);
        let without = model(&[]);
        let a = with.hidden_states(&batch()).unwrap();
        let b = without.hidden_states(&batch()).unwrap();
        assert_eq!(a.data, b.data);
    }

    #[test]
    fn merged_equals_unmerged_within_1e_5() {
        let mut m = model(&[
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ]);
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
        let mut m = model(&["query", "value"]);
        perturb(&mut m);
        let Batch::Text(b) = batch() else { panic!("text batch") };
        let logits = m.logits(&b, None).unwrap();
        let labels = Tensor::from_slice(&b.labels, 2, &Device::Cpu).unwrap();
        let grads = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .backward()
            .unwrap();
        for (var, info) in m.vars.iter().zip(&m.params) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {}", info.name));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "zero gradient for {}", info.name);
        }
        let enc = &m.encoder;
        let mut base = vec![
            &enc.word_embeddings,
            &enc.position_embeddings,
            &enc.token_type_embeddings,
            &m.pooler.0,
            &m.pooler.1,
        ];
        for layer in &enc.layers {
            for lin in &layer.linears {
                base.push(lin.weight());
                base.push(lin.bias().unwrap());
            }
        }
        for t in base {
            assert!(grads.get(t).is_none(), "a frozen base tensor received a gradient");
        }
        // 2 layers x 2 modules x (A, B) + classifier weight and bias.
        assert_eq!(m.params().len(), 10);
    }

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
}
