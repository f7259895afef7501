//! The Vision Transformer (ViT) as a backend-independent specification: the
//! fields of Hugging Face's `ViTConfig`, the modules LoRA may target (named as
//! in `ViTForImageClassification`), PEFT's naming, and the `[model] type =
//! "vit-classifier"` schema, with its two modes: `full` trains every weight
//! (pretraining a base from scratch), `lora` loads a saved base frozen and
//! trains LoRA matrices and a new head.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapter::{ParamInfo, PeftInfo};
use crate::config::Component;
use crate::diag::{Diagnostic, Diagnostics};
use crate::fsutil::write_atomic;
use crate::init::{SeededRng, normal};
use crate::stage::StageContext;
use crate::{Error, ImageBatch, LoraSpec, Result};

/// The subset of Hugging Face's `ViTConfig` that shapes the model (`config.json`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Written for Hugging Face's loader; not read back.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn yes() -> bool {
    true
}
fn default_architectures() -> Vec<String> {
    vec!["ViTForImageClassification".into()]
}
fn default_model_type() -> String {
    "vit".into()
}

impl VitConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read model config", path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not a ViT config: {e}", path.display())))?;
        cfg.check()
            .map_err(|m| Error::Data(format!("{}: {m}", path.display())))?;
        Ok(cfg)
    }

    /// Shape rules the model relies on.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only `gelu`)",
                self.hidden_act
            ));
        }
        let positive = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} (0) must be at least 1"));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the patches plus the class token.
    pub fn seq_len(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Values in one flattened patch (`channels * patch * patch`).
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
}

/// The weights of a saved base (`ViTForImageClassification`'s keys).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The configuration of a saved base (`ViTConfig` plus `num_labels`).
pub const CONFIG_FILE: &str = "config.json";

/// How a base tensor of a new model starts, as Hugging Face's ViT initialises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseInit {
    /// Truncated N(0, 0.02), cut at 2 std here.
    Normal,
    Zeros,
    Ones,
}

impl BaseInit {
    /// `n` starting values; only `Normal` draws from `rng`, so every backend that
    /// builds the tensors in the same order draws the same numbers.
    pub fn values(self, n: usize, rng: &mut SeededRng) -> Vec<f32> {
        match self {
            BaseInit::Normal => normal(0.02, n, rng).into_iter().map(|v| v.clamp(-0.04, 0.04)).collect(),
            BaseInit::Zeros => vec![0.0; n],
            BaseInit::Ones => vec![1.0; n],
        }
    }
}

/// Cuts `[batch, channels, side, side]` pixels into `[batch * patches, channels * p * p]`
/// rows, each patch flattened in (channel, row, column) order, the order of a
/// `Conv2d` kernel `[hidden, channels, p, p]`; patches in row-major grid order.
pub fn patchify(pixels: &[f32], batch: usize, cfg: &VitConfig) -> Vec<f32> {
    let (c, side, p, g) = (cfg.num_channels, cfg.image_size, cfg.patch_size, cfg.grid());
    let mut out = Vec::with_capacity(pixels.len());
    for img in pixels.chunks_exact(c * side * side).take(batch) {
        for gy in 0..g {
            for gx in 0..g {
                for ch in 0..c {
                    for y in 0..p {
                        let row = (ch * side + gy * p + y) * side + gx * p;
                        out.extend_from_slice(&img[row..row + p]);
                    }
                }
            }
        }
    }
    out
}

impl VitConfig {
    /// Checks that a batch holds images this model takes, before any tensor work
    /// (a backend may panic on a bad shape).
    pub fn check_images(&self, b: &ImageBatch) -> Result<()> {
        if (b.channels, b.height, b.width) != (self.num_channels, self.image_size, self.image_size) {
            return Err(Error::Data(format!(
                "the model takes {}x{}x{} images (channels x height x width), the data gives {}x{}x{}; \
                 add a resize or crop augmentation, or change the model",
                self.num_channels, self.image_size, self.image_size, b.channels, b.height, b.width
            )));
        }
        if b.batch_size == 0 {
            return Err(Error::Data("empty batch (0 images)".into()));
        }
        let want = b.batch_size * b.image_len();
        if b.pixels.len() != want {
            return Err(Error::Data(format!(
                "batch of {} images of {}x{}x{} has {} pixel values, expected {want}",
                b.batch_size,
                b.channels,
                b.height,
                b.width,
                b.pixels.len()
            )));
        }
        Ok(())
    }
}

