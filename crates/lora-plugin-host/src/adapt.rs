//! Turns what a plugin registered into the host's registries. Every call into
//! the plugin goes through the wrappers of `lora_plugin_api::boundary`, which
//! catch panics on the plugin's side and return them as errors; here they
//! become errors of the run that name the plugin and the component.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use lora_core::augment::{Augmentation, Image, ImageAugment};
use lora_core::config::Component;
use lora_core::diag::{Diagnostic, Diagnostics, Severity};
use lora_core::doc::{Node, Value as DocValue};
use lora_core::events::{Callback, Control, TrainEvent};
use lora_core::init::SeededRng;
use lora_core::registry::{AugmentationEntry, CallbackEntry, Entry, describe, entries, register_dynamic};
use lora_core::rules::{Category, Finding, RuleContext, rules};
use lora_plugin_api as api;
use lora_plugin_api::boundary::{GuardedAugmentation, GuardedCallback, GuardedFactory, GuardedRuleEntry};
use rand::RngCore;

use crate::load::Collect;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Installs every contribution, or none: a name already taken (by a built-in
/// component or another plugin) is an error naming both origins.
///
/// `origin` is the library's path (the registries' origin); `who` names the
/// plugin in messages: "plugin `NAME` (PATH)".
pub(crate) fn install(
    collected: Collect,
    origin: &'static str,
    who: &'static str,
) -> Result<Vec<(&'static str, String)>, String> {
    let mut problems = Vec::new();
    for e in &collected.rules {
        if let Some(existing) = rules().into_iter().find(|r| r.id == e.id) {
            problems.push(format!(
                "two rules named `{}`: one {}, one from {origin}",
                e.id,
                describe(existing.origin)
            ));
        }
    }
    let taken = |kind: &str, name: &str, existing: Vec<(&'static str, &'static str)>| {
        existing
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| format!("two {kind}s named `{name}`: one {}, one from {origin}", describe(o)))
    };
    let augmentations: Vec<_> = entries::<AugmentationEntry>()
        .into_iter()
        .map(|e| (e.name, lora_core::registry::origin(e)))
        .collect();
    let callbacks: Vec<_> = entries::<CallbackEntry>()
        .into_iter()
        .map(|e| (e.name, lora_core::registry::origin(e)))
        .collect();
    problems.extend(
        collected
            .augmentations
            .iter()
            .filter_map(|e| taken("augmentation", &e.name, augmentations.clone())),
    );
    problems.extend(
        collected
            .callbacks
            .iter()
            .filter_map(|e| taken("callback", &e.name, callbacks.clone())),
    );
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }

    let mut added = Vec::new();
    for entry in collected.rules {
        added.push(("rule", entry.id.clone()));
        install_rule(entry, origin, who);
    }
    for entry in collected.augmentations {
        added.push((AugmentationEntry::KIND, entry.name.clone()));
        let name = leak(entry.name);
        AUGMENTATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (&*Box::leak(Box::new(entry.build)), who));
        register_dynamic(
            AugmentationEntry {
                name,
                summary: leak(entry.summary),
                build: build_augmentation,
            },
            origin,
        )?;
    }
    for entry in collected.callbacks {
        added.push((CallbackEntry::KIND, entry.name.clone()));
        let name = leak(entry.name);
        CALLBACKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (&*Box::leak(Box::new(entry.build)), who));
        register_dynamic(
            CallbackEntry {
                name,
                summary: leak(entry.summary),
                build: build_callback,
            },
            origin,
        )?;
    }
    Ok(added)
}

type Factories<T> = Mutex<HashMap<&'static str, (&'static T, &'static str)>>;

/// Plugin factories by component name, with the plugin's name for messages;
/// registry entries point here through [`build_augmentation`] and
/// [`build_callback`] (registry constructors are plain functions).
static AUGMENTATIONS: std::sync::LazyLock<Factories<GuardedFactory<dyn GuardedAugmentation>>> =
    std::sync::LazyLock::new(Default::default);
static CALLBACKS: std::sync::LazyLock<Factories<GuardedFactory<dyn GuardedCallback>>> =
    std::sync::LazyLock::new(Default::default);

/// The component's table (without `type`) as plugin parameters.
fn params(c: &Component) -> Result<api::Params, Diagnostics> {
    let table: toml::Table = c.deserialize()?;
    Ok(api::Params(
        table.into_iter().map(|(k, v)| (k, toml_to_api(v))).collect(),
    ))
}

