//! Layering: `extends = [...]` files, then environment overrides, then `--set`.
//!
//! The layers are merged into one document that is written out as TOML text,
//! with a map from each piece of that text back to where it was written (file
//! and byte offset, variable, or argument). Everything downstream (the schema,
//! the registries, the rules) reads the composed text as if it were one file,
//! and every diagnostic still points at the layer that set the value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lora_core::diag::{Diagnostic, Diagnostics, Location, Origin, Segment, SourceFile};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The environment prefix: `LORA__TRAIN__BATCH_SIZE=16` sets `train.batch-size`.
pub const ENV_PREFIX: &str = "LORA__";
/// Short alias for the learning rate, as many training scripts read it.
pub const ENV_LR_ALIAS: &str = "OVERRIDE_LR";
/// Where `OVERRIDE_LR` writes.
pub const LR_PATH: &str = "train.optimizer.lr";

/// Overrides given on top of the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Environment variables (name, value); only `LORA__*` and `OVERRIDE_LR` are read.
    pub env: Vec<(String, String)>,
    /// `--set path=value` arguments, in order.
    pub sets: Vec<String>,
}

impl Overrides {
    /// The relevant variables of this process's environment, and those that look
    /// like them (`LORA_TRAIN_BATCH_SIZE`, `lora__train__lr`), to warn about.
    pub fn from_process(sets: Vec<String>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| {
                let upper = k.to_ascii_uppercase();
                upper.starts_with("LORA_") || upper == ENV_LR_ALIAS
            })
            .collect();
        Self { env, sets }
    }

    fn is_empty(&self) -> bool {
        self.env
            .iter()
            .all(|(k, _)| !(k.starts_with(ENV_PREFIX) || k == ENV_LR_ALIAS))
            && self.sets.is_empty()
    }
}

/// A merged value and where it came from.
#[derive(Debug, Clone)]
struct Layered {
    kind: Kind,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A value written as TOML text (scalars, inline arrays).
    Leaf(String),
    /// Keys with the origin of the key itself, in order.
    Table(Vec<(String, Origin, Layered)>),
    /// An array of tables (`[[x]]`).
    Tables(Vec<Layered>),
}

/// A composed document, and the warnings composing it raised (a conflicting override, ...).
#[derive(Debug)]
pub struct Composed {
    pub source: Arc<SourceFile>,
    pub warnings: Diagnostics,
}

