//! The contract of validation rules: the registry entry, what a rule sees
//! (the spanned document and facts about the model, the data and the machine)
//! and what it reports. The engine and the built-in rules live in
//! `lora-validate`; backends and plugins register rules of their own here.

use std::collections::BTreeMap;

use crate::diag::{Location, Severity};
use crate::doc::{ConfigDoc, Node};

/// What a rule is about, for listing and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// The shape of the file: syntax, unknown keys, types, layering.
    Structure,
    /// The range of one numeric or string field.
    Range,
    /// Constraints between fields.
    Cross,
    /// Checks against the base model's files (header and config, never the weights).
    Model,
    /// Checks against the data files.
    Data,
    /// Checks against the machine (memory, cores, time).
    Resource,
    /// Checks against the chosen backend.
    Backend,
    /// Rules a dynamic plugin registered.
    Plugin,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Structure,
        Category::Range,
        Category::Cross,
        Category::Model,
        Category::Data,
        Category::Resource,
        Category::Backend,
        Category::Plugin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Structure => "structure",
            Category::Range => "range",
            Category::Cross => "cross-field",
            Category::Model => "model",
            Category::Data => "data",
            Category::Resource => "resource",
            Category::Backend => "backend",
            Category::Plugin => "plugin",
        }
    }
}