fn toml_to_api(v: toml::Value) -> api::Value {
    match v {
        toml::Value::String(s) => api::Value::String(s),
        toml::Value::Integer(i) => api::Value::Integer(i),
        toml::Value::Float(f) => api::Value::Float(f),
        toml::Value::Boolean(b) => api::Value::Boolean(b),
        toml::Value::Datetime(d) => api::Value::String(d.to_string()),
        toml::Value::Array(a) => api::Value::Array(a.into_iter().map(toml_to_api).collect()),
        toml::Value::Table(t) => api::Value::Table(t.into_iter().map(|(k, v)| (k, toml_to_api(v))).collect()),
    }
}

fn plugin_error(c: &Component, who: &str, message: String) -> Diagnostics {
    Diagnostic::error(
        "plugin::component-failed",
        format!("`{}` of {who}: {message}", c.type_name),
    )
    .at(c.type_location())
    .into()
}

fn build_augmentation(c: &Component) -> Result<Augmentation, Diagnostics> {
    let (name, (factory, who)) = AUGMENTATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| **k == c.type_name)
        .map(|(k, v)| (*k, *v))
        .ok_or_else(|| plugin_error(c, "a plugin", "not registered".into()))?;
    let p = params(c)?;
    let inner = factory(&p).map_err(|m| plugin_error(c, who, m))?;
    Ok(Augmentation::Sample(Box::new(PluginAugment { name, who, inner })))
}

/// A plugin's augmentation as the data pipeline sees it.
struct PluginAugment {
    name: &'static str,
    who: &'static str,
    inner: Box<dyn GuardedAugmentation>,
}

impl ImageAugment for PluginAugment {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply(&self, image: &mut Image, rng: &mut SeededRng) {
        let seed = rng.next_u64();
        let (channels, height, width) = (image.channels, image.height, image.width);
        let mut view = api::Image {
            channels,
            height,
            width,
            pixels: &mut image.pixels,
        };
        let failed = match self.inner.apply(&mut view, seed) {
            Err(message) => Some(message),
            // A plugin that resized the pixel buffer would break every later step.
            Ok(()) if image.pixels.len() != channels * height * width => {
                Some("changed the image's pixel count".to_string())
            }
            Ok(()) => None,
        };
        if let Some(message) = failed {
            // The plugin's panic was caught on its side; this one is the host's own,
            // raised without the panic hook's noise and caught where batches are made
            // (`lora_data`), which turns it into an error of the run.
            std::panic::resume_unwind(Box::new(format!(
                "augmentation `{}` of {}: {message}",
                self.name, self.who
            )));
        }
    }
}

/// Builds a plugin callback for a run: `None` when `c` is not a plugin's callback.
/// `run` is what the callback's `on_start` receives (its output folder, ...).
pub fn build_callback_for_run(c: &Component, run: &api::RunInfo) -> Option<Result<Box<dyn Callback>, Diagnostics>> {
    let found = CALLBACKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| **k == c.type_name)
        .map(|(k, v)| (*k, *v));
    let (name, (factory, who)) = found?;
    Some((|| {
        let p = params(c)?;
        let inner = factory(&p).map_err(|m| plugin_error(c, who, m))?;
        Ok(Box::new(PluginCallback {
            name,
            who,
            inner,
            run: run.clone(),
        }) as Box<dyn Callback>)
    })())
}

fn build_callback(c: &Component) -> Result<Box<dyn Callback>, Diagnostics> {
    build_callback_for_run(c, &api::RunInfo::default())
        .unwrap_or_else(|| Err(plugin_error(c, "a plugin", "not registered".into())))
}

/// A plugin's callback as the training loop sees it.
struct PluginCallback {
    name: &'static str,
    who: &'static str,
    inner: Box<dyn GuardedCallback>,
    run: api::RunInfo,
}

impl Callback for PluginCallback {
    fn on_event(&mut self, event: &TrainEvent) -> lora_core::Result<()> {
        self.control(event).map(|_| ())
    }

    fn control(&mut self, event: &TrainEvent) -> lora_core::Result<Control> {
        let Some(event) = to_api_event(event) else {
            return Ok(Control::Continue);
        };
        let fail =
            |message: String| lora_core::Error::Other(format!("callback `{}` of {}: {message}", self.name, self.who));
        if event.kind == api::EventKind::Start {
            self.inner.on_start(&self.run).map_err(fail)?;
        }
        match self.inner.on_event(&event).map_err(fail)? {
            api::Action::Continue => Ok(Control::Continue),
            api::Action::Stop(reason) => Ok(Control::Stop { reason }),
        }
    }

