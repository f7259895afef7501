//! The model stages (`[model] type = ...`), generic over the backend's
//! operations: a backend registers each with its own `TensorOps` value.

use std::path::PathBuf;

use lora_core::adapter::{AdapterModel, ModelOptions};
use lora_core::bert::ClassifierSpec;
use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::stage::{ModelStage, StageContext};
use lora_core::vit::{VitClassifierSpec, VitStart};
use lora_core::{LoraSpec, Result, Task};

use crate::ops::TensorOps;
use crate::weights::SafetensorsFile;

/// The build options the models implement on this backend.
fn check_options<O: TensorOps>(ops: &O, options: &ModelOptions) -> Result<()> {
    options.check(ops.backend(), ops.dtypes(), ops.checkpointing())
}

/// `[model] type = "bert-classifier"`.
pub struct BertStage<O: TensorOps> {
    pub spec: ClassifierSpec,
    pub ops: O,
}

impl<O: TensorOps> BertStage<O> {
    pub fn from_component(c: &Component, ops: O) -> std::result::Result<Box<dyn ModelStage>, Diagnostics> {
        Ok(Box::new(Self {
            spec: ClassifierSpec::from_component(c)?,
            ops,
        }))
    }
}

impl<O: TensorOps> ModelStage for BertStage<O> {
    fn resolved(&self) -> serde_json::Value {
        self.spec.resolved()
    }

    fn options(&self) -> ModelOptions {
        ModelOptions {
            dtype: self.spec.dtype,
            ..Default::default()
        }
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
        check_options(&self.ops, options)?;
        let num_labels = task.require_classes("bert-classifier")?;
        let (dir, cfg) = self.spec.files(ctx)?;
        let weights = SafetensorsFile::open(&dir.join("model.safetensors"))?;
        let mut model = crate::bert::build(
            self.ops.with_dtype(options.dtype)?,
            cfg,
            &weights,
            lora,
            num_labels,
            self.spec.classifier_dropout,
            ctx.seed,
        )?;
        model.checkpointing = options.gradient_checkpointing;
        Ok(Box::new(model))
    }

    fn base_model_name(&self, ctx: &StageContext) -> Result<String> {
        self.spec.base_model_name(ctx)
    }

    fn base_files(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        self.spec.base_files(ctx)
    }
}

/// `[model] type = "vit-classifier"`.
pub struct VitStage<O: TensorOps> {
    pub spec: VitClassifierSpec,
    pub ops: O,
}

impl<O: TensorOps> VitStage<O> {
    pub fn from_component(c: &Component, ops: O) -> std::result::Result<Box<dyn ModelStage>, Diagnostics> {
        Ok(Box::new(Self {
            spec: VitClassifierSpec::from_component(c)?,
            ops,
        }))
    }
}

impl<O: TensorOps> ModelStage for VitStage<O> {
    fn resolved(&self) -> serde_json::Value {
        self.spec.resolved()
    }

    fn options(&self) -> ModelOptions {
        ModelOptions {
            dtype: self.spec.dtype,
            ..Default::default()
        }
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
        check_options(&self.ops, options)?;
        let num_labels = task.require_classes("vit-classifier")?;
        let ops = self.ops.with_dtype(options.dtype)?;
        let mut model = match self.spec.start(ctx, lora)? {
            VitStart::New(cfg) => crate::vit::new_full(ops, cfg, num_labels, ctx.seed)?,
            VitStart::Saved { cfg, weights } => {
                let weights = SafetensorsFile::open(&weights)?;
                crate::vit::from_base(ops, cfg, &weights, lora, num_labels, ctx.seed)?
            }
        };
        model.checkpointing = options.gradient_checkpointing;
        Ok(Box::new(model))
    }

    fn base_model_name(&self, ctx: &StageContext) -> Result<String> {
        self.spec.base_model_name(ctx)
    }

    fn base_files(&self, ctx: &StageContext) -> Result<Vec<PathBuf>> {
        self.spec.base_files(ctx)
    }
}

/// Registers every model of this crate for one backend, so that a backend
/// crate names its operations once: `lora_nn::register_models!("candle", CandleOps);`.
#[macro_export]
macro_rules! register_models {
    ($backend:expr, $ops:expr) => {
        const _: () = {
            use $crate::__registration::{Component, Diagnostics, ModelEntry, ModelStage, inventory};

            fn bert(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
                $crate::stage::BertStage::from_component(c, $ops)
            }

            fn vit(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
                $crate::stage::VitStage::from_component(c, $ops)
            }

            inventory::submit! {
                ModelEntry {
                    backend: $backend,
                    name: "bert-classifier",
                    summary: "BERT-family encoder with LoRA and a sequence-classification head (BertForSequenceClassification layout)",
                    build: bert,
                }
            }

            fn llama(c: &Component) -> Result<Box<dyn ModelStage>, Diagnostics> {
                $crate::llama::CausalLmStage::from_component(c, $ops)
            }

            inventory::submit! {
                ModelEntry {
                    backend: $backend,
                    name: "llama-causal-lm",
                    summary: "Llama decoder (LlamaForCausalLM) from a GGUF file, its base kept quantized, with LoRA; chat and text data",
                    build: llama,
                }
            }

            inventory::submit! {
                ModelEntry {
                    backend: $backend,
                    name: "vit-classifier",
                    summary: "Vision Transformer with a classification head (ViTForImageClassification layout): full training or LoRA",
                    build: vit,
                }
            }
        };
    };
}