/// Checks a training batch's targets against the model's classes: one label per
/// image, each in range, and soft labels (when present) of `[batch, classes]`.
pub fn check_targets(b: &ImageBatch, num_labels: usize) -> Result<()> {
    match &b.soft_labels {
        Some(soft) if soft.len() != b.batch_size * num_labels => Err(Error::Data(format!(
            "soft labels hold {} values, expected {} images x {num_labels} classes",
            soft.len(),
            b.batch_size
        ))),
        Some(_) => Ok(()),
        None if b.labels.len() != b.batch_size => Err(Error::Data(format!(
            "batch of {} images has {} labels",
            b.batch_size,
            b.labels.len()
        ))),
        None => match b.labels.iter().find(|&&l| l as usize >= num_labels) {
            Some(bad) => Err(Error::Data(format!(
                "label {bad} is outside the {num_labels} classes of the model"
            ))),
            None => Ok(()),
        },
    }
}

/// Writes a full model as a base: `model.safetensors` (every tensor under its
/// Hugging Face key and shape, f32) and `config.json` (`cfg` plus `num_labels`),
/// each atomically. `infos` and `values` are a full-mode model's parameters.
pub fn write_base(
    dir: &Path,
    cfg: &VitConfig,
    num_labels: usize,
    infos: &[ParamInfo],
    values: &[Vec<f32>],
) -> Result<()> {
    if infos.len() != values.len() {
        return Err(Error::Other(format!(
            "{} parameter descriptions for {} tensors",
            infos.len(),
            values.len()
        )));
    }
    let bytes: Vec<Vec<u8>> = values
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(values.len());
    for (info, data) in infos.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, info.shape.clone(), data)
            .map_err(|e| Error::Other(format!("cannot serialise {}: {e}", info.name)))?;
        views.push((info.name.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Other(format!("cannot serialise the base: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &file)?;
    let mut json = serde_json::to_value(cfg).expect("config serialises");
    json["num_labels"] = serde_json::json!(num_labels);
    write_atomic(
        &dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&json).expect("json").as_bytes(),
    )
}

/// The modules of a layer that LoRA may target, in the order parameters follow:
/// (name in `target-modules`, path inside `vit.encoder.layer.N`, what it is).
pub const TARGETS: [(&str, &str, &str); 6] = [
    ("query", "attention.attention.query", "attention query projection"),
    ("key", "attention.attention.key", "attention key projection"),
    ("value", "attention.attention.value", "attention value projection"),
    (
        "attention.output.dense",
        "attention.output.dense",
        "attention output projection",
    ),
    ("intermediate.dense", "intermediate.dense", "MLP up projection"),
    ("output.dense", "output.dense", "MLP down projection"),
];

/// The patch embedding may be targeted too: a `Conv2d` in Hugging Face's model,
/// a linear over flattened patches here. Its adapter is saved with PEFT's Conv2d
/// shapes (`lora_A` `[r, C, p, p]`, `lora_B` `[out, r, 1, 1]`).
pub const PATCH_TARGET: (&str, &str, &str) = (
    "patch_embeddings.projection",
    "vit.embeddings.patch_embeddings.projection",
    "patch embedding (the Conv2d over patches)",
);

/// The targeted module names, checked, in the model's module order.
pub fn resolve_targets(lora: &LoraSpec) -> Result<Vec<&'static str>> {
    let valid: Vec<&'static str> = std::iter::once(PATCH_TARGET.0)
        .chain(TARGETS.iter().map(|t| t.0))
        .collect();
    crate::lora::resolve_named_targets(lora, &valid, "a ViT encoder")
}

/// PEFT's `adapter_config.json` facts for `ViTForImageClassification` with these
/// targets. PEFT has no task type for image classification (its examples pass
/// none), so `task_type` is empty and written as null.
pub fn peft_info(targets: &[&str]) -> PeftInfo {
    let ambiguous = targets.contains(&"output.dense") && !targets.contains(&"attention.output.dense");
    let target_modules = if ambiguous {
        let alts: Vec<String> = std::iter::once(&PATCH_TARGET)
            .chain(TARGETS.iter())
            .filter(|t| targets.contains(&t.0))
            .map(|t| t.1.replace('.', r"\."))
            .collect();
        serde_json::Value::String(format!(r".*\.layer\.\d+\.({})", alts.join("|")))
    } else {
        serde_json::json!(targets)
    };
    PeftInfo {
        task_type: "",
        target_modules,
        modules_to_save: vec!["classifier".into()],
    }
}

/// What trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VitMode {
    /// The base is frozen; LoRA matrices (from `[lora]`) and a new head train.
    #[default]
    Lora,
    /// Every weight trains (pretraining); `[lora]` must target nothing. The run
    /// saves a full base (`config.json`, `model.safetensors`) to its output folder.
    Full,
}

