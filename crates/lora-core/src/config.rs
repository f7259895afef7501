//! The pipeline schema and its spanned loading.
//!
//! The document is kept as text; every table is read through toml's spanned
//! parser, so that an unknown key, a wrong type or a bad value points at
//! file:line:column. Pluggable tables (`[data]`, `[model]`, `[train]`,
//! `[eval]`, `[train.optimizer]`, ...) stay as [`Component`]s until the
//! registry entry named by their `type` deserializes them with its own schema.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Diagnostics, Location, SourceFile, did_you_mean};
use crate::lora::LoraSpec;

/// `[run]`: what the run is called, where it writes, which backend, which seed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    pub name: String,
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Relative paths are relative to the working directory.
    pub output_dir: PathBuf,
}

fn default_backend() -> String {
    "candle".into()
}
fn default_seed() -> u64 {
    42
}

/// `[monitor]`: the live dashboard, its Prometheus endpoint and the end-of-run report.
/// The JSONL event log is always written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MonitorConfig {
    /// Serve the live dashboard and `/metrics` on 127.0.0.1 while training runs.
    #[serde(default)]
    pub dashboard: bool,
    /// Port of the dashboard; 0 picks a free one (printed at start).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Write `report/` (SVG plots and `report.html`) at the end of the run.
    #[serde(default = "default_true")]
    pub report: bool,
    /// Milliseconds between samples of CPU, memory and GPU figures.
    #[serde(default = "default_system_interval")]
    pub system_interval_ms: u64,
    /// Weight of the past in the smoothed training loss (exponential moving average).
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
}

fn default_port() -> u16 {
    6006
}
fn default_true() -> bool {
    true
}
fn default_system_interval() -> u64 {
    1000
}
fn default_smoothing() -> f64 {
    0.9
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            dashboard: false,
            port: default_port(),
            report: true,
            system_interval_ms: default_system_interval(),
            smoothing: default_smoothing(),
        }
    }
}

/// Serializes an `f32` as the shortest decimal that reads back to it (`0.1`, not
/// `0.10000000149011612`), so that resolved configurations show what was written.
pub fn f32_as_written<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    let shortest: f64 = v.to_string().parse().unwrap_or(f64::from(*v));
    s.serialize_f64(shortest)
}

/// A pluggable table: its `type` and where it is, deserialized later by its registry entry.
#[derive(Debug, Clone)]
pub struct Component {
    pub file: Arc<SourceFile>,
    /// Dotted path of the table, for example `["train", "optimizer"]`.
    pub path: Vec<String>,
    pub type_name: String,
    type_span: Option<Range<usize>>,
    span: Range<usize>,
    /// Keys that are sub-components, left out when this table is deserialized.
    nested: Vec<&'static str>,
}

impl Component {
    pub fn location(&self) -> Location {
        Location {
            file: self.file.clone(),
            span: self.span.clone(),
        }
    }

    pub fn type_location(&self) -> Option<Location> {
        Some(Location {
            file: self.file.clone(),
            span: self.type_span.clone().unwrap_or(self.span.clone()),
        })
    }