    fn name(&self) -> &str {
        self.name
    }
}

/// An event as plugins see it; the figures of each kind are documented on [`api::Event`].
pub(crate) fn to_api_event(e: &TrainEvent) -> Option<api::Event> {
    let event = |kind, step, epoch, loss, metrics: Vec<(&str, f64)>| api::Event {
        kind,
        step,
        epoch,
        loss,
        metrics: metrics.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    Some(match e {
        TrainEvent::Start {
            total_steps,
            epochs,
            train_samples,
            trainable_parameters,
        } => event(
            api::EventKind::Start,
            0,
            0,
            None,
            vec![
                ("total_steps", *total_steps as f64),
                ("epochs", *epochs as f64),
                ("train_samples", *train_samples as f64),
                ("trainable_parameters", *trainable_parameters as f64),
            ],
        ),
        TrainEvent::Step(m) => event(
            api::EventKind::Step,
            m.step,
            m.epoch,
            Some(m.loss),
            vec![
                ("lr", m.lr),
                ("grad_norm", m.grad_norm),
                ("update_ratio", m.update_ratio),
                ("samples_per_s", m.samples_per_s),
                ("elapsed_s", m.elapsed_s),
            ],
        ),
        TrainEvent::Eval { step, epoch, report } => api::Event {
            kind: api::EventKind::Eval,
            step: *step,
            epoch: *epoch,
            loss: Some(report.loss),
            metrics: report.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        },
        TrainEvent::EpochEnd { epoch, step } => event(api::EventKind::EpochEnd, *step, *epoch, None, Vec::new()),
        TrainEvent::End { step, epoch, elapsed_s } => event(
            api::EventKind::End,
            *step,
            *epoch,
            None,
            vec![("elapsed_s", *elapsed_s)],
        ),
        _ => return None,
    })
}

thread_local! {
    /// Paths of plugin findings that named nothing, during the current validation on
    /// this thread (rules run one after another on the validating thread).
    static UNRESOLVED: RefCell<Vec<Diagnostic>> = const { RefCell::new(Vec::new()) };
}

/// Warnings for plugin findings whose `path` named nothing in the document, since the
/// last call (on this thread): `plugin::finding-path`.
pub fn take_unresolved_paths() -> Vec<Diagnostic> {
    UNRESOLVED.with(|u| std::mem::take(&mut *u.borrow_mut()))
}

/// The node at a plugin path: dotted keys, and array elements by 0-based index,
/// written `a.b.1.c` or `a.b[1].c`.
pub fn resolve<'a>(root: &'a Node, path: &str) -> Option<&'a Node> {
    let mut node = root;
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            node = match (&node.value, key.parse::<usize>()) {
                (DocValue::Array(items), Ok(i)) => items.get(i)?,
                _ => node.get(key)?,
            };
        } else if indices.is_empty() {
            return None;
        }
        let mut rest = indices;
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let close = inner.find(']')?;
            let i: usize = inner[..close].trim().parse().ok()?;
            node = node.as_array()?.get(i)?;
            rest = &inner[close + 1..];
        }
    }
    Some(node)
}

fn install_rule(entry: GuardedRuleEntry, origin: &'static str, who: &'static str) {
    let id = leak(entry.id);
    let rule: &'static dyn api::boundary::GuardedRule = Box::leak(entry.rule);
    let check = move |ctx: &RuleContext| -> Vec<Finding> {
        let root = &ctx.doc.root;
        let lookup = |path: &str| resolve(root, path).map(to_api);
        let view = api::ConfigView::new(&lookup);
        match rule.check(&view) {
            Ok(found) => found
                .into_iter()
                .map(|f| {
                    let location = f.path.as_deref().and_then(|p| {
                        let at = resolve(root, p).map(|n| n.location.clone());
                        if at.is_none() {
                            UNRESOLVED.with(|u| {
                                u.borrow_mut().push(
                                    Diagnostic::warning(
                                        "plugin::finding-path",
                                        format!(
                                            "rule `{id}` of {who} points at `{p}`, which names nothing in the \
                                             configuration; its finding is shown without a location"
                                        ),
                                    )
                                    .help(
                                        "a finding's path is dotted keys, with an array element by its 0-based \
                                         index: `data.augment.1.p` or `data.augment[1].p` (docs/PLUGINS.md)",
                                    ),
                                )
                            });
                        }
                        at
                    });
                    Finding {
                        message: f.message,
                        location,
                        help: f.help,
                    }
                })
                .collect(),
            // Raised again on the host's side, where the validation engine catches it as
            // `validate::rule-panicked` (an error, whatever the rule's severity).
            Err(message) => {
                let what = message
                    .strip_prefix("panicked")
                    .unwrap_or(&message)
                    .trim_start_matches(':');
                std::panic::resume_unwind(Box::new(format!("{who},{what}")))
            }
        }
    };
    let check: &'static (dyn Fn(&RuleContext) -> Vec<Finding> + Send + Sync) = Box::leak(Box::new(check));
    lora_core::rules::register_dynamic(lora_core::rules::RuleEntry {
        id,
        origin,
        category: Category::Plugin,
        severity: match entry.severity {
            api::Severity::Error => Severity::Error,
            api::Severity::Warning => Severity::Warning,
        },
        summary: leak(entry.summary),
        doc: leak(entry.doc),
        check: Some(check),
        trip: &[],
    });
}