/// Reads `path` and its layers into one document.
///
/// A file without `extends` and without overrides is returned as it is, comments
/// and all; otherwise the composed text carries the origins of its pieces.
pub fn compose(path: &Path, overrides: &Overrides) -> Result<Composed, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics::from(Diagnostic::error(
            "config::unreadable",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    compose_text(path, text, overrides)
}

/// [`compose`] for a document already in memory (tests, `lora validate -`).
pub fn compose_text(path: &Path, text: String, overrides: &Overrides) -> Result<Composed, Diagnostics> {
    let file = SourceFile::new(path, text);
    let root = DeTable::parse(&file.text).map_err(|e| lora_core::config::syntax_error(&file, &e))?;
    let has_extends = root.get_ref().iter().any(|(k, _)| k.get_ref().as_ref() == "extends");
    if !has_extends && overrides.is_empty() {
        let mut tables = Vec::new();
        table_paths(
            &convert_table(&file, root.get_ref(), root.span(), true),
            &mut Vec::new(),
            &mut tables,
        );
        return Ok(Composed {
            source: file,
            warnings: Diagnostics(near_misses(&overrides.env, &tables)),
        });
    }
    let mut diags = Diagnostics::default();
    let mut stack = Vec::new();
    let mut merged = load_layers(&file, &mut stack, &mut diags);
    let mut tables = Vec::new();
    table_paths(&merged, &mut Vec::new(), &mut tables);
    diags.0.extend(near_misses(&overrides.env, &tables));
    apply_overrides(&mut merged, overrides, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    let mut out = Emitter::default();
    out.table(&[], &merged);
    Ok(Composed {
        source: SourceFile::composed(path, out.text, out.segments),
        warnings: diags,
    })
}

/// Every table path of a merged document (`train`, `train.optimizer`, ...).
fn table_paths(node: &Layered, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Kind::Table(entries) = &node.kind else { return };
    for (key, _, value) in entries {
        if matches!(value.kind, Kind::Table(_) | Kind::Tables(_)) {
            path.push(key.clone());
            out.push(path.clone());
            match &value.kind {
                Kind::Tables(items) => items.iter().for_each(|t| table_paths(t, path, out)),
                _ => table_paths(value, path, out),
            }
            path.pop();
        }
    }
}

/// Warnings for environment variables that look like overrides but are not read:
/// single underscores (`LORA_TRAIN_BATCH_SIZE`), other cases (`lora__train__lr`),
/// `override_lr`. A variable is only taken for an override when its words start
/// with a section of the pipeline (so `LORA_CACHE_DIR` is left alone).
fn near_misses(env: &[(String, String)], tables: &[Vec<String>]) -> Vec<Diagnostic> {
    let mut candidates: Vec<Vec<String>> = lora_core::config::SECTIONS
        .iter()
        .map(|s| vec![s.to_string()])
        .collect();
    candidates.extend(tables.iter().cloned());
    // The longest table first: `train.optimizer` before `train`.
    candidates.sort_by_key(|t| std::cmp::Reverse(t.iter().map(|s| s.split('-').count()).sum::<usize>()));
    let mut out = Vec::new();
    let mut vars: Vec<&String> = env.iter().map(|(k, _)| k).collect();
    vars.sort();
    vars.dedup();
    for var in vars {
        if var.starts_with(ENV_PREFIX) || var == ENV_LR_ALIAS {
            continue;
        }
        let upper = var.to_ascii_uppercase();
        if upper == ENV_LR_ALIAS {
            out.push(near_miss(var, ENV_LR_ALIAS, LR_PATH));
            continue;
        }
        let Some(rest) = upper.strip_prefix("LORA_") else {
            continue;
        };
        let words: Vec<String> = rest
            .split('_')
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        for table in &candidates {
            let table_words: Vec<&str> = table.iter().flat_map(|s| s.split('-')).collect();
            if words.len() > table_words.len() && words.iter().zip(&table_words).all(|(w, t)| w == t) {
                let key = words[table_words.len()..].join("-");
                let right = format!(
                    "{ENV_PREFIX}{}__{}",
                    table
                        .iter()
                        .map(|s| s.to_ascii_uppercase().replace('-', "_"))
                        .collect::<Vec<_>>()
                        .join("__"),
                    key.to_ascii_uppercase().replace('-', "_")
                );
                out.push(near_miss(var, &right, &format!("{}.{key}", table.join("."))));
                break;
            }
        }
    }
    out
}

fn near_miss(var: &str, right: &str, path: &str) -> Diagnostic {
    Diagnostic::warning(
        "config::env-near-miss",
        format!("environment variable {var} is ignored: overrides are spelt {ENV_PREFIX}SECTION__KEY, in capitals"),
    )
    .help(format!("did you mean {right}? (it sets `{path}`)"))
}

fn file_origin(file: &Arc<SourceFile>, start: usize) -> Origin {
    Origin::File {
        file: file.clone(),
        start,
    }
}

/// The file's bases, merged in order, then the file on top.
fn load_layers(file: &Arc<SourceFile>, stack: &mut Vec<PathBuf>, diags: &mut Diagnostics) -> Layered {
    let here = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
    stack.push(here);
    let root = match DeTable::parse(&file.text) {
        Ok(r) => r,
        Err(e) => {
            diags.0.extend(lora_core::config::syntax_error(file, &e).0);
            stack.pop();
            return empty_table(file);
        }
    };
    let mut merged = empty_table(file);
    if let Some((_, v)) = root.get_ref().iter().find(|(k, _)| k.get_ref().as_ref() == "extends") {
        for (base, span) in extends_list(file, v, diags) {
            let at = Location {
                file: file.clone(),
                span: span.clone(),
            };
            let dir = file.path.parent().unwrap_or(Path::new(""));
            let base_path = dir.join(&base);
            let canonical = std::fs::canonicalize(&base_path).unwrap_or_else(|_| base_path.clone());
            if let Some(pos) = stack.iter().position(|p| *p == canonical) {
                let chain: Vec<String> = stack[pos..]
                    .iter()
                    .chain([&canonical])
                    .map(|p| p.display().to_string())
                    .collect();
                diags.push(
                    Diagnostic::error(
                        "config::extends-cycle",
                        format!("`extends` forms a cycle: {}", chain.join(" -> ")),
                    )
                    .at(Some(at))
                    .help("a file may not extend itself, directly or through its bases"),
                );
                continue;
            }
            // Only a regular file: a FIFO or a device (`/dev/zero`) would never end.
            let read = if base_path.is_dir() || base_path.is_file() || !base_path.exists() {
                std::fs::read_to_string(&base_path)
            } else {
                Err(std::io::Error::other("not a regular file"))
            };
            let text = match read {
                Ok(t) => t,
                Err(e) => {
                    diags.push(
                        Diagnostic::error(
                            "config::extends-missing",
                            format!("cannot read base file {}: {e}", base_path.display()),
                        )
                        .at(Some(at))
                        .help("paths in `extends` are relative to the file that names them"),
                    );
                    continue;
                }
            };
            let base_file = SourceFile::new(base_path, text);
            let layer = load_layers(&base_file, stack, diags);
            merge(&mut merged, layer);
        }
    }
    let own = convert_table(file, root.get_ref(), root.span(), true);
    merge(&mut merged, own);
    stack.pop();
    merged
}

fn extends_list(
    file: &Arc<SourceFile>,
    v: &Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Vec<(String, std::ops::Range<usize>)> {
    let wrong = |diags: &mut Diagnostics, span: std::ops::Range<usize>| {
        diags.push(
            Diagnostic::error("config::extends-type", "`extends` must be a list of file paths")
                .at(Some(Location {
                    file: file.clone(),
                    span,
                }))
                .help("for example: extends = [\"base.toml\"]"),
        );
    };
    match v.get_ref() {
        DeValue::String(s) => vec![(s.to_string(), v.span())],
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((s.to_string(), item.span())),
                    _ => wrong(diags, item.span()),
                }
            }
            out
        }
        _ => {
            wrong(diags, v.span());
            Vec::new()
        }
    }
}

