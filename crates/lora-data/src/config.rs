//! The `[data]` table shared by the `csv` and `jsonl` sources, and its range checks.
//!
//! serde catches unknown keys and wrong types with a location for free; what
//! it cannot know (a fraction outside (0, 1), a length the model cannot take)
//! is checked here, every problem at once, each pointing at its value.

use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};

use crate::truncation::Truncation;

/// The longest sequence a BERT-style position table takes.
pub const MAX_LENGTH_LIMIT: usize = 512;

/// Which reader a source uses; `csv` carries its field delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Csv { delimiter: u8 },
    Jsonl,
}

impl SourceFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SourceFormat::Csv { .. } => "csv",
            SourceFormat::Jsonl => "jsonl",
        }
    }
}

/// What to do with a row whose label is not in the label map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnknownLabel {
    /// Stop with an error naming the row: a typo in a label should not silently shrink the data.
    #[default]
    Error,
    /// Drop the row: for corpora that carry classes the run deliberately leaves out.
    Skip,
}

/// The `[data]` table of a text-classification pipeline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataConfig {
    /// Training file (or the whole corpus, when `validation-path` is absent); may be `asset:NAME/...`.
    pub path: String,
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// The label map, index = class id. Absent: the sorted distinct labels of the training file.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// A separate validation file; absent: `validation-fraction` of `path` is split off.
    #[serde(default)]
    pub validation_path: Option<String>,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    #[serde(default)]
    pub max_validation_samples: Option<usize>,
    /// Truncation length in tokens, special tokens ([CLS], [SEP]) included.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// A `tokenizer.json`; absent: the model's own tokenizer.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// CSV field delimiter, one ASCII character; absent: `,`. Not accepted by `jsonl`.
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub on_unknown_label: OnUnknownLabel,
    /// Which tokens of a text longer than `max-length` are kept: `head`, `tail`, `head-tail`.
    #[serde(default)]
    pub truncation: Truncation,
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_validation_fraction() -> f64 {
    0.1
}
fn default_max_length() -> usize {
    128
}