    fn table(&self) -> Result<Spanned<DeTable<'_>>, Diagnostics> {
        let root = parse_document(&self.file)?;
        let mut current = root;
        let mut keys = self.path.iter().peekable();
        while let Some(key) = keys.next() {
            let (_, mut value) = current
                .get_ref()
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == key.as_str())
                .map(|(k, v)| (k.clone(), v.clone()))
                .expect("component path was checked when the component was made");
            // An array of tables (`[[data.augment]]`): the next path element is the index.
            if let DeValue::Array(items) = value.get_ref() {
                let index: usize = keys
                    .next()
                    .and_then(|i| i.parse().ok())
                    .expect("component path was checked when the component was made");
                value = items[index].clone();
            }
            let span = value.span();
            match value.into_inner() {
                DeValue::Table(t) => current = Spanned::new(span, t),
                _ => unreachable!("component path was checked when the component was made"),
            }
        }
        Ok(current)
    }

    /// Where the value of `key` is written, if it is.
    pub fn value_location(&self, key: &str) -> Option<Location> {
        let table = self.table().ok()?;
        let (_, v) = table.get_ref().iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        Some(Location {
            file: self.file.clone(),
            span: v.span(),
        })
    }

    /// Declares keys that hold sub-components, so that [`Self::deserialize`] skips them.
    pub fn with_nested(mut self, keys: &[&'static str]) -> Self {
        self.nested.extend_from_slice(keys);
        self
    }

    /// Deserializes the table, without `type` and nested components, into the entry's own schema.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        let table = self.table()?;
        let span = table.span();
        let mut inner = DeTable::new();
        for (k, v) in table.get_ref().iter() {
            let key: &str = k.get_ref().as_ref();
            if key != "type" && !self.nested.contains(&key) {
                inner.insert(k.clone(), v.clone());
            }
        }
        let de = toml::de::Deserializer::from(Spanned::new(span, inner));
        T::deserialize(de).map_err(|e| toml_error(&self.file, &e, &self.path.join(".")))
    }

    /// The array of tables `key` (`[[data.augment]]`) as components, in file
    /// order; empty when absent. Each element needs its own `type`.
    pub fn array_components(&self, key: &str) -> Result<Vec<Component>, Diagnostics> {
        let table = self.table()?;
        let Some((_, value)) = table.get_ref().iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            return Ok(Vec::new());
        };
        let mut path = self.path.clone();
        path.push(key.to_string());
        let DeValue::Array(items) = value.get_ref() else {
            return Err(Diagnostic::error(
                "config::wrong-type",
                format!(
                    "`{}` must be an array of tables ([[{}]]), found {}",
                    path.join("."),
                    path.join("."),
                    value.get_ref().type_str()
                ),
            )
            .at(Some(Location {
                file: self.file.clone(),
                span: value.span(),
            }))
            .into());
        };
        let mut out = Vec::with_capacity(items.len());
        let mut diags = Diagnostics::default();
        for (i, item) in items.iter().enumerate() {
            // Wrap the element as a one-entry table so that `component_in` can read it.
            let mut holder = DeTable::new();
            holder.insert(Spanned::new(item.span(), i.to_string().into()), item.clone());
            let mut element_path = path.clone();
            element_path.push(i.to_string());
            match component_in(&self.file, &holder, element_path, None) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => unreachable!("the element was just inserted"),
                Err(e) => diags.0.extend(e.0),
            }
        }
        if diags.has_errors() { Err(diags) } else { Ok(out) }
    }

    /// The sub-table `key` as a component, or `None` when absent.
    pub fn sub_component(&self, key: &str, default_type: Option<&str>) -> Result<Option<Component>, Diagnostics> {
        let table = self.table()?;
        let mut path = self.path.clone();
        path.push(key.to_string());
        component_in(&self.file, table.get_ref(), path, default_type)
    }
}

fn component_in(
    file: &Arc<SourceFile>,
    parent: &DeTable<'_>,
    path: Vec<String>,
    default_type: Option<&str>,
) -> Result<Option<Component>, Diagnostics> {
    let key = path.last().expect("non-empty path");
    let Some((k, value)) = parent.iter().find(|(k, _)| k.get_ref().as_ref() == key.as_str()) else {
        return Ok(None);
    };
    let span = value.span();
    let DeValue::Table(table) = value.get_ref() else {
        return Err(Diagnostic::error(
            "config::wrong-type",
            format!(
                "`{}` must be a table, found {}",
                path.join("."),
                value.get_ref().type_str()
            ),
        )
        .at(Some(Location {
            file: file.clone(),
            span,
        }))
        .into());
    };
    let ty = table.iter().find(|(k, _)| k.get_ref().as_ref() == "type");
    let (type_name, type_span) = match ty {
        Some((_, v)) => match v.get_ref().as_str() {
            Some(s) => (s.to_string(), Some(v.span())),
            None => {
                return Err(Diagnostic::error(
                    "config::wrong-type",
                    format!("`{}.type` must be a string", path.join(".")),
                )
                .at(Some(Location {
                    file: file.clone(),
                    span: v.span(),
                }))
                .into());
            }
        },
        None => match default_type {
            Some(d) => (d.to_string(), None),
            None => {
                return Err(Diagnostic::error(
                    "config::missing-type",
                    format!("table [{}] needs a `type` key", path.join(".")),
                )
                .at(Some(Location {
                    file: file.clone(),
                    span: k.span(),
                }))
                .into());
            }
        },
    };
    Ok(Some(Component {
        file: file.clone(),
        path,
        type_name,
        type_span,
        span,
        nested: Vec::new(),
    }))
}