fn empty_table(file: &Arc<SourceFile>) -> Layered {
    Layered {
        kind: Kind::Table(Vec::new()),
        origin: file_origin(file, 0),
    }
}

fn convert_table(file: &Arc<SourceFile>, table: &DeTable<'_>, span: std::ops::Range<usize>, root: bool) -> Layered {
    let mut entries: Vec<(usize, String, Origin, Layered)> = table
        .iter()
        .filter(|(k, _)| !(root && k.get_ref().as_ref() == "extends"))
        .map(|(k, v)| {
            let key_origin = file_origin(file, k.span().start);
            (k.span().start, k.get_ref().to_string(), key_origin, convert(file, v))
        })
        .collect();
    entries.sort_by_key(|e| e.0);
    Layered {
        kind: Kind::Table(entries.into_iter().map(|(_, k, o, v)| (k, o, v)).collect()),
        origin: file_origin(file, span.start),
    }
}

fn convert(file: &Arc<SourceFile>, v: &Spanned<DeValue<'_>>) -> Layered {
    let span = v.span();
    match v.get_ref() {
        DeValue::Table(t) => convert_table(file, t, span, false),
        // An array of tables written as `[[name]]` headers is kept as tables (so
        // that the emitter writes headers again); an inline `[{...}]` stays text.
        DeValue::Array(items)
            if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()) && {
                let text = file.text[span.clone()].trim_start();
                text.starts_with("[[") || !text.starts_with('[')
            } =>
        {
            Layered {
                kind: Kind::Tables(items.iter().map(|i| convert(file, i)).collect()),
                origin: file_origin(file, span.start),
            }
        }
        _ => Layered {
            kind: Kind::Leaf(file.text[span.clone()].to_string()),
            origin: file_origin(file, span.start),
        },
    }
}

/// Tables merge key by key; anything else is replaced by the upper layer.
fn merge(lower: &mut Layered, upper: Layered) {
    match (&mut lower.kind, upper.kind) {
        (Kind::Table(low), Kind::Table(up)) => {
            for (key, key_origin, value) in up {
                match low.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, _, existing)) => merge(existing, value),
                    None => low.push((key, key_origin, value)),
                }
            }
        }
        (_, kind) => {
            lower.kind = kind;
            lower.origin = upper.origin;
        }
    }
}

