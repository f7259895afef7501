//! `[plugins] paths = [...]`: loading the pipeline's dynamic plugins, and `lora plugins`.

use std::path::PathBuf;

use lora_core::diag::{Diagnostic, Diagnostics};
use lora_core::doc::ConfigDoc;
use lora_plugin_host::{Request, load_all};

/// Loads the libraries the document names; every problem becomes a diagnostic.
pub fn load_from(doc: &ConfigDoc) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let Some(table) = doc.get("plugins") else { return diags };
    let mut requests = Vec::new();
    for (key, node) in table.as_table().unwrap_or_default() {
        if key != "paths" {
            let d = Diagnostic::error(
                "config::unknown-key",
                format!("[plugins] unknown field `{key}`, expected `paths`"),
            )
            .at(Some(node.location.clone()));
            diags.push(d);
            continue;
        }
        let Some(items) = node.as_array() else {
            diags.push(
                Diagnostic::error("config::wrong-type", "[plugins] paths must be a list of library paths")
                    .at(Some(node.location.clone())),
            );
            continue;
        };
        for item in items {
            match item.as_str() {
                Some(p) => requests.push(Request {
                    path: p.into(),
                    location: Some(item.location.clone()),
                }),
                None => diags.push(
                    Diagnostic::error("config::wrong-type", "a plugin path must be a string")
                        .at(Some(item.location.clone())),
                ),
            }
        }
    }
    diags.0.extend(load(&requests).0);
    diags
}

/// Loads libraries by path (`lora rules --plugin LIB`), relative to the working directory.
pub fn load_paths(paths: &[PathBuf]) -> Diagnostics {
    let requests: Vec<Request> = paths
        .iter()
        .map(|p| Request {
            path: p.clone(),
            location: None,
        })
        .collect();
    load(&requests)
}

fn load(requests: &[Request]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    if requests.is_empty() {
        return diags;
    }
    crate::alloc::share_with_plugins();
    let (_, errors) = load_all(requests);
    let api = lora_plugin_host::API_VERSION;
    for e in errors {
        diags.push(
            Diagnostic::error("plugin::load-failed", e.to_string())
                .at(e.location.clone())
                .help(format!(
                    "this lora loads plugins built against lora-plugin-api {}.{} with `{}` \
                     (`lora --version` says so too): rebuild the plugin with them; see docs/PLUGINS.md",
                    api.major,
                    api.minor,
                    lora_plugin_host::RUSTC_VERSION
                )),
        );
    }
    diags
}

/// Builds a `[callbacks.NAME]` table for a run: a plugin's callback learns the run
/// (its output folder) through `on_start`; a built-in one comes from the registry.
pub fn build_callback(
    c: &lora_core::config::Component,
    run: Option<&lora_core::config::RunConfig>,
) -> Result<Box<dyn lora_core::events::Callback>, Diagnostics> {
    let info = run
        .map(|r| lora_plugin_host::RunInfo {
            name: r.name.clone(),
            output_dir: r.output_dir.clone(),
        })
        .unwrap_or_default();
    lora_plugin_host::build_callback_for_run(c, &info)
        .unwrap_or_else(|| lora_core::registry::build::<lora_core::registry::CallbackEntry>(c))
}

/// Names registered twice (by crates linked into this binary, or by plugins): errors at start.
pub fn duplicate_names() -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut problems = lora_core::registry::all_duplicates();
    let rules = lora_core::rules::rules();
    for (i, a) in rules.iter().enumerate() {
        if let Some(b) = rules[i + 1..].iter().find(|b| b.id == a.id) {
            problems.push(format!(
                "two rules named `{}`: from {} and {}",
                a.id, a.origin, b.origin
            ));
        }
    }
    for p in problems {
        diags.push(
            Diagnostic::error("plugin::duplicate-name", p)
                .help("component names are global; rename one of them (a plugin can prefix its names with its own)"),
        );
    }
    diags
}

/// `lora plugins`: every component of every kind with its one-line summary and origin.
pub fn listing() -> String {
    use lora_core::registry::{self, Entry, origin};
    use std::fmt::Write;

    fn kind<E: Entry>(out: &mut String, extra: impl Fn(&E) -> String)
    where
        lora_core::inventory::iter<E>: IntoIterator<Item = &'static E>,
    {
        for e in registry::entries::<E>() {
            writeln!(
                out,
                "{:<14} {:<28} {}{}  ({})",
                E::KIND,
                e.name(),
                e.summary(),
                extra(e),
                origin(e)
            )
            .unwrap();
        }
    }
    let mut out = String::new();
    writeln!(out, "{:<14} {:<28} summary  (origin)", "kind", "name").unwrap();
    kind::<registry::DataSourceEntry>(&mut out, |_| String::new());
    kind::<registry::AugmentationEntry>(&mut out, |_| String::new());
    kind::<registry::ModelEntry>(&mut out, |e| format!(" [{}]", e.backend));
    kind::<registry::TrainerEntry>(&mut out, |_| String::new());
    kind::<registry::OptimizerEntry>(&mut out, |_| String::new());
    kind::<registry::SchedulerEntry>(&mut out, |_| String::new());
    kind::<registry::EvaluatorEntry>(&mut out, |_| String::new());
    kind::<registry::CallbackEntry>(&mut out, |_| String::new());
    kind::<registry::MetricEntry>(&mut out, |_| String::new());
    for r in lora_core::rules::rules() {
        writeln!(out, "{:<14} {:<28} {}  ({})", "rule", r.id, r.summary, r.origin).unwrap();
    }
    let loaded = lora_plugin_host::loaded();
    if !loaded.is_empty() {
        writeln!(out).unwrap();
        for p in loaded {
            writeln!(
                out,
                "plugin {} {} from {}: {} component(s), loaded in {:.1} ms",
                p.name,
                p.version,
                p.path.display(),
                p.contributions.len(),
                p.load_time.as_secs_f64() * 1000.0
            )
            .unwrap();
        }
    }
    out
}
