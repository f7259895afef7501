//! The image data stage: read a source, split, cap, and wrap the splits in
//! augmenting datasets.

use std::path::PathBuf;
use std::sync::Arc;

use lora_core::config::Component;
use lora_core::diag::Diagnostics;
use lora_core::init::derive_seed;
use lora_core::stage::{DataStage, InputEncoder, PreparedData, StageContext};
use lora_core::{Error, Result};

use super::config::ImageDataConfig;
use super::dataset::ImageDataset;
use super::digits_csv::read_digits_csv;
use super::encode::ImageFileEncoder;
use super::folder::read_folder;
use super::idx::read_idx_pair;
use super::mnist_json::read_mnist_json;
use super::store::ImageSet;
use crate::augment::AugmentPipeline;
use crate::split;

/// Which reader a source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Idx,
    MnistJson,
    ImageFolder,
    DigitsCsv,
}

impl ImageFormat {
    pub fn name(&self) -> &'static str {
        match self {
            ImageFormat::Idx => "idx",
            ImageFormat::MnistJson => "mnist-json",
            ImageFormat::ImageFolder => "image-folder",
            ImageFormat::DigitsCsv => "digits-csv",
        }
    }
}

pub struct ImageData {
    pub config: ImageDataConfig,
    pub format: ImageFormat,
    train_ops: Arc<AugmentPipeline>,
    eval_ops: Arc<AugmentPipeline>,
}