fn apply_overrides(root: &mut Layered, overrides: &Overrides, diags: &mut Diagnostics) {
    let lr_alias = overrides.env.iter().find(|(k, _)| k == ENV_LR_ALIAS);
    let mut env: Vec<&(String, String)> = overrides
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (var, value) in env {
        let origin = Origin::Env {
            var: var.clone(),
            value: value.clone(),
        };
        let segments: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase().replace('_', "-"))
            .collect();
        if segments.len() < 2 || segments.iter().any(String::is_empty) {
            diags.push(
                Diagnostic::error(
                    "config::override-syntax",
                    format!("environment variable {var} does not name a key: it needs LORA__SECTION__KEY"),
                )
                .help("for example LORA__TRAIN__BATCH_SIZE=16 sets [train] batch-size"),
            );
            continue;
        }
        set_path(root, &segments, value, origin, diags);
    }
    if let Some((var, value)) = lr_alias {
        let direct = format!("{ENV_PREFIX}TRAIN__OPTIMIZER__LR");
        if let Some((_, other)) = overrides.env.iter().find(|(k, _)| *k == direct) {
            diags.push(
                Diagnostic::warning(
                    "config::override-conflict",
                    format!("both {var}={value} and {direct}={other} set the learning rate; {var} wins"),
                )
                .help(format!(
                    "unset one of them; {var} is applied after the LORA__ variables"
                )),
            );
        }
        let origin = Origin::Env {
            var: var.clone(),
            value: value.clone(),
        };
        let segments: Vec<String> = LR_PATH.split('.').map(str::to_string).collect();
        set_path(root, &segments, value, origin, diags);
    }
    for arg in &overrides.sets {
        let origin = Origin::Cli { arg: arg.clone() };
        let Some((path, value)) = arg.split_once('=') else {
            diags.push(
                Diagnostic::error(
                    "config::override-syntax",
                    format!("--set {arg}: expected section.key=value"),
                )
                .help("for example --set train.batch-size=16"),
            );
            continue;
        };
        let segments: Vec<String> = path.trim().split('.').map(|s| s.trim().to_string()).collect();
        if segments.len() < 2 || segments.iter().any(String::is_empty) {
            diags.push(
                Diagnostic::error(
                    "config::override-syntax",
                    format!("--set {arg}: `{path}` does not name a key inside a section"),
                )
                .help("for example --set train.batch-size=16"),
            );
            continue;
        }
        set_path(root, &segments, value.trim(), origin, diags);
    }
}

/// The TOML text of an override value: itself when it parses as a TOML value
/// (`16`, `2e-4`, `true`, `["query", "value"]`, `"x"`), else a quoted string.
fn value_text(raw: &str) -> String {
    let probe = format!("v = {raw}");
    if !raw.is_empty() && DeTable::parse(&probe).is_ok() {
        raw.to_string()
    } else {
        toml::Value::String(raw.to_string()).to_string()
    }
}

fn set_path(root: &mut Layered, segments: &[String], raw: &str, origin: Origin, diags: &mut Diagnostics) {
    let mut node = root;
    for (i, key) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let Kind::Table(entries) = &mut node.kind else {
            diags.push(Diagnostic::error(
                "config::override-syntax",
                format!(
                    "{origin}: `{}` is a value, not a table, so `{}` cannot be set inside it",
                    segments[..i].join("."),
                    segments.join(".")
                ),
            ));
            return;
        };
        let pos = match entries.iter().position(|(k, _, _)| k == key) {
            Some(p) => p,
            None => {
                let kind = if last {
                    Kind::Leaf(String::new())
                } else {
                    Kind::Table(Vec::new())
                };
                entries.push((
                    key.clone(),
                    origin.clone(),
                    Layered {
                        kind,
                        origin: origin.clone(),
                    },
                ));
                entries.len() - 1
            }
        };
        node = &mut entries[pos].2;
        if last {
            node.kind = Kind::Leaf(value_text(raw));
            node.origin = origin.clone();
        }
    }
}

/// Writes the merged tree as TOML and records where each piece came from.
#[derive(Default)]
struct Emitter {
    text: String,
    segments: Vec<Segment>,
}

impl Emitter {
    fn mark(&mut self, start: usize, origin: &Origin) {
        self.segments.push(Segment {
            range: start..self.text.len(),
            origin: origin.clone(),
        });
    }