/// A change to the reference pipeline (`configs/sentiment-minilm.toml`) that trips a rule.
///
/// Every rule carries one, so that a test can show that the rule fires on it and
/// stays silent without it; `docs/RULES.md` prints it as the example.
#[derive(Debug, Clone, Copy)]
pub enum Edit {
    /// A `--set path=value` override. `{fixtures}` stands for the test fixtures folder.
    Set(&'static str),
    /// Replace the first occurrence of the text in the pipeline file.
    Replace(&'static str, &'static str),
    /// Set an environment variable while composing (`LORA__...`, `OVERRIDE_LR`).
    Env(&'static str, &'static str),
    /// Start from this pipeline (relative to the repository root) instead of the reference.
    Base(&'static str),
}

/// What a rule found: its own id and severity are added by the engine.
#[derive(Debug, Clone)]
pub struct Finding {
    pub message: String,
    pub location: Option<Location>,
    pub help: Option<String>,
}

impl Finding {
    pub fn new(message: impl Into<String>, location: Option<Location>) -> Self {
        Self {
            message: message.into(),
            location,
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A rule's check: a function for built-in rules, a closure for rules loaded from a plugin.
pub type Check = &'static (dyn Fn(&RuleContext) -> Vec<Finding> + Send + Sync);

/// A registered validation rule.
pub struct RuleEntry {
    /// Stable id, `section::what`, shown in diagnostics and `lora rules`.
    pub id: &'static str,
    /// Where the rule comes from: `built in`, or a plugin library's path.
    pub origin: &'static str,
    pub category: Category,
    pub severity: Severity,
    /// One line, shown by `lora rules`.
    pub summary: &'static str,
    /// A paragraph: why it matters and how to fix it (`docs/RULES.md`).
    pub doc: &'static str,
    /// `None` for structural rules that the loader reports itself (syntax, unknown keys, ...).
    pub check: Option<Check>,
    /// Edits of the reference pipeline that trip the rule.
    pub trip: &'static [Edit],
}

inventory::collect!(RuleEntry);

/// Rules registered at run time by dynamic plugins; never removed (libraries stay loaded).
static DYNAMIC: std::sync::Mutex<Vec<&'static RuleEntry>> = std::sync::Mutex::new(Vec::new());

/// Adds a rule at run time (a dynamic plugin's). The entry is leaked: it lives as long as its library.
pub fn register_dynamic(entry: RuleEntry) -> &'static RuleEntry {
    let entry: &'static RuleEntry = Box::leak(Box::new(entry));
    DYNAMIC.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    entry
}

/// Every registered rule, built in and loaded, sorted by id.
pub fn rules() -> Vec<&'static RuleEntry> {
    let mut v: Vec<&'static RuleEntry> = inventory::iter::<RuleEntry>.into_iter().collect();
    v.extend(DYNAMIC.lock().unwrap_or_else(|e| e.into_inner()).iter().copied());
    v.sort_by_key(|r| r.id);
    v
}

/// Facts about the base model, read from its config and the weight file's header.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Every tensor of the weight file: name -> (dtype, shape).
    pub tensors: BTreeMap<String, (String, Vec<usize>)>,
    /// Size of the weight file in bytes.
    pub weight_bytes: u64,
    /// The targetable modules: name -> every (layer tensor, in, out) it covers.
    pub targets: BTreeMap<String, Vec<(String, usize, usize)>>,
    /// `config.json` fields that disagree with the header (field, config value, header value).
    pub inconsistencies: Vec<(String, usize, usize)>,
    /// The `hidden_act` of the config.
    pub activation: String,
    /// The base's own dropout probabilities in the config (`hidden_dropout_prob`,
    /// `attention_probs_dropout_prob`), as written; absent ones are not listed.
    pub base_dropout: Vec<(String, f64)>,
    /// The model's own tokenizer file exists.
    pub has_tokenizer: bool,
    /// Total parameters of the base.
    pub parameters: usize,
}

/// Facts about one split of the data.
#[derive(Debug, Clone, Default)]
pub struct SplitFacts {
    pub rows: usize,
    /// Rows per class, index = class id.
    pub label_counts: Vec<usize>,
}

/// Facts about the data, from reading the files and tokenizing a sample.
#[derive(Debug, Clone, Default)]
pub struct DataFacts {
    /// Why the rows could not be read (missing column, bad row, ...); the counts below are then empty.
    pub read_error: Option<String>,
    /// Why the tokenizer could not be loaded; the token figures below are then absent.
    pub tokenizer_error: Option<String>,
    pub label_names: Vec<String>,
    /// Rows of the training file, before the split and the caps.
    pub file_rows: usize,
    /// Rows of the validation file, when there is one.
    pub validation_file_rows: Option<usize>,
    pub train: SplitFacts,
    pub validation: SplitFacts,
    /// Rows whose label is not in the label map: (count, first line number, label).
    pub unknown_labels: Option<(usize, usize, String)>,
    /// Distinct raw labels in the training file.
    pub distinct_raw_labels: Vec<String>,
    /// Texts that parse as numbers.
    pub numeric_texts: usize,
    /// Texts with U+FFFD (bytes that were not UTF-8).
    pub replacement_texts: usize,
    /// Training texts that also appear in the validation split.
    pub shared_texts: usize,
    /// Training rows whose text repeats an earlier training row.
    pub duplicate_train_texts: usize,
    /// Token lengths (special tokens included) of a sample, untruncated: p50, p90, p99, max.
    pub token_length_percentiles: Option<[usize; 4]>,
    pub token_sample: usize,
    /// Share of the sample longer than max-length.
    pub truncated_share: f64,
    /// Vocabulary size of the tokenizer the data uses.
    pub tokenizer_vocab: Option<usize>,
    /// Column names of a csv file's header.
    pub header: Vec<String>,
    /// The header of a csv file, when it has a single column (a likely wrong delimiter).
    pub single_column_header: Option<String>,
}

/// Facts about the machine.
#[derive(Debug, Clone, Default)]
pub struct MachineFacts {
    pub cores: usize,
    pub total_memory_bytes: Option<u64>,
    pub available_memory_bytes: Option<u64>,
    /// GPUs seen by the driver, by name.
    pub gpus: Vec<String>,
}

/// Everything rules may look at besides the document.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub model: Option<ModelFacts>,
    /// Why model facts are missing, when they are.
    pub model_error: Option<String>,
    pub data: Option<DataFacts>,
    pub data_error: Option<String>,
    pub machine: MachineFacts,
    /// Backends compiled into this binary.
    pub backends: Vec<String>,
    /// Model types per backend: (backend, type).
    pub model_types: Vec<(String, String)>,
    /// Pinned asset names, and whether each is in the local cache.
    pub assets: Vec<(String, bool)>,
    /// Path-valued keys (`data.path`, `model.path`, ...) resolved to local paths,
    /// or why they could not be (an unknown asset, say).
    pub paths: BTreeMap<String, std::result::Result<std::path::PathBuf, String>>,
}

impl Facts {
    /// The resolved local path of a path-valued key, when it resolved.
    pub fn path(&self, key: &str) -> Option<&std::path::Path> {
        self.paths.get(key)?.as_ref().ok().map(|p| p.as_path())
    }
}

/// What a rule's check sees.
pub struct RuleContext<'a> {
    pub doc: &'a ConfigDoc,
    pub facts: &'a Facts,
}

/// A value read from the document with its location.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub location: Location,
}