impl DataConfig {
    /// A configuration with every default, for code that builds a source without a file.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text_column: default_text_column(),
            label_column: default_label_column(),
            labels: None,
            validation_path: None,
            validation_fraction: default_validation_fraction(),
            max_train_samples: None,
            max_validation_samples: None,
            max_length: default_max_length(),
            tokenizer: None,
            delimiter: None,
            on_unknown_label: OnUnknownLabel::Error,
            truncation: Truncation::Head,
        }
    }

    /// Range checks serde cannot make. With a component, each diagnostic points at its value.
    ///
    /// `format_name` is the source's type (`csv`, `jsonl`): it decides whether
    /// `delimiter` is meaningful. Returns the source format on success.
    pub fn validate(&self, format_name: &str, component: Option<&Component>) -> Result<SourceFormat, Diagnostics> {
        let at = |key: &str| component.and_then(|c| c.value_location(key));
        let mut diags = Diagnostics::default();
        let mut invalid = |key: &str, message: String| {
            diags.push(Diagnostic::error("data::invalid-value", message).at(at(key)));
        };

        let f = self.validation_fraction;
        // `!(0 < f < 1)` rather than `f <= 0 || f >= 1`, so that NaN is rejected too.
        if !(f > 0.0 && f < 1.0) {
            invalid(
                "validation-fraction",
                format!("validation-fraction ({f}) is outside the valid range 0 < validation-fraction < 1"),
            );
        }
        if self.max_length == 0 || self.max_length > MAX_LENGTH_LIMIT {
            invalid(
                "max-length",
                format!(
                    "max-length ({}) is outside the valid range 1 <= max-length <= {MAX_LENGTH_LIMIT}",
                    self.max_length
                ),
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
        if let Some(labels) = &self.labels {
            if labels.is_empty() {
                invalid("labels", "labels is empty; it needs at least 2 class names".into());
            } else if labels.len() == 1 {
                invalid(
                    "labels",
                    format!("labels has a single class ({:?}); it needs at least 2", labels[0]),
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            for l in labels {
                if !seen.insert(l.as_str()) {
                    invalid(
                        "labels",
                        format!("labels lists {l:?} twice; each class name must be unique"),
                    );
                }
            }
        }
        if self.text_column == self.label_column {
            invalid(
                "label-column",
                format!(
                    "text-column and label-column are both {:?}; they must differ",
                    self.text_column
                ),
            );
        }

        let format = if format_name == "jsonl" {
            if self.delimiter.is_some() {
                invalid("delimiter", "delimiter only applies to csv data, not jsonl".into());
            }
            SourceFormat::Jsonl
        } else {
            let delimiter = match self.delimiter.as_deref() {
                None => b',',
                Some(d) if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
                Some(d) => {
                    invalid(
                        "delimiter",
                        format!("delimiter ({d:?}) must be exactly one ASCII character, such as \",\" or \"\\t\""),
                    );
                    b','
                }
            };
            SourceFormat::Csv { delimiter }
        };

        if diags.has_errors() { Err(diags) } else { Ok(format) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::data_component;

    fn problems(body: &str, format: &str) -> Diagnostics {
        let c = data_component(body);
        let config: DataConfig = c.deserialize().unwrap();
        config.validate(format, Some(&c)).unwrap_err()
    }

    #[test]
    fn defaults_fill_everything_but_the_path() {
        let c = data_component("type = \"csv\"\npath = \"d.csv\"");
        let config: DataConfig = c.deserialize().unwrap();
        assert_eq!(config.text_column, "text");
        assert_eq!(config.label_column, "label");
        assert_eq!(config.validation_fraction, 0.1);
        assert_eq!(config.max_length, 128);
        assert_eq!(config.on_unknown_label, OnUnknownLabel::Error);
        assert_eq!(
            config.validate("csv", Some(&c)).unwrap(),
            SourceFormat::Csv { delimiter: b',' }
        );
        assert_eq!(config.validate("jsonl", Some(&c)).unwrap(), SourceFormat::Jsonl);
    }

    #[test]
    fn out_of_range_values_are_located_and_name_the_valid_range() {
        let d = problems(
            "type = \"csv\"\npath = \"d.csv\"\nvalidation-fraction = 1.5\nmax-length = 0\nmax-train-samples = 0\ndelimiter = \";;\"",
            "csv",
        );
        let messages: Vec<&str> = d.0.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(d.0.len(), 4, "{messages:?}");
        assert!(d.0.iter().all(|d| d.code == "data::invalid-value"));
        assert_eq!(
            messages[0],
            "validation-fraction (1.5) is outside the valid range 0 < validation-fraction < 1"
        );
        assert_eq!(
            messages[1],
            "max-length (0) is outside the valid range 1 <= max-length <= 512"
        );
        assert!(messages[2].starts_with("max-train-samples (0)"));
        assert!(messages[3].contains("exactly one ASCII character"));
        // `[data]` starts on line 5 of the fixture; each diagnostic points at its own value.
        let lines: Vec<(usize, usize)> = d.0.iter().map(|d| d.location.as_ref().unwrap().line_col()).collect();
        assert_eq!(lines, [(8, 23), (9, 14), (10, 21), (11, 13)]);
        let rendered = d.to_string();
        assert!(rendered.contains("--> pipeline.toml:8:23"), "{rendered}");
    }

    #[test]
    fn label_lists_and_format_specific_keys_are_checked() {
        let d = problems(
            "type = \"jsonl\"\npath = \"d\"\nlabels = [\"a\", \"a\"]\ndelimiter = \"\\t\"",
            "jsonl",
        );
        let messages: Vec<&str> = d.0.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "labels lists \"a\" twice; each class name must be unique",
                "delimiter only applies to csv data, not jsonl"
            ]
        );
        let d = problems(
            "type = \"csv\"\npath = \"d\"\nlabels = [\"a\"]\nmax-length = 513",
            "csv",
        );
        assert_eq!(d.0.len(), 2);
        assert!(d.0[0].message.contains("max-length (513)"));
        assert!(d.0[1].message.contains("single class"));
        let d = problems("type = \"csv\"\npath = \"d\"\nvalidation-fraction = nan", "csv");
        assert!(d.0[0].message.starts_with("validation-fraction (NaN)"));
    }

    #[test]
    fn serde_reports_unknown_keys_and_bad_enums_with_a_location() {
        let c = data_component("type = \"csv\"\npath = \"d\"\nmax-lenght = 64");
        let e = c.deserialize::<DataConfig>().unwrap_err();
        assert_eq!(e.0[0].code, "config::unknown-key");
        assert_eq!(e.0[0].help.as_deref(), Some("did you mean `max-length`?"));
        let c = data_component("type = \"csv\"\npath = \"d\"\non-unknown-label = \"ignore\"");
        let e = c.deserialize::<DataConfig>().unwrap_err();
        assert!(e.0[0].location.is_some());
        assert!(e.0[0].message.contains("skip"), "{}", e.0[0].message);
    }
}
