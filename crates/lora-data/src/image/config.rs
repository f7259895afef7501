//! The `[data]` table of the image sources (`idx`, `mnist-json`, `image-folder`,
//! `digits-csv`), and its range checks.

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};

/// What to do with an image that cannot be decoded or holds invalid values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCorrupt {
    /// Stop with an error naming the file.
    #[default]
    Error,
    /// Leave the image out, warn, and count it.
    Skip,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageDataConfig {
    /// `idx`: the images file; `mnist-json`: the folder of `0.json` .. `9.json`;
    /// `image-folder`: the folder of class folders; `digits-csv`: the CSV. May be `asset:NAME/...`.
    pub path: String,
    /// `idx` only: the labels file that goes with `path`.
    #[serde(default)]
    pub labels_path: Option<String>,
    /// A separate validation (test) set, in the same format; absent: `validation-fraction` of `path`.
    #[serde(default)]
    pub validation_path: Option<String>,
    #[serde(default)]
    pub validation_labels_path: Option<String>,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    #[serde(default)]
    pub max_validation_samples: Option<usize>,
    /// Class names, index = class id; absent: the class ids as text (`"0"` .. `"9"`).
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    #[serde(default)]
    pub on_corrupt: OnCorrupt,
    /// `image-folder` only: 1 (luma) or 3 (RGB, the default).
    #[serde(default)]
    pub channels: Option<usize>,
    /// `image-folder` only: `[height, width]` every image is resized to; absent: all must match the first.
    #[serde(default)]
    pub image_size: Option<[usize; 2]>,
    /// Batches prepared ahead of the trainer by the loader thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
}

fn default_validation_fraction() -> f64 {
    0.1
}
fn default_prefetch() -> usize {
    4
}

impl ImageDataConfig {
    /// Range checks serde cannot make, every problem at once, each at its value.
    pub fn validate(&self, source: &str, component: Option<&Component>) -> Result<(), Diagnostics> {
        let at = |key: &str| component.and_then(|c| c.value_location(key));
        let mut diags = Diagnostics::default();
        let mut invalid = |key: &str, message: String| {
            diags.push(Diagnostic::error("data::invalid-value", message).at(at(key)));
        };
        let f = self.validation_fraction;
        if !(f > 0.0 && f < 1.0) {
            invalid(
                "validation-fraction",
                format!("validation-fraction ({f}) is outside the valid range 0 < validation-fraction < 1"),
            );
        }
        for (key, value) in [
            ("max-train-samples", self.max_train_samples),
            ("max-validation-samples", self.max_validation_samples),
        ] {
            if value == Some(0) {
                invalid(key, format!("{key} (0) is outside the valid range {key} >= 1"));
            }
        }
        if self.prefetch == 0 {
            invalid(
                "prefetch",
                "prefetch (0) is outside the valid range prefetch >= 1".into(),
            );
        }
        let idx = source == "idx";
        if idx && self.labels_path.is_none() {
            invalid(
                "path",
                "an `idx` source needs `labels-path`, the labels file of `path`".into(),
            );
        }
        if idx && self.validation_path.is_some() != self.validation_labels_path.is_some() {
            invalid(
                "validation-path",
                "`validation-path` and `validation-labels-path` go together".into(),
            );
        }
        if !idx {
            for key in ["labels-path", "validation-labels-path"] {
                let set = match key {
                    "labels-path" => self.labels_path.is_some(),
                    _ => self.validation_labels_path.is_some(),
                };
                if set {
                    invalid(key, format!("{key} only applies to `idx` data, not `{source}`"));
                }
            }
        }
        if source == "image-folder" {
            if let Some(c) = self.channels
                && c != 1
                && c != 3
            {
                invalid("channels", format!("channels ({c}) must be 1 (luma) or 3 (RGB)"));
            }
            if let Some([h, w]) = self.image_size
                && (h == 0 || w == 0)
            {
                invalid("image-size", format!("image-size ([{h}, {w}]) must be at least [1, 1]"));
            }
        } else {
            for (key, set) in [
                ("channels", self.channels.is_some()),
                ("image-size", self.image_size.is_some()),
            ] {
                if set {
                    invalid(
                        key,
                        format!("{key} only applies to `image-folder` data, not `{source}`; use a resize augmentation"),
                    );
                }
            }
        }
        if diags.has_errors() { Err(diags) } else { Ok(()) }
    }
}