fn parse_document(file: &SourceFile) -> Result<Spanned<DeTable<'_>>, Diagnostics> {
    DeTable::parse(&file.text).map_err(|e| toml_error_in(file, &e))
}

fn toml_error_in(file: &SourceFile, e: &toml::de::Error) -> Diagnostics {
    let arc = SourceFile::new(file.path.clone(), file.text.clone());
    syntax_error(&arc, e)
}

/// A document that is not valid TOML: `config::syntax` (or `config::duplicate-key`).
pub fn syntax_error(file: &Arc<SourceFile>, e: &toml::de::Error) -> Diagnostics {
    let mut d = toml_error(file, e, "");
    for diag in &mut d.0 {
        if diag.code != "config::duplicate-key" {
            diag.code = "config::syntax".into();
        }
    }
    d
}

/// Turns toml's error (message plus byte span) into a diagnostic with a location.
pub fn toml_error(file: &Arc<SourceFile>, e: &toml::de::Error, table: &str) -> Diagnostics {
    let message = e.message().trim().to_string();
    let code = if message.starts_with("unknown field") {
        "config::unknown-key"
    } else if message.starts_with("missing field") {
        "config::missing-key"
    } else if message.starts_with("invalid type") {
        "config::wrong-type"
    } else if message.contains("duplicate key") {
        "config::duplicate-key"
    } else if e.span().is_none() {
        "config::invalid"
    } else {
        "config::invalid-value"
    };
    let mut d = Diagnostic::error(
        code,
        if table.is_empty() {
            message.clone()
        } else {
            format!("[{table}] {message}")
        },
    )
    .at(e.span().map(|span| Location {
        file: file.clone(),
        span,
    }));
    if code == "config::duplicate-key"
        && let Some(span) = e.span()
    {
        // toml names neither the key nor its first definition: find both in the text.
        let (key, first) = duplicate_key(&file.text, span.start);
        d.message = match (key, first) {
            (Some(key), Some(line)) => format!("duplicate key `{key}`: it is already set on line {line}"),
            (Some(key), None) => format!("duplicate key `{key}`"),
            _ => message.clone(),
        };
        d = d.help("TOML allows a key once per table: delete one of them (to change a base file's value, set it in an upper layer)");
    }
    if code == "config::unknown-key" {
        // serde lists the expected fields; offer the closest one.
        if let (Some(found), Some(expected)) = (message.split('`').nth(1), message.split("expected").nth(1)) {
            let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            if let Some(s) = did_you_mean(found, names.iter().copied()) {
                d = d.help(format!("did you mean `{s}`?"));
            }
        }
    }
    d.into()
}

/// A table header line (`[a.b]`, `[[a.b]]`), as its dotted path without spaces or quotes.
fn header_path(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.\"' ".contains(c);
    (!inner.is_empty() && inner.chars().all(ok)).then(|| key_path(inner))
}