/// What [`VitClassifierSpec::start`] says a model starts from.
#[derive(Debug, Clone)]
pub enum VitStart {
    /// A new model of this architecture, weights drawn from the seed.
    New(VitConfig),
    /// A saved base: its configuration and its `model.safetensors`.
    Saved { cfg: VitConfig, weights: PathBuf },
}

/// `[model] type = "vit-classifier"`: the schema every backend shares.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VitClassifierSpec {
    #[serde(default)]
    pub mode: VitMode,
    /// A folder with `config.json` and `model.safetensors` (a pretraining run's
    /// output folder). Absent: a new model from the architecture keys (full mode only).
    pub path: Option<String>,
    /// Architecture of a new model; each must be absent when `path` is given.
    pub image_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub channels: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub mlp_size: Option<usize>,
    /// `base_model_name_or_path` in `adapter_config.json`; defaults to the resolved path.
    pub base_model_name: Option<String>,
    /// The type of the frozen base weights and of the compute (`f32`; `bf16` and `f16` to come).
    #[serde(default)]
    pub dtype: crate::adapter::DType,
}

const ARCH_KEYS: [&str; 7] = [
    "image-size",
    "patch-size",
    "channels",
    "hidden-size",
    "layers",
    "heads",
    "mlp-size",
];

impl VitClassifierSpec {
    fn arch_values(&self) -> [Option<usize>; 7] {
        [
            self.image_size,
            self.patch_size,
            self.channels,
            self.hidden_size,
            self.layers,
            self.heads,
            self.mlp_size,
        ]
    }

    /// Deserializes and checks the `[model]` table, every problem at once.
    pub fn from_component(c: &Component) -> Result<Self, Diagnostics> {
        let spec: Self = c.deserialize()?;
        let mut diags = Diagnostics::default();
        let values = spec.arch_values();
        match &spec.path {
            Some(_) => {
                for (key, v) in ARCH_KEYS.iter().zip(values) {
                    if v.is_some() {
                        diags.push(
                            Diagnostic::error(
                                "model::conflicting-keys",
                                format!("`{key}` cannot be set together with `path`: the architecture comes from the base's config.json"),
                            )
                            .at(c.value_location(key)),
                        );
                    }
                }
            }
            None => {
                if spec.mode == VitMode::Lora {
                    diags.push(
                        Diagnostic::error(
                            "model::missing-key",
                            "mode = \"lora\" needs `path`, a pretrained base to adapt",
                        )
                        .at(Some(c.location()))
                        .help("set `path` to a pretraining run's output folder, or use mode = \"full\""),
                    );
                }
                let missing: Vec<&str> = ARCH_KEYS
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                if !missing.is_empty() && spec.mode == VitMode::Full {
                    diags.push(
                        Diagnostic::error(
                            "model::missing-key",
                            format!("a new ViT needs its architecture; missing: {}", missing.join(", ")),
                        )
                        .at(Some(c.location())),
                    );
                } else if missing.is_empty()
                    && let Err(m) = spec.new_config().expect("all keys present").check()
                {
                    diags.push(Diagnostic::error("model::invalid-value", m).at(Some(c.location())));
                }
            }
        }
        if diags.has_errors() { Err(diags) } else { Ok(spec) }
    }