impl ImageData {
    pub fn from_component(c: &Component, format: ImageFormat) -> Result<Self, Diagnostics> {
        let c = c.clone().with_nested(&["augment", "eval-augment"]);
        let config: ImageDataConfig = c.deserialize()?;
        let mut diags = Diagnostics::default();
        if let Err(d) = config.validate(format.name(), Some(&c)) {
            diags.0.extend(d.0);
        }
        let mut pipeline = |key: &str| match c
            .array_components(key)
            .and_then(|cs| AugmentPipeline::from_components(&cs))
        {
            Ok(p) => Some(p),
            Err(d) => {
                diags.0.extend(d.0);
                None
            }
        };
        let train_ops = pipeline("augment");
        let eval_ops = pipeline("eval-augment");
        for (key, ops) in [("augment", &train_ops), ("eval-augment", &eval_ops)] {
            if let Some(ops) = ops
                && ops.has_text_ops()
            {
                diags.push(
                    lora_core::diag::Diagnostic::error(
                        "data::wrong-augmentation",
                        format!(
                            "[[data.{key}]] of image data lists text operations ({})",
                            ops.names().join(", ")
                        ),
                    )
                    .at(c.value_location(key)),
                );
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Self {
            config,
            format,
            train_ops: Arc::new(train_ops.expect("no errors")),
            eval_ops: Arc::new(eval_ops.expect("no errors")),
        })
    }

    /// A source built in code, for tests and tools.
    pub fn new(
        config: ImageDataConfig,
        format: ImageFormat,
        train_ops: AugmentPipeline,
        eval_ops: AugmentPipeline,
    ) -> Self {
        Self {
            config,
            format,
            train_ops: Arc::new(train_ops),
            eval_ops: Arc::new(eval_ops),
        }
    }

    /// One file or folder of the source, and the class names it carries (image folders).
    fn read(&self, ctx: &StageContext, path: &str, labels: Option<&String>) -> Result<(ImageSet, Option<Vec<String>>)> {
        let path: PathBuf = ctx.assets.resolve(path)?;
        let warn = |skipped: usize| {
            if skipped > 0 {
                eprintln!(
                    "warning: {}: skipped {skipped} corrupt image(s) (on-corrupt = \"skip\")",
                    path.display()
                );
            }
        };
        let on_corrupt = self.config.on_corrupt;
        match self.format {
            ImageFormat::Idx => {
                let labels = labels.ok_or_else(|| Error::Other("an idx source needs a labels file".into()))?;
                Ok((read_idx_pair(&path, &ctx.assets.resolve(labels)?)?, None))
            }
            ImageFormat::MnistJson => {
                let (set, skipped) = read_mnist_json(&path, on_corrupt)?;
                warn(skipped);
                Ok((set, None))
            }
            ImageFormat::DigitsCsv => {
                let (set, skipped) = read_digits_csv(&path, on_corrupt)?;
                warn(skipped);
                Ok((set, None))
            }
            ImageFormat::ImageFolder => {
                let channels = self.config.channels.unwrap_or(3);
                let (set, names, skipped) = read_folder(&path, channels, self.config.image_size, on_corrupt)?;
                warn(skipped);
                Ok((set, Some(names)))
            }
        }
    }

    /// Reads, splits and caps; returns `(train, validation, label names)`.
    pub fn load_sets(&self, ctx: &StageContext) -> Result<(ImageSet, ImageSet, Vec<String>)> {
        let cfg = &self.config;
        let (all, folder_names) = self.read(ctx, &cfg.path, cfg.labels_path.as_ref())?;
        if all.is_empty() {
            return Err(Error::Data(format!("{}: no images", cfg.path)));
        }
        let num_classes = all.labels.iter().max().map_or(0, |m| *m as usize + 1);
        let names = match &cfg.label_names {
            Some(n) if n.len() < num_classes => {
                return Err(Error::Data(format!(
                    "label-names has {} names but the data has class ids up to {}",
                    n.len(),
                    num_classes - 1
                )));
            }
            Some(n) => n.clone(),
            None => folder_names
                .clone()
                .unwrap_or_else(|| (0..num_classes).map(|i| i.to_string()).collect()),
        };
        let (train, validation) = match &cfg.validation_path {
            Some(v) => {
                let (validation, validation_names) = self.read(ctx, v, cfg.validation_labels_path.as_ref())?;
                if let (Some(a), Some(b)) = (&folder_names, &validation_names)
                    && a != b
                {
                    return Err(Error::Data(format!(
                        "{v}: class folders {b:?} differ from the training folders {a:?}"
                    )));
                }
                if let Some(bad) = validation.labels.iter().find(|&&l| l as usize >= names.len()) {
                    return Err(Error::Data(format!("{v}: class id {bad} has no name")));
                }
                let keep = |set: &ImageSet, max, purpose| {
                    let idx = split::sample((0..set.len()).collect(), max, derive_seed(ctx.seed, purpose, 0));
                    set.select(&idx)
                };
                (
                    keep(&all, cfg.max_train_samples, "sample-train"),
                    keep(&validation, cfg.max_validation_samples, "sample-validation"),
                )
            }
            None => {
                let (train, validation) = split::split_off_validation(
                    (0..all.len()).collect(),
                    cfg.validation_fraction,
                    derive_seed(ctx.seed, "split", 0),
                );
                (
                    all.select(&split::truncate(train, cfg.max_train_samples)),
                    all.select(&split::truncate(validation, cfg.max_validation_samples)),
                )
            }
        };
        if train.is_empty() {
            return Err(Error::Data(format!("{}: the training split is empty", cfg.path)));
        }
        Ok((train, validation, names))
    }
}

impl DataStage for ImageData {
    fn prepare(&self, ctx: &StageContext) -> Result<PreparedData> {
        let (train, validation, names) = self.load_sets(ctx)?;
        let (channels, height, width) = (train.channels, train.height, train.width);
        let n = names.len();
        let p = self.config.prefetch;
        Ok(PreparedData {
            train: Box::new(ImageDataset::new(
                train,
                self.train_ops.clone(),
                self.eval_ops.clone(),
                n,
                p,
            )),
            validation: Box::new(ImageDataset::new(
                validation,
                self.eval_ops.clone(),
                self.eval_ops.clone(),
                n,
                p,
            )),
            task: lora_core::Task::classification(names),
            encoder: Box::new(ImageFileEncoder::new(channels, height, width, self.eval_ops.clone())),
        })
    }

    fn encoder(&self, ctx: &StageContext) -> Result<Box<dyn InputEncoder>> {
        // The training images fix the shape every predicted file is brought to.
        let (set, _) = self.read(ctx, &self.config.path, self.config.labels_path.as_ref())?;
        Ok(Box::new(ImageFileEncoder::new(
            set.channels,
            set.height,
            set.width,
            self.eval_ops.clone(),
        )))
    }

    fn resolved(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "type": self.format.name() });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.config) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v["augment"] = serde_json::json!(self.train_ops.names());
        v["eval-augment"] = serde_json::json!(self.eval_ops.names());
        v
    }
}