impl<'a> RuleContext<'a> {
    pub fn node(&self, path: &str) -> Option<&'a Node> {
        self.doc.get(path)
    }

    pub fn location(&self, path: &str) -> Option<Location> {
        self.node(path).map(|n| n.location.clone())
    }

    pub fn int(&self, path: &str) -> Option<At<i64>> {
        let n = self.node(path)?;
        Some(At {
            value: n.as_int()?,
            location: n.location.clone(),
        })
    }

    pub fn float(&self, path: &str) -> Option<At<f64>> {
        let n = self.node(path)?;
        Some(At {
            value: n.as_float()?,
            location: n.location.clone(),
        })
    }

    pub fn string(&self, path: &str) -> Option<At<&'a str>> {
        let n = self.node(path)?;
        Some(At {
            value: n.as_str()?,
            location: n.location.clone(),
        })
    }

    pub fn bool(&self, path: &str) -> Option<bool> {
        self.node(path)?.as_bool()
    }

    /// A list of strings; `None` when absent or not a list of strings.
    pub fn strings(&self, path: &str) -> Option<At<Vec<&'a str>>> {
        let n = self.node(path)?;
        let v: Option<Vec<&str>> = n.as_array()?.iter().map(Node::as_str).collect();
        Some(At {
            value: v?,
            location: n.location.clone(),
        })
    }

    /// The `type` of a pluggable table, with the pipeline's defaults for tables that have one.
    pub fn type_of(&self, table: &str) -> Option<&'a str> {
        let default = match table {
            "train" => Some("supervised"),
            "eval" => Some("classification"),
            _ => None,
        };
        match self.node(table) {
            Some(n) => n.get("type").and_then(Node::as_str).or(default),
            None => None,
        }
    }

    /// A non-negative integer field, or its default when absent (or not an integer).
    pub fn count_or(&self, path: &str, default: usize) -> usize {
        match self.int(path) {
            Some(At { value, .. }) if value >= 0 => value as usize,
            Some(_) => default,
            None => default,
        }
    }

    /// The training plan implied by the configuration and the data, when the data is known.
    pub fn plan(&self) -> Option<TrainPlan> {
        let data = self.facts.data.as_ref()?;
        if data.read_error.is_some() || data.train.rows == 0 || self.type_of("train") != Some("supervised") {
            return None;
        }
        // With batch-size = "auto" the micro-batch is not known yet; the step
        // counts depend on the effective batch, planned as one micro-batch.
        let auto = self.string("train.batch-size").is_some_and(|b| b.value == "auto");
        let (batch, accumulation) = if auto {
            (self.count_or("train.effective-batch-size", 32).max(1), 1)
        } else {
            (
                self.count_or("train.batch-size", 32).max(1),
                self.count_or("train.gradient-accumulation-steps", 1).max(1),
            )
        };
        let epochs = self.int("train.epochs").map(|e| e.value.max(0) as usize);
        let max_steps = self.int("train.max-steps").map(|e| e.value.max(0) as usize);
        Some(TrainPlan::new(data.train.rows, batch, accumulation, epochs, max_steps))
    }
}

/// How many optimizer steps a supervised run takes; shared by the trainer and the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainPlan {
    pub samples: usize,
    pub batch_size: usize,
    pub accumulation: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl TrainPlan {
    pub fn new(
        samples: usize,
        batch_size: usize,
        accumulation: usize,
        epochs: Option<usize>,
        max_steps: Option<usize>,
    ) -> Self {
        let steps_per_epoch = samples.div_ceil(batch_size.max(1)).div_ceil(accumulation.max(1));
        let total_steps = match (epochs, max_steps) {
            (Some(e), Some(m)) => (e * steps_per_epoch).min(m),
            (None, Some(m)) => m,
            (Some(e), None) => e * steps_per_epoch,
            (None, None) => steps_per_epoch,
        };
        Self {
            samples,
            batch_size,
            accumulation,
            steps_per_epoch,
            total_steps,
        }
    }
}

/// Registers a rule: `rule! { id, category, severity, summary, doc, trip: [...], check: fn_name }`,
/// or `check: loader` for a structural rule that the loader reports itself.
#[macro_export]
macro_rules! rule {
    (
        id: $id:literal, category: $cat:ident, severity: $sev:ident,
        summary: $summary:literal, doc: $doc:literal,
        trip: [$($trip:expr),* $(,)?], check: loader $(,)?
    ) => {
        $crate::rule!(@submit $id, $cat, $sev, $summary, $doc, [$($trip),*], None);
    };
    (
        id: $id:literal, category: $cat:ident, severity: $sev:ident,
        summary: $summary:literal, doc: $doc:literal,
        trip: [$($trip:expr),* $(,)?], check: $check:path $(,)?
    ) => {
        $crate::rule!(@submit $id, $cat, $sev, $summary, $doc, [$($trip),*], Some(&$check));
    };
    (@submit $id:literal, $cat:ident, $sev:ident, $summary:literal, $doc:literal, [$($trip:expr),*], $check:expr) => {
        $crate::inventory::submit! {
            $crate::rules::RuleEntry {
                id: $id,
                origin: "built in",
                category: $crate::rules::Category::$cat,
                severity: $crate::diag::Severity::$sev,
                summary: $summary,
                doc: $doc,
                check: $check,
                trip: &[$($trip),*],
            }
        }
    };
}