    /// The configuration of a new model from the architecture keys, if all are set.
    pub fn new_config(&self) -> Option<VitConfig> {
        Some(VitConfig {
            image_size: self.image_size?,
            patch_size: self.patch_size?,
            num_channels: self.channels?,
            hidden_size: self.hidden_size?,
            num_hidden_layers: self.layers?,
            num_attention_heads: self.heads?,
            intermediate_size: self.mlp_size?,
            hidden_act: default_act(),
            layer_norm_eps: default_eps(),
            qkv_bias: true,
            architectures: default_architectures(),
            model_type: default_model_type(),
        })
    }

    /// What a backend's model starts from, once the LoRA spec is checked
    /// against the mode: a new model (full mode) or a saved base (LoRA mode).
    pub fn start(&self, ctx: &StageContext, lora: &LoraSpec) -> Result<VitStart> {
        self.check_lora(lora)?;
        match (self.mode, &self.path) {
            (VitMode::Full, None) => {
                Ok(VitStart::New(self.new_config().ok_or_else(|| {
                    Error::Other("a new ViT needs its architecture keys".into())
                })?))
            }
            (VitMode::Lora, Some(p)) => {
                let dir = ctx.assets.resolve(p)?;
                Ok(VitStart::Saved {
                    cfg: VitConfig::from_file(&dir.join(CONFIG_FILE))?,
                    weights: dir.join(WEIGHTS_FILE),
                })
            }
            (VitMode::Full, Some(_)) => Err(Error::Other(
                "continuing full training from a saved base is not supported yet; use mode = \"lora\"".into(),
            )),
            (VitMode::Lora, None) => Err(Error::Other("mode = \"lora\" needs `path`".into())),
        }
    }