/// A document value as plugins see it.
pub(crate) fn to_api(node: &Node) -> api::Value {
    match &node.value {
        DocValue::String(s) | DocValue::Datetime(s) => api::Value::String(s.clone()),
        DocValue::Integer(i) => api::Value::Integer(*i),
        DocValue::Float(f) => api::Value::Float(*f),
        DocValue::Boolean(b) => api::Value::Boolean(*b),
        DocValue::Array(a) => api::Value::Array(a.iter().map(to_api).collect()),
        DocValue::Table(t) => api::Value::Table(t.iter().map(|(k, n)| (k.clone(), to_api(n))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::diag::SourceFile;
    use lora_core::doc::ConfigDoc;

    #[test]
    fn paths_address_array_elements_by_index_in_both_spellings() {
        let file = SourceFile::new(
            "p.toml",
            "[data]\ntype = \"x\"\n\n[[data.augment]]\ntype = \"a\"\n\n[[data.augment]]\ntype = \"b\"\nlevels = 4\n\n[train]\nbetas = [0.9, [1, 2]]\n"
                .into(),
        );
        let doc = ConfigDoc::parse(&file).unwrap();
        for path in ["data.augment.1.levels", "data.augment[1].levels"] {
            let node = resolve(&doc.root, path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(node.as_int(), Some(4));
            assert_eq!(node.location.line_col(), (9, 10), "{path}");
        }
        for path in ["data.augment.1", "data.augment[1]"] {
            assert_eq!(
                resolve(&doc.root, path).unwrap().get("type").unwrap().as_str(),
                Some("b")
            );
        }
        assert_eq!(resolve(&doc.root, "train.betas[1][0]").unwrap().as_int(), Some(1));
        assert_eq!(resolve(&doc.root, "train.betas.1.1").unwrap().as_int(), Some(2));
        assert_eq!(resolve(&doc.root, "data.type").unwrap().as_str(), Some("x"));
        for nothing in [
            "data.augment.2",
            "data.augment[2].type",
            "data.augment.0.levels",
            "data.augment[x]",
            "data.augment[1",
            "data..type",
            "data.type[0]",
            "",
        ] {
            assert!(resolve(&doc.root, nothing).is_none(), "{nothing}");
        }
    }

    #[test]
    fn events_carry_the_epoch_and_the_documented_figures() {
        let eval = TrainEvent::Eval {
            step: 6,
            epoch: 2,
            report: lora_core::stage::EvalReport {
                samples: 32,
                loss: 0.5,
                metrics: [("accuracy".to_string(), 0.75)].into(),
                details: serde_json::Value::Null,
            },
        };
        let e = to_api_event(&eval).unwrap();
        assert_eq!(
            (e.kind, e.step, e.epoch, e.loss),
            (api::EventKind::Eval, 6, 2, Some(0.5))
        );
        assert_eq!(e.metric("accuracy"), Some(0.75));
        let end = to_api_event(&TrainEvent::End {
            step: 6,
            epoch: 2,
            elapsed_s: 1.5,
        })
        .unwrap();
        assert_eq!((end.step, end.epoch, end.metric("elapsed_s")), (6, 2, Some(1.5)));
        let start = to_api_event(&TrainEvent::Start {
            total_steps: 6,
            epochs: 3,
            train_samples: 64,
            trainable_parameters: 10,
        })
        .unwrap();
        assert_eq!(start.metric("total_steps"), Some(6.0));
        assert_eq!(start.metric("epochs"), Some(3.0));
    }
}