/// A key as written (`a . "b"`) as a dotted path (`a.b`).
fn key_path(key: &str) -> String {
    key.split('.')
        .map(|k| k.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// The full dotted path of the key written at byte `at`, and the 1-based line where
/// that key (or table) was first set, by reading the text line by line.
///
/// A best effort for the message: multi-line strings and arrays are not parsed, so
/// the first definition may not be found (`None`).
fn duplicate_key(text: &str, at: usize) -> (Option<String>, Option<usize>) {
    let mut table = String::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let here = at >= start && at < offset;
        let (path, array) = if let Some(h) = header_path(line) {
            let array = line.trim_start().starts_with("[[");
            table = h.clone();
            (h, array)
        } else if let Some((k, _)) = line.split_once('=')
            && !k.trim().is_empty()
            && !k.trim_start().starts_with('#')
        {
            if here && at >= start + k.len() {
                // Inside the value: a key of an inline table.
                let key: String = text
                    .get(at..)
                    .unwrap_or("")
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                return ((!key.is_empty()).then_some(key), None);
            }
            let k = key_path(k);
            (if table.is_empty() { k } else { format!("{table}.{k}") }, false)
        } else {
            continue;
        };
        if here {
            let first = seen.iter().find(|(p, _)| *p == path).map(|(_, l)| *l);
            return (Some(path), first);
        }
        if array {
            // A new element of an array of tables: its keys start afresh.
            let prefix = format!("{path}.");
            seen.retain(|(p, _)| !p.starts_with(&prefix));
        } else {
            seen.push((path, i + 1));
        }
    }
    (None, None)
}

/// A whole pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub file: Arc<SourceFile>,
    pub run: RunConfig,
    pub data: Component,
    pub model: Component,
    pub lora: LoraSpec,
    pub train: Component,
    pub eval: Component,
    pub monitor: MonitorConfig,
    /// `[callbacks.NAME]` tables in document order; `type` defaults to `NAME`.
    pub callbacks: Vec<Component>,
    /// `[train] checkpoint-every-steps` and `keep-last`.
    pub checkpoint: crate::checkpoint::CheckpointConfig,
    /// `[strategy]`: how the processes of a distributed run combine their work
    /// (`lora-strategy`); `None` trains in one process without one.
    pub strategy: Option<Component>,
}

/// Top-level tables; `plugins` is read by the plugin loader and `search` by
/// `lora search`, not by a stage.
pub const SECTIONS: [&str; 11] = [
    "run",
    "data",
    "model",
    "lora",
    "train",
    "eval",
    "monitor",
    "callbacks",
    "plugins",
    "search",
    "strategy",
];

/// The `[callbacks.NAME]` tables, each a component whose type defaults to its name.
fn callback_components(file: &Arc<SourceFile>, root: &DeTable<'_>) -> Result<Vec<Component>, Diagnostics> {
    let Some((_, value)) = root.iter().find(|(k, _)| k.get_ref().as_ref() == "callbacks") else {
        return Ok(Vec::new());
    };
    let DeValue::Table(table) = value.get_ref() else {
        return Err(Diagnostic::error(
            "config::wrong-type",
            format!(
                "`callbacks` must be a table of tables ([callbacks.NAME]), found {}",
                value.get_ref().type_str()
            ),
        )
        .at(Some(Location {
            file: file.clone(),
            span: value.span(),
        }))
        .into());
    };
    let mut diags = Diagnostics::default();
    let mut out = Vec::new();
    for (k, _) in table.iter() {
        let name: &str = k.get_ref().as_ref();
        match component_in(file, table, vec!["callbacks".into(), name.into()], Some(name)) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {}
            Err(e) => diags.0.extend(e.0),
        }
    }
    if diags.has_errors() { Err(diags) } else { Ok(out) }
}

/// Every section that parsed, and the problems of those that did not: the
/// validator checks what it can even when some sections are broken.
#[derive(Debug, Clone, Default)]
pub struct PartialConfig {
    pub run: Option<RunConfig>,
    pub data: Option<Component>,
    pub model: Option<Component>,
    pub lora: Option<LoraSpec>,
    pub train: Option<Component>,
    pub eval: Option<Component>,
    pub monitor: Option<MonitorConfig>,
    pub callbacks: Option<Vec<Component>>,
    pub checkpoint: Option<crate::checkpoint::CheckpointConfig>,
    /// `Some(None)`: no `[strategy]` table; `None`: the table is broken.
    pub strategy: Option<Option<Component>>,
}