    /// Checks the LoRA spec against the mode: full training targets nothing.
    pub fn check_lora(&self, lora: &LoraSpec) -> Result<Vec<&'static str>> {
        let targets = resolve_targets(lora)?;
        if self.mode == VitMode::Full && !targets.is_empty() {
            return Err(Error::Invalid(
                Diagnostic::error(
                    "lora::targets-in-full-mode",
                    "mode = \"full\" trains every weight; LoRA target-modules must be empty",
                )
                .at(lora.target_modules_location.clone())
                .help("set target-modules = [] in [lora], or mode = \"lora\" in [model]")
                .into(),
            ));
        }
        Ok(targets)
    }

    /// The saved base's configuration and weights (none for a model trained from scratch).
    pub fn base_files(&self, ctx: &StageContext) -> Result<Vec<std::path::PathBuf>> {
        match &self.path {
            Some(p) => {
                let dir = ctx.assets.resolve(p)?;
                Ok(vec![dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)])
            }
            None => Ok(Vec::new()),
        }
    }

    pub fn base_model_name(&self, ctx: &StageContext) -> Result<String> {
        match (&self.base_model_name, &self.path) {
            (Some(n), _) => Ok(n.clone()),
            (None, Some(p)) => Ok(ctx.assets.resolve(p)?.display().to_string()),
            (None, None) => Ok("vit-from-scratch".into()),
        }
    }

    /// The table with every default filled in, `type` first.
    pub fn resolved(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "type": "vit-classifier" });
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            v.as_object_mut().expect("object").extend(fields);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;

    fn model(body: &str) -> Component {
        let text = format!(
            "[run]\nname = \"t\"\noutput-dir = \"o\"\n[data]\ntype = \"idx\"\n[model]\ntype = \"vit-classifier\"\n{body}\n[lora]\nr = 4\nalpha = 4\ntarget-modules = []\n[train]\n[eval]\n"
        );
        PipelineConfig::parse(Path::new("p.toml"), text).unwrap().model
    }

    const ARCH: &str = "mode = \"full\"\nimage-size = 28\npatch-size = 7\nchannels = 1\nhidden-size = 64\nlayers = 2\nheads = 4\nmlp-size = 128";

    #[test]
    fn a_new_model_needs_every_architecture_key_and_consistent_shapes() {
        let spec = VitClassifierSpec::from_component(&model(ARCH)).unwrap();
        let cfg = spec.new_config().unwrap();
        assert_eq!(
            (cfg.grid(), cfg.seq_len(), cfg.patch_dim(), cfg.head_dim()),
            (4, 17, 49, 16)
        );
        let e = VitClassifierSpec::from_component(&model("mode = \"full\"\nimage-size = 28")).unwrap_err();
        assert!(
            e.0[0].message.contains("missing: patch-size, channels"),
            "{}",
            e.0[0].message
        );
        let e =
            VitClassifierSpec::from_component(&model(&ARCH.replace("patch-size = 7", "patch-size = 5"))).unwrap_err();
        assert_eq!(e.0[0].message, "image_size 28 is not a multiple of patch_size 5");
        let e = VitClassifierSpec::from_component(&model("path = \"base\"\nlayers = 3")).unwrap_err();
        assert_eq!(e.0[0].code, "model::conflicting-keys");
        assert_eq!(e.0[0].location.as_ref().unwrap().line_col().0, 9);
        let e = VitClassifierSpec::from_component(&model("")).unwrap_err();
        assert!(e.0[0].message.contains("needs `path`"));
    }

    #[test]
    fn full_mode_refuses_lora_targets_and_names_follow_hugging_face() {
        let spec = VitClassifierSpec::from_component(&model(ARCH)).unwrap();
        let mut lora = LoraSpec {
            r: 4,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec![],
            use_rslora: false,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            layers_to_transform: None,
            target_modules_location: None,
            patterns_location: None,
        };
        assert!(spec.check_lora(&lora).unwrap().is_empty());
        lora.target_modules = vec!["value".into(), "query".into()];
        assert!(spec.check_lora(&lora).is_err());
        assert_eq!(resolve_targets(&lora).unwrap(), ["query", "value"]);
        lora.target_modules = vec!["qkv".into()];
        let Err(Error::Invalid(d)) = resolve_targets(&lora) else {
            panic!()
        };
        assert!(d.0[0].message.contains("for a ViT encoder"));
        assert_eq!(
            peft_info(&["query", "value"]).target_modules,
            serde_json::json!(["query", "value"])
        );
        assert_eq!(
            peft_info(&["output.dense"]).target_modules,
            serde_json::json!(r".*\.layer\.\d+\.(output\.dense)")
        );
    }

    #[test]
    fn patches_follow_the_conv_kernel_order() {
        let cfg = VitConfig {
            image_size: 4,
            patch_size: 2,
            num_channels: 2,
            hidden_size: 4,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            intermediate_size: 4,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            qkv_bias: true,
            architectures: vec![],
            model_type: "vit".into(),
        };
        // Channel 0 holds 0..16 row-major, channel 1 holds 100..116.
        let px: Vec<f32> = (0..16)
            .map(|v| v as f32)
            .chain((0..16).map(|v| 100.0 + v as f32))
            .collect();
        let rows = patchify(&px, 1, &cfg);
        assert_eq!(rows.len(), 32);
        // Patch (0, 0): channel 0 rows [0 1] [4 5], then channel 1 [100 101] [104 105].
        assert_eq!(&rows[..8], [0., 1., 4., 5., 100., 101., 104., 105.]);
        // Patch (0, 1): columns 2..4.
        assert_eq!(&rows[8..12], [2., 3., 6., 7.]);
        // Patch (1, 0): rows 2..4.
        assert_eq!(&rows[16..20], [8., 9., 12., 13.]);
    }
}