    fn table(&mut self, path: &[String], table: &Layered) {
        let Kind::Table(entries) = &table.kind else { return };
        for (key, key_origin, value) in entries {
            if let Kind::Leaf(text) = &value.kind {
                let start = self.text.len();
                self.text.push_str(&quote_key(key));
                self.mark(start, key_origin);
                self.text.push_str(" = ");
                let start = self.text.len();
                self.text.push_str(text);
                self.mark(start, &value.origin);
                self.text.push('\n');
            }
        }
        for (key, _, value) in entries {
            let mut sub = path.to_vec();
            sub.push(key.clone());
            match &value.kind {
                Kind::Table(_) => {
                    let start = self.text.len();
                    self.text.push_str(&format!("\n[{}]", dotted(&sub)));
                    self.mark(start + 1, &value.origin);
                    self.text.push('\n');
                    self.table(&sub, value);
                }
                Kind::Tables(items) => {
                    for item in items {
                        let start = self.text.len();
                        self.text.push_str(&format!("\n[[{}]]", dotted(&sub)));
                        self.mark(start + 1, &item.origin);
                        self.text.push('\n');
                        self.table(&sub, item);
                    }
                }
                Kind::Leaf(_) => {}
            }
        }
    }
}

fn quote_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

fn dotted(path: &[String]) -> String {
    path.iter().map(|k| quote_key(k)).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::doc::ConfigDoc;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_plain_file_is_kept_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "p.toml", "# comment\n[train]\nepochs = 2\n");
        let f = compose(&p, &Overrides::default()).unwrap().source;
        assert!(f.origins.is_empty());
        assert!(f.text.starts_with("# comment"));
    }

    #[test]
    fn arrays_of_tables_survive_an_override_of_a_sibling_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[data]\npath = \"a\"\n\n[[data.augment]]\ntype = \"random-crop\"\npadding = 2\n\n[[data.augment]]\ntype = \"horizontal-flip\"\n\n[model]\nlayers = 4\n";
        let p = write(dir.path(), "p.toml", text);
        let sets = Overrides {
            sets: vec!["model.layers=2".into(), "data.path=\"b\"".into()],
            ..Default::default()
        };
        let f = compose(&p, &sets).unwrap().source;
        let doc = ConfigDoc::parse(&f).unwrap_or_else(|d| panic!("{d}\n{}", f.text));
        assert_eq!(doc.get("model.layers").and_then(|n| n.as_int()), Some(2));
        assert_eq!(doc.get("data.path").and_then(|n| n.as_str()), Some("b"));
        let augment = doc.get("data.augment").and_then(|n| n.as_array()).unwrap();
        let types: Vec<&str> = augment.iter().filter_map(|t| t.get("type")?.as_str()).collect();
        assert_eq!(types, ["random-crop", "horizontal-flip"]);
        // The header of each table still points into the file.
        let line = f.text.lines().position(|l| l == "[[data.augment]]").unwrap();
        assert!(line > 0);
    }

    #[test]
    fn layers_merge_in_order_and_values_remember_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "[train]\nepochs = 1\nbatch-size = 8\n\n[train.optimizer]\ntype = \"adamw\"\nlr = 1e-3\n",
        );
        let p = write(
            dir.path(),
            "p.toml",
            "extends = [\"base.toml\"]\n\n[train]\nepochs = 3\n",
        );
        let overrides = Overrides {
            env: vec![
                ("LORA__TRAIN__BATCH_SIZE".into(), "16".into()),
                ("OVERRIDE_LR".into(), "5e-4".into()),
                ("HOME".into(), "/x".into()),
            ],
            sets: vec!["train.optimizer.type=sgd".into(), "run.name=my run".into()],
        };
        let f = compose(&p, &overrides).unwrap().source;
        let doc = ConfigDoc::parse(&f).unwrap();
        assert_eq!(doc.get("train.epochs").unwrap().as_int(), Some(3));
        assert_eq!(doc.get("train.batch-size").unwrap().as_int(), Some(16));
        assert_eq!(doc.get("train.optimizer.lr").unwrap().as_float(), Some(5e-4));
        assert_eq!(doc.get("train.optimizer.type").unwrap().as_str(), Some("sgd"));
        assert_eq!(
            doc.get("run.name").unwrap().as_str(),
            Some("my run"),
            "not TOML: a string"
        );

        let origin = |path: &str| doc.get(path).unwrap().location.origin().unwrap().to_string();
        assert!(
            origin("train.epochs").ends_with("p.toml:4:10"),
            "{}",
            origin("train.epochs")
        );
        assert_eq!(origin("train.batch-size"), "environment LORA__TRAIN__BATCH_SIZE=16");
        assert_eq!(origin("train.optimizer.lr"), "environment OVERRIDE_LR=5e-4");
        assert_eq!(
            origin("train.optimizer.type"),
            "command line --set train.optimizer.type=sgd"
        );
        assert_eq!(doc.get("train.batch-size").unwrap().location.line_col(), (0, 0));
    }

    #[test]
    fn base_values_point_into_the_base_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", "[lora]\nr = 8\nalpha = 16\n");
        let p = write(dir.path(), "p.toml", "extends = \"base.toml\"\n[lora]\nr = 4\n");
        let f = compose(&p, &Overrides::default()).unwrap().source;
        let doc = ConfigDoc::parse(&f).unwrap();
        let alpha = &doc.get("lora.alpha").unwrap().location;
        assert!(alpha.path().ends_with("base.toml"));
        assert_eq!(alpha.line_col(), (3, 9));
        let r = &doc.get("lora.r").unwrap().location;
        assert!(r.path().ends_with("p.toml"));
        assert_eq!(r.line_col(), (3, 5));
        // The rendered diagnostic shows the base file's own line.
        let d = Diagnostic::error("x", "y").at(Some(alpha.clone())).to_string();
        assert!(d.contains("3 | alpha = 16"), "{d}");
    }

    #[test]
    fn near_miss_environment_variables_are_warned_about_with_the_right_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "p.toml",
            "[train]\nbatch-size = 8\n\n[train.optimizer]\ntype = \"adamw\"\n\n[callbacks.early-stopping]\npatience = 3\n",
        );
        let env = |vars: &[&str]| Overrides {
            env: vars.iter().map(|v| (v.to_string(), "1".to_string())).collect(),
            sets: Vec::new(),
        };
        let helps = |o: &Overrides| -> Vec<String> {
            let composed = compose(&p, o).unwrap();
            assert!(composed.warnings.0.iter().all(|d| d.code == "config::env-near-miss"));
            composed.warnings.0.iter().map(|d| d.help.clone().unwrap()).collect()
        };
        let o = env(&[
            "LORA_TRAIN_BATCH_SIZE",
            "lora__train__batch_size",
            "LORA_TRAIN_OPTIMIZER_WEIGHT_DECAY",
            "Lora_Callbacks_Early_Stopping_Patience",
            "override_lr",
            "LORA_CACHE_DIR",
            "LORA_",
        ]);
        assert_eq!(
            helps(&o),
            [
                "did you mean LORA__TRAIN__BATCH_SIZE? (it sets `train.batch-size`)",
                "did you mean LORA__TRAIN__OPTIMIZER__WEIGHT_DECAY? (it sets `train.optimizer.weight-decay`)",
                "did you mean LORA__CALLBACKS__EARLY_STOPPING__PATIENCE? (it sets `callbacks.early-stopping.patience`)",
                "did you mean LORA__TRAIN__BATCH_SIZE? (it sets `train.batch-size`)",
                "did you mean OVERRIDE_LR? (it sets `train.optimizer.lr`)",
            ]
        );
        // With a real override too (the composing path), and a section the file lacks.
        let mut o = env(&["LORA_MONITOR_PORT", "LORA__TRAIN__EPOCHS"]);
        o.sets.push("run.name=x".into());
        assert_eq!(
            helps(&o),
            ["did you mean LORA__MONITOR__PORT? (it sets `monitor.port`)"]
        );
        // The right spelling is silent.
        assert!(helps(&env(&["LORA__TRAIN__BATCH_SIZE", "OVERRIDE_LR"])).is_empty());
    }

    #[test]
    fn cycles_missing_bases_and_bad_overrides_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = [\"b.toml\"]\n");
        write(dir.path(), "b.toml", "extends = [\"a.toml\"]\n");
        let e = compose(&dir.path().join("a.toml"), &Overrides::default()).unwrap_err();
        assert_eq!(e.0[0].code, "config::extends-cycle");
        let p = write(dir.path(), "c.toml", "extends = [\"nope.toml\", 3]\n");
        let e = compose(&p, &Overrides::default()).unwrap_err();
        let codes: Vec<&str> = e.0.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["config::extends-type", "config::extends-missing"]);
        let p = write(dir.path(), "d.toml", "[train]\nepochs = 1\n");
        let o = Overrides {
            env: vec![("LORA__TRAIN".into(), "1".into())],
            sets: vec!["train.epochs.x=1".into(), "epochs".into()],
        };
        let e = compose(&p, &o).unwrap_err();
        assert_eq!(e.0.len(), 3);
        assert!(e.0.iter().all(|d| d.code == "config::override-syntax"));
    }
}