impl PartialConfig {
    /// Parses each section on its own, collecting every structural problem.
    pub fn parse(file: Arc<SourceFile>) -> (Self, Diagnostics) {
        let root = match parse_document(&file) {
            Ok(r) => r,
            Err(d) => return (PartialConfig::default(), d),
        };
        let mut diags = Diagnostics::default();

        for (k, _) in root.get_ref().iter() {
            let key: &str = k.get_ref().as_ref();
            if !SECTIONS.contains(&key) {
                let mut d = Diagnostic::error("config::unknown-section", format!("unknown section `{key}`")).at(Some(
                    Location {
                        file: file.clone(),
                        span: k.span(),
                    },
                ));
                d = match did_you_mean(key, SECTIONS) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("valid sections: {}", SECTIONS.join(", "))),
                };
                diags.push(d);
            }
        }

        let whole = Location {
            file: file.clone(),
            span: 0..0,
        };
        let mut required = |key: &str, default_type: Option<&str>| -> Option<Component> {
            match component_in(&file, root.get_ref(), vec![key.to_string()], default_type) {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    diags.push(
                        Diagnostic::error("config::missing-section", format!("missing section [{key}]"))
                            .at(Some(whole.clone())),
                    );
                    None
                }
                Err(e) => {
                    diags.0.extend(e.0);
                    None
                }
            }
        };
        let run = required("run", Some("run"));
        let data = required("data", None);
        let model = required("model", None);
        let lora = required("lora", Some("lora"));
        let train = required("train", Some("supervised"));
        let eval = required("eval", Some("classification"));

        let run = run.and_then(|c| c.deserialize::<RunConfig>().map_err(|e| diags.0.extend(e.0)).ok());
        let monitor = match component_in(&file, root.get_ref(), vec!["monitor".into()], Some("monitor")) {
            Ok(Some(c)) => c
                .deserialize::<MonitorConfig>()
                .map_err(|e| diags.0.extend(e.0))
                .ok()
                .inspect(|m| {
                    if !(0.0..1.0).contains(&m.smoothing) {
                        diags.push(
                            Diagnostic::error(
                                "config::invalid-value",
                                format!(
                                    "[monitor] smoothing ({}) must be in [0, 1). Valid range: 0 <= smoothing < 1",
                                    m.smoothing
                                ),
                            )
                            .at(c.value_location("smoothing")),
                        );
                    }
                }),
            Ok(None) => Some(MonitorConfig::default()),
            Err(e) => {
                diags.0.extend(e.0);
                None
            }
        };
        let strategy = component_in(&file, root.get_ref(), vec!["strategy".into()], None)
            .map_err(|e| diags.0.extend(e.0))
            .ok();
        let callbacks = callback_components(&file, root.get_ref())
            .map_err(|e| diags.0.extend(e.0))
            .ok();
        let lora = lora.and_then(|c| {
            let loc = c.value_location("target-modules");
            let patterns = c
                .value_location("rank-pattern")
                .or_else(|| c.value_location("alpha-pattern"));
            c.deserialize::<LoraSpec>()
                .map(|mut l| {
                    l.target_modules_location = loc;
                    l.patterns_location = patterns;
                    l
                })
                .map_err(|e| diags.0.extend(e.0))
                .ok()
        });

        // Every trainer has the checkpoint keys: the core reads them, the
        // trainer's own schema skips them.
        let checkpoint = train.as_ref().and_then(|t| {
            t.deserialize::<crate::checkpoint::CheckpointConfig>()
                .map_err(|e| diags.0.extend(e.0))
                .ok()
        });
        let mut train_keys = vec!["optimizer", "scheduler"];
        train_keys.extend(crate::checkpoint::TRAIN_KEYS);
        let partial = PartialConfig {
            run,
            data,
            model,
            lora,
            train: train.map(|t| t.with_nested(&train_keys)),
            checkpoint,
            eval,
            monitor,
            callbacks,
            strategy,
        };
        (partial, diags)
    }
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io("cannot read configuration", path, e))?;
        Ok(Self::parse(path, text)?)
    }

    /// Parses a pipeline, collecting every structural problem before giving up.
    pub fn parse(path: &Path, text: String) -> Result<Self, Diagnostics> {
        Self::from_source(SourceFile::new(path, text))
    }

    /// Parses an already composed document (see `lora-validate`'s layering).
    pub fn from_source(file: Arc<SourceFile>) -> Result<Self, Diagnostics> {
        let (partial, diags) = PartialConfig::parse(file.clone());
        if diags.has_errors() {
            return Err(diags);
        }
        match partial {
            PartialConfig {
                run: Some(run),
                data: Some(data),
                model: Some(model),
                lora: Some(lora),
                train: Some(train),
                eval: Some(eval),
                monitor: Some(monitor),
                callbacks: Some(callbacks),
                checkpoint: Some(checkpoint),
                strategy: Some(strategy),
            } => Ok(Self {
                file,
                run,
                data,
                model,
                lora,
                train,
                eval,
                monitor,
                callbacks,
                checkpoint,
                strategy,
            }),
            _ => Err(diags),
        }
    }

    pub fn text(&self) -> &str {
        &self.file.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[run]
name = "t"
output-dir = "out"

[data]
type = "csv"
path = "x.csv"

[model]
type = "bert-classifier"
path = "m"

[lora]
r = 8
alpha = 16
target-modules = ["query", "value"]

[train]
batch-size = 4

[train.optimizer]
type = "adamw"
lr = 1e-3

[eval]
"#;

    #[test]
    fn a_good_pipeline_parses_with_defaults() {
        let p = PipelineConfig::parse(Path::new("p.toml"), GOOD.into()).unwrap();
        assert_eq!(p.run.backend, "candle");
        assert_eq!(p.run.seed, 42);
        assert_eq!(p.data.type_name, "csv");
        assert_eq!(p.train.type_name, "supervised");
        assert_eq!(p.lora.r, 8);
        assert_eq!(p.lora.alpha, 16.0);
        let opt = p.train.sub_component("optimizer", None).unwrap().unwrap();
        assert_eq!(opt.type_name, "adamw");
        assert_eq!(opt.path, vec!["train", "optimizer"]);
    }

    #[test]
    fn a_duplicate_key_names_the_key_and_its_first_line() {
        let parse = |text: String| {
            let file = SourceFile::new(Path::new("p.toml"), text);
            let e = DeTable::parse(&file.text).unwrap_err();
            syntax_error(&file, &e).0.remove(0)
        };
        let d = parse(GOOD.replace("lr = 1e-3", "lr = 1e-3\n# again\nlr = 2e-3"));
        assert_eq!(d.code, "config::duplicate-key");
        assert_eq!(
            d.message, "duplicate key `train.optimizer.lr`: it is already set on line 24",
            "{d}"
        );
        assert_eq!(d.location.as_ref().unwrap().line_col().0, 26);
        // A table written twice, and a key at the top.
        let d = parse(format!("seed = 1\n{GOOD}\n[lora]\nr = 4\n"));
        assert_eq!(d.message, "duplicate key `lora`: it is already set on line 15", "{d}");
        let d = parse(format!("seed = 1\nseed = 2\n{GOOD}"));
        assert_eq!(d.message, "duplicate key `seed`: it is already set on line 1", "{d}");
        // Keys repeat from one element of an array of tables to the next, not within one.
        let text = "[[data.augment]]\ntype = \"a\"\n\n[[data.augment]]\ntype = \"b\"\np = 1\np = 2\n";
        let d = parse(text.to_string());
        assert_eq!(
            d.message, "duplicate key `data.augment.p`: it is already set on line 6",
            "{d}"
        );
        // Inside an inline table: the key, without a line.
        let d = parse("x = { a = 1, a = 2 }\n".to_string());
        assert_eq!(d.message, "duplicate key `a`", "{d}");
    }

    #[test]
    fn unknown_keys_point_at_their_line_with_a_suggestion() {
        let text = GOOD.replace("alpha = 16", "alhpa = 16");
        let err = PipelineConfig::parse(Path::new("p.toml"), text).unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.code, "config::unknown-key");
        let (line, _) = d.location.as_ref().unwrap().line_col();
        assert_eq!(line, 16);
        assert_eq!(d.help.as_deref(), Some("did you mean `alpha`?"), "{}", d.message);
    }

    #[test]
    fn every_structural_problem_is_reported_at_once() {
        let text = GOOD.replace("[eval]", "[evall]").replace("type = \"csv\"\n", "");
        let err = PipelineConfig::parse(Path::new("p.toml"), text).unwrap_err();
        let codes: Vec<&str> = err.0.iter().map(|d| d.code.as_str()).collect();
        assert!(codes.contains(&"config::unknown-section"), "{codes:?}");
        assert!(codes.contains(&"config::missing-type"), "{codes:?}");
        assert!(codes.contains(&"config::missing-section"), "{codes:?}");
    }

    #[test]
    fn monitor_and_callbacks_are_optional_and_checked() {
        let p = PipelineConfig::parse(Path::new("p.toml"), GOOD.into()).unwrap();
        assert!(!p.monitor.dashboard);
        assert!(p.callbacks.is_empty());
        let text = format!(
            "{GOOD}\n[monitor]\ndashboard = true\nport = 0\n\n[callbacks.early-stopping]\nmetric = \"accuracy\"\n\n[callbacks.guard]\ntype = \"nan-rollback\"\n"
        );
        let p = PipelineConfig::parse(Path::new("p.toml"), text).unwrap();
        assert!(p.monitor.dashboard);
        assert_eq!(p.monitor.port, 0);
        let types: Vec<&str> = p.callbacks.iter().map(|c| c.type_name.as_str()).collect();
        assert_eq!(types, ["early-stopping", "nan-rollback"]);
        assert_eq!(p.callbacks[0].path, ["callbacks", "early-stopping"]);
        let bad = format!("{GOOD}\n[monitor]\ndashbord = true\n");
        let err = PipelineConfig::parse(Path::new("p.toml"), bad).unwrap_err();
        assert_eq!(err.0[0].code, "config::unknown-key");
    }

    #[test]
    fn arrays_of_tables_become_located_components() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Op {
            p: f32,
        }
        let text = GOOD.replace(
            "path = \"x.csv\"\n",
            "path = \"x.csv\"\n[[data.augment]]\ntype = \"flip\"\np = 0.5\n[[data.augment]]\ntype = \"crop\"\np = 1.0\nq = 2\n",
        );
        let p = PipelineConfig::parse(Path::new("p.toml"), text).unwrap();
        let ops = p.data.array_components("augment").unwrap();
        assert_eq!(
            ops.iter().map(|c| c.type_name.as_str()).collect::<Vec<_>>(),
            ["flip", "crop"]
        );
        assert_eq!(ops[1].path, ["data", "augment", "1"]);
        assert_eq!(ops[0].deserialize::<Op>().unwrap().p, 0.5);
        let err = ops[1].deserialize::<Op>().unwrap_err();
        assert_eq!(err.0[0].code, "config::unknown-key");
        assert_eq!(err.0[0].location.as_ref().unwrap().line_col().0, 15);
        assert!(p.data.array_components("none").unwrap().is_empty());
        let missing = GOOD.replace("path = \"x.csv\"\n", "path = \"x.csv\"\n[[data.augment]]\np = 0.5\n");
        let p = PipelineConfig::parse(Path::new("p.toml"), missing).unwrap();
        assert_eq!(
            p.data.array_components("augment").unwrap_err().0[0].code,
            "config::missing-type"
        );
    }

    #[test]
    fn nested_component_keys_are_skipped_by_the_parent() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct Train {
            batch_size: usize,
        }
        let p = PipelineConfig::parse(Path::new("p.toml"), GOOD.into()).unwrap();
        let t: Train = p.train.deserialize().unwrap();
        assert_eq!(t.batch_size, 4);
    }
}
